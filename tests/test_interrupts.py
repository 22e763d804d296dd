"""An interrupt that C code drops (as numba's ctypes callbacks do) is raised again at the next
progress update, and one that C code turns into another error (numba's dispatcher) still ends
the block as an interrupt, so long work stops and cleans up."""

import ctypes
import os
import signal

import pytest

from lensperf import interrupts
from lensperf.progress import progress

# The dropped KeyboardInterrupt is reported as unraisable; here that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)


def _signal_inside_c_callback(signum: int) -> None:
    """Deliver `signum` while Python runs a ctypes callback, where a raised exception is lost."""

    def callback(value):
        os.kill(os.getpid(), signum)
        for _ in range(1000):  # bytecode boundaries at which the handler runs
            pass
        return value

    ctypes.cast(CALLBACK(callback), CALLBACK)(0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_dropped_interrupt_is_raised_at_next_progress_update(signum):
    with interrupts.handled():
        _signal_inside_c_callback(signum)  # the KeyboardInterrupt raised in there is dropped
        bar = progress(total=2)
        with pytest.raises(KeyboardInterrupt):
            bar.update(1)
        bar.close()


def test_an_interrupt_turned_into_another_error_is_still_an_interrupt():
    with pytest.raises(KeyboardInterrupt) as raised:
        with interrupts.handled():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # bytecode boundaries at which the handler runs
                    pass
            except KeyboardInterrupt as error:  # what numba's dispatcher does with it
                raise SystemError("returned a result with an exception set") from error
    assert isinstance(raised.value.__cause__, SystemError)


def test_an_error_without_a_signal_stays_itself():
    with pytest.raises(SystemError):
        with interrupts.handled():
            raise SystemError("a real failure")


def test_handlers_are_restored_and_progress_runs_on_afterwards(monkeypatch):
    monkeypatch.setenv("LENSPERF_PROGRESS", "1")  # an enabled bar counts its updates
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.handled():
        _signal_inside_c_callback(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
    with progress(total=1) as bar:
        bar.update(1)
    assert bar.n == 1


def test_off_the_main_thread_handlers_are_left_alone():
    import threading

    before, seen = signal.getsignal(signal.SIGTERM), []

    def run():
        with interrupts.handled():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]
