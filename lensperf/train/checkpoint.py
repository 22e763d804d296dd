"""Checkpoints: written to a temporary file and renamed, so an interrupted save never replaces
the last good one; loaded with weights_only=True (tensors and plain containers, no code)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from lensperf.atomic import atomic_file
from lensperf.errors import DataError

FORMAT = "lensperf-checkpoint-1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    # Serialised in memory, then written as plain bytes: torch.save writing to a file turns a
    # full disk into an opaque RuntimeError from its zip writer instead of ENOSPC.
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
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
