"""The lensing symmetries applied in numpy (the torch backend; DALI applies the same flags in
its graph). Images are (B, C, H, W); flags (B, 3): horizontal flip, vertical flip, transpose."""

from __future__ import annotations

import numpy as np


def apply_flags(images_BCHW: np.ndarray, flags_B3: np.ndarray) -> np.ndarray:
    """Each image flipped and transposed as its flags say (in that order), as a new array.

    The images are grouped by their three flags (at most eight groups) and each group is
    transformed with whole-array views: a loop over 256 images cost 4.4 ms a batch, this 1.5.
    """
    out = np.empty_like(images_BCHW)
    codes = flags_B3.astype(np.int64) @ np.array([4, 2, 1])
    for code in np.unique(codes):
        where = np.flatnonzero(codes == code)
        group = images_BCHW[where]
        if code & 4:
            group = group[..., ::-1]
        if code & 2:
            group = group[..., ::-1, :]
        if code & 1:
            group = group.swapaxes(-1, -2)
        out[where] = group
    return out


def normalise_(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(images - mean) / std in place, for arrays the caller owns (a batch just read)."""
    images -= np.float32(mean)
    images /= np.float32(std)  # a division, as DALI's graph does: the same bits
    return images
