"""A training run's directory: claimed before any training, so a run never overwrites one it did
not start, two runs never share one, and a run that cannot write there stops before its first
step instead of at its first checkpoint.

Claiming checks, in order: the directory can be created and written (a probe file); no other
process holds its lock (`.lock`, an flock released when the process ends, kill -9 included);
and what it holds fits the request: `resume` needs a checkpoint, a fresh run needs a directory
without a run in it, unless `overwrite` asks to replace that run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sys
from pathlib import Path

from lensperf.atomic import remove_stale_temporaries
from lensperf.errors import LensperfError

# What a run writes; `overwrite` removes exactly these, nothing else a user keeps there.
RUN_FILES = ("checkpoint.pt", "best.pt", "config.yaml", "log.jsonl", "metrics.json")
RUN_DIRS = ("report", "tensorboard")


class RunDirError(LensperfError):
    pass


class RunDirectory:
    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.resume = resume
        self.overwrite = overwrite
        self._lock_file = None
        self._made = False  # whether claim() created the directory

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES + RUN_DIRS)

    def claim(self) -> RunDirectory:
        self._made = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise RunDirError(
                f"cannot write to the run directory {self.path}: {error.strerror}"
            ) from None
        self._lock()
        for stale in remove_stale_temporaries(self.path):
            print(f"lensperf: removed {stale}, left by a run that was killed", file=sys.stderr)
        if self.resume and not self.checkpoint.is_file():
            self.release()
            raise RunDirError(
                f"--resume: there is no checkpoint in {self.path} to resume (is out_dir right?)"
            )
        if not self.resume and self.holds_run():
            if not self.overwrite:
                self.release()
                raise RunDirError(
                    f"{self.path} holds a run already: pass --resume to continue it, "
                    "--overwrite to replace it, or choose another out_dir"
                )
            self._remove_run()
        return self

    def _lock(self) -> None:
        handle = open(self.path / ".lock", "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise RunDirError(
                    f"{self.path} is in use by another lensperf run (pid {holder}); wait for it "
                    "or choose another out_dir"
                ) from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _remove_run(self) -> None:
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def abandon(self) -> None:
        """Release after a run that failed before writing any run file (a missing pretrained
        encoder, say): take the lock file away too, and the directory if the claim made it and
        nothing else is in it, so that the failed command leaves nothing behind."""
        if self.holds_run():
            self.release()
            return
        self.release()
        (self.path / ".lock").unlink(missing_ok=True)
        if self._made:
            try:
                self.path.rmdir()
            except OSError:  # something else is in it now: keep it
                pass

    def __enter__(self) -> RunDirectory:
        return self.claim()

    def __exit__(self, *exc) -> None:
        self.release()
