"""The lensing symmetries and the standardisation, applied as a batch is gathered.

Images are (B, C, H, W); flags (B, 3): horizontal flip, vertical flip, transpose, folded into one
code per image (`flag_codes`). The torch backend and DALI's CPU pipeline apply them with the
compiled `gather_transform`; DALI's GPU graph applies the same flags with its own operators, and
`SYMMETRIES` (numpy views) is the reference all of them are tested against.

Standardisation is (x - mean) * (1 / std) in float32, the same two operations on every backend
(DALI's graph included), so every backend gives the same bits.
"""

from __future__ import annotations

import numpy as np
import torch

from lensperf.data.gather_kernel import NOT_SQUARE, OUT_OF_RANGE, gather_transform
from lensperf.errors import DataError


def _symmetry(code: int):
    """The view of a (..., H, W) array for flag code 4*flip_h + 2*flip_v + transpose: flips
    first, then the transpose, as DALI's graph applies them."""

    def view(a: np.ndarray) -> np.ndarray:
        a = a[..., ::-1] if code & 4 else a
        a = a[..., ::-1, :] if code & 2 else a
        return a.swapaxes(-1, -2) if code & 1 else a

    return view


SYMMETRIES = tuple(_symmetry(code) for code in range(8))


def symmetric_view(images: torch.Tensor, code: int) -> torch.Tensor:
    """SYMMETRIES[code] of a (..., H, W) tensor, in torch (test-time averaging over the group)."""
    images = images.flip(-1) if code & 4 else images
    images = images.flip(-2) if code & 2 else images
    return images.transpose(-1, -2) if code & 1 else images


def random_shift(images_BCHW: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each image rolled by its own random whole number of pixels in [-max_shift, max_shift] on
    each axis (from torch's generator; pixels leaving one edge come back at the other)."""
    B, C, H, W = images_BCHW.shape
    device = images_BCHW.device
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, B, 1, 1, 1), device=device)
    rows = (torch.arange(H, device=device).view(1, 1, H, 1) - dy) % H
    cols = (torch.arange(W, device=device).view(1, 1, 1, W) - dx) % W
    rolled = images_BCHW.gather(2, rows.expand(B, C, H, W))
    return rolled.gather(3, cols.expand(B, C, H, W))


def flag_codes(flags_B3: np.ndarray) -> np.ndarray:
    """Each image's flags as one code in [0, 8), the index into SYMMETRIES."""
    return flags_B3.astype(np.int64) @ np.array([4, 2, 1])


def apply_flags(images_BCHW: np.ndarray, flags_B3: np.ndarray) -> np.ndarray:
    """Each image flipped and transposed as its flags say, as a new array (numpy reference)."""
    return np.stack([SYMMETRIES[c](im) for im, c in zip(images_BCHW, flag_codes(flags_B3))])


def standardisation(standardise: tuple[float, float] | None) -> tuple[np.float32, np.float32]:
    """(shift, scale) for x -> (x - shift) * scale; the identity when `standardise` is None."""
    if standardise is None:
        return np.float32(0), np.float32(1)
    mean, std = standardise
    return np.float32(mean), np.float32(1) / np.float32(std)


def gather(
    out: np.ndarray,
    src: np.ndarray,
    positions: np.ndarray,
    rows: np.ndarray,
    codes: np.ndarray | None,
    standardise: tuple[float, float] | None,
) -> np.ndarray:
    """out[positions[k]] = standardised SYMMETRIES[codes[k]](src[rows[k]]) for every k, in one
    compiled pass (no codes: no symmetry). A bad index is an error before anything is copied."""
    n = len(rows)
    codes = np.zeros(n, np.int64) if codes is None else codes
    if not (out.ndim == src.ndim == 4 and out.shape[1:] == src.shape[1:]):
        raise DataError(f"images must be (n, C, H, W) alike; got {out.shape} and {src.shape}")
    if not len(positions) == n == len(codes):
        raise DataError("positions, rows and codes differ in length")
    shift, scale = (out.dtype.type(v) for v in standardisation(standardise))
    status = gather_transform(out, src, _ints(positions), _ints(rows), _ints(codes), shift, scale)
    if status == OUT_OF_RANGE:
        raise DataError("a row, position or symmetry index is out of range")
    if status == NOT_SQUARE:
        raise DataError(f"transposing needs square images; these are {out.shape[2:]}")
    return out


def _ints(a) -> np.ndarray:
    """int64, contiguous: the one index type the kernel is compiled for."""
    return np.ascontiguousarray(a, dtype=np.int64)


def take(
    values: np.ndarray,
    indices: np.ndarray,
    codes: np.ndarray | None,
    standardise: tuple[float, float] | None = None,
) -> np.ndarray:
    """Images values[indices], each transformed by SYMMETRIES[codes[i]] and standardised, as a
    new array."""
    out = np.empty((len(indices),) + values.shape[1:], values.dtype)
    return gather(out, values, np.arange(len(indices)), indices, codes, standardise)
