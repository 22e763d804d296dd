"""Checkpoints: written to a temporary file and renamed, so an interrupted save never replaces
the last good one; loaded with weights_only=True (tensors and plain containers, no code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lensperf.errors import DataError

FORMAT = "lensperf-checkpoint-1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, foreign file: all unusable
        raise DataError(
            f"checkpoint {path} is damaged or truncated ({type(error).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path} is not a lensperf checkpoint")
    return state
