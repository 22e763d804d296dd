"""One line on stderr as each long stage of the bench starts and ends."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Always printed, with no bar: the time-to-target bench runs for an hour or more, often under
    nohup, where the trainers' progress bars stay silent."""
    print(f"lensperf bench: {message}", file=sys.stderr, flush=True)
