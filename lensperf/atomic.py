"""Outputs that appear whole or not at all: a file or folder is written under a hidden
temporary name beside its destination and renamed into place when complete, so an error, Ctrl-C
or a full disk leaves the old output (or nothing), never half of a new one."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """`.NAME.KIND-PID` beside `path`: hidden, and telling which process left it."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path`, on any exception it is
    removed."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the complete folder `tmp` to `path`: what was there is swapped out, then removed."""
    old = None
    if path.exists():
        old = temporary_sibling(path, "old")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder; on success it replaces `path`, on any exception it is
    removed."""
    path = Path(path)
    tmp = temporary_sibling(path)
    shutil.rmtree(tmp, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, path)


def remove_stale_temporaries(directory: Path, name: str | None = None) -> list[Path]:
    """Remove what writers killed outright (kill -9, power loss) left in `directory`: the
    `.NAME.tmp-PID` / `.NAME.old-PID` entries (of `name` only, if given) whose process is gone.
    Returns what was removed, for the caller to mention."""
    pattern = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = pattern.match(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
