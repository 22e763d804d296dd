"""The lensing symmetries applied in numpy (the torch backend; DALI applies the same flags in
its graph). Images are (B, C, H, W); flags (B, 3): horizontal flip, vertical flip, transpose."""

from __future__ import annotations

import numpy as np


def apply_flags(images_BCHW: np.ndarray, flags_B3: np.ndarray) -> np.ndarray:
    out = images_BCHW.copy()
    for i, (flip_h, flip_v, transpose) in enumerate(flags_B3):
        image = out[i]
        if flip_h:
            image = image[:, :, ::-1]
        if flip_v:
            image = image[:, ::-1, :]
        if transpose:
            image = image.transpose(0, 2, 1)
        out[i] = image
    return out


def normalise(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (images - np.float32(mean)) / np.float32(std)
