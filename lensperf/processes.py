"""Worker processes that behave: they start from a plain script without an
`if __name__ == "__main__":` guard (or from stdin or a notebook), and they die with their parent,
kill -9 included.

multiprocessing's spawn start method re-imports the parent's `__main__` in every worker, so a
script that trains or simulates at top level runs again in each worker and dies with
multiprocessing's bootstrapping error. lensperf's workers (the simulator's pool, DALI's source)
need nothing from the user's script, so `spawning_without_main` hides it while they start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1
_MISSING = object()


@contextmanager
def spawning_without_main() -> Iterator[None]:
    """Inside the block, processes started by spawn do not re-run the parent's `__main__`."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    spec, file = getattr(main, "__spec__", None), getattr(main, "__file__", _MISSING)
    main.__spec__ = None  # spawn re-imports __main__ by its spec's name, or else by __file__
    if file is not _MISSING:
        del main.__file__
    try:
        yield
    finally:
        main.__spec__ = spec
        if file is not _MISSING:
            main.__file__ = file


def die_with_parent(parent_pid: int) -> None:
    """Call first thing in a worker: the kernel sends it SIGKILL when its parent ends, however
    the parent ends. On systems without prctl (not Linux) this does nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the line above ran
        os._exit(1)
