"""Ctrl-C and SIGTERM end long work with KeyboardInterrupt, so temporary outputs are removed.

A KeyboardInterrupt raised while Python runs a callback from C code is printed and dropped
there: numba, compiling lenstronomy's functions on first use, calls back into Python through
ctypes, and a signal that lands then would be lost, leaving a simulation running on. So the
handler also records the signal, and long loops call `raise_if_interrupted` (every progress bar
update does) to raise it again. And where C code passes it on as another error (numba's
dispatcher: "SystemError: ... returned a result with an exception set"), the block ends with
KeyboardInterrupt all the same.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_received: list[int] = []


def _handle(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


@contextmanager
def handled() -> Iterator[None]:
    """Route SIGINT and SIGTERM through `_handle` inside the block, then restore the previous
    handlers. Off the main thread, where `signal` cannot install handlers, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except Exception as error:
        if _received:  # the signal's KeyboardInterrupt, turned into this error on its way out
            raise KeyboardInterrupt from error
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a signal arrived and its first KeyboardInterrupt was dropped."""
    if _received:
        raise KeyboardInterrupt
