"""The lensing symmetries applied in numpy (the torch backend; DALI applies the same flags in
its graph). Images are (B, C, H, W); flags (B, 3): horizontal flip, vertical flip, transpose."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _symmetry(code: int):
    """The view of a (..., H, W) array for flag code 4*flip_h + 2*flip_v + transpose: flips
    first, then the transpose, as DALI's graph applies them."""

    def view(a: np.ndarray) -> np.ndarray:
        a = a[..., ::-1] if code & 4 else a
        a = a[..., ::-1, :] if code & 2 else a
        return a.swapaxes(-1, -2) if code & 1 else a

    return view


SYMMETRIES = tuple(_symmetry(code) for code in range(8))


def flag_codes(flags_B3: np.ndarray) -> list[int]:
    """Each image's flags as one code in [0, 8), the index into SYMMETRIES."""
    return (flags_B3.astype(np.int64) @ np.array([4, 2, 1])).tolist()


# Two ways to gather a batch and apply its symmetries, each the faster one somewhere.
# By rows: one assignment per image, the gather and the flips in one copy. Grouped: a gather,
# then each group of images with the same flags transformed with whole-array views, four copies
# in all but a handful of numpy calls. Building 256 64x64 images with flips on the 2-core CPU
# (epochs of 8192, medians of 9, side by side): in the loader's own thread by rows 56-62k
# images/s, grouped 40-46k; on two prefetch threads by rows 43-46k, grouped 52-59k. Per-row
# copies release and retake the GIL 256 times a batch, and two threads doing so stall each other.


def take_transformed(out: np.ndarray, rows: Iterable[np.ndarray], codes: list[int]) -> np.ndarray:
    """out[i] = SYMMETRIES[codes[i]](rows[i]), by rows."""
    for i, (row, code) in enumerate(zip(rows, codes)):
        out[i] = SYMMETRIES[code](row)
    return out


def transform_grouped(images: np.ndarray, codes: list[int]) -> np.ndarray:
    """SYMMETRIES[codes[i]](images[i]) for every i, as a new array, by groups of equal codes."""
    out = np.empty_like(images)
    codes_ = np.asarray(codes, dtype=np.int64)
    for code in np.unique(codes_).tolist():
        where = np.flatnonzero(codes_ == code)
        out[where] = SYMMETRIES[code](images[where])
    return out


def take(
    values: np.ndarray, indices: np.ndarray, codes: list[int] | None, by_rows: bool = True
) -> np.ndarray:
    """values[indices], each row transformed by SYMMETRIES[codes[i]] when codes are given."""
    if codes is None:
        return values[indices]
    if not by_rows:
        return transform_grouped(values[indices], codes)
    out = np.empty((len(indices),) + values.shape[1:], values.dtype)
    return take_transformed(out, (values[i] for i in indices.tolist()), codes)


def apply_flags(images_BCHW: np.ndarray, flags_B3: np.ndarray) -> np.ndarray:
    """Each image flipped and transposed as its flags say, as a new array."""
    return take_transformed(np.empty_like(images_BCHW), images_BCHW, flag_codes(flags_B3))


def normalise_(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(images - mean) / std in place, for arrays the caller owns (a batch just read)."""
    images -= np.float32(mean)
    images /= np.float32(std)  # a division, as DALI's graph does: the same bits
    return images
