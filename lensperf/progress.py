"""Progress bars for long work (shown on a terminal, silent in logs and tests)."""

from __future__ import annotations

import os

from tqdm.auto import tqdm

from lensperf.interrupts import raise_if_interrupted


class _Progress(tqdm):
    """Each update is also a point where an interrupt that was dropped is raised again."""

    def update(self, n=1):
        raise_if_interrupted()
        return super().update(n)


def progress(total: int | None = None, desc: str = "", unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr. LENSPERF_PROGRESS=1 forces it on, =0 off; by default it shows only
    when stderr is a terminal."""
    setting = os.environ.get("LENSPERF_PROGRESS")
    disable = None if setting is None else setting == "0"
    return _Progress(
        total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, **kwargs
    )
