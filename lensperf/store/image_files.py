"""Reading one image file, as the importer and `lensperf predict` both do.

Formats: `.npy` in every layout seen in DeepLense sets (plain (H, W), (1, H, W), flat (H*W,)
vectors with or without an appended label, and object arrays `[image, axion_mass]`, which need
pickle: read only files you trust), and FITS (`.fits`, `.fit`, `.fits.gz`; the first HDU
holding an image). A file that cannot be used raises `BadFile` naming it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lensperf.errors import DataError

IMAGE_SUFFIXES = (".npy", ".fits", ".fit", ".fits.gz")
RANGE_TOLERANCE = 1e-4  # float64 -> float32 round-off and min-max rounding in the wild


class BadFile(DataError):
    def __init__(self, path: Path, reason: str):
        self.path = path
        super().__init__(f"{path}: {reason}")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files in `folder` (and below it with `recursive`), in sorted order."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if is_image_file(p) and not p.name.startswith("."))


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise BadFile(path, f"not a readable .npy file ({error})") from None
    except (OSError, EOFError) as error:
        raise BadFile(path, f"cannot read ({error})") from None
    try:  # DeepLense axion files are object arrays [image, mass]
        return np.load(path, allow_pickle=True)
    except Exception as error:
        raise BadFile(path, f"not a readable .npy file ({type(error).__name__})") from None


def _load_fits(path: Path) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            for hdu in hdus:
                if hdu.data is not None and hdu.data.ndim >= 2:
                    return np.array(hdu.data)
    except Exception as error:  # astropy raises OSError, ValueError, TypeError for bad files
        raise BadFile(path, f"not a readable FITS file ({type(error).__name__})") from None
    raise BadFile(path, "the FITS file holds no image")


def _as_image(path: Path, array: np.ndarray) -> np.ndarray:
    """(H, W) float64 from any of the accepted layouts."""
    if np.iscomplexobj(array):
        raise BadFile(path, "pixels are complex numbers; an image must be real")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 1:
        n = array.shape[0]
        side = math.isqrt(n)
        if side * side == n:
            array = array.reshape(side, side)
        elif math.isqrt(n - 1) ** 2 == n - 1:  # a label appended after the pixels
            side = math.isqrt(n - 1)
            array = array[:-1].reshape(side, side)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise BadFile(path, f"expected a square image, got shape {array.shape}")
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError):
        raise BadFile(path, f"pixels of dtype {array.dtype} are not numbers") from None


def minmax(image: np.ndarray) -> np.ndarray:
    """The image scaled to [0, 1] by its own minimum and maximum (the DeepLense convention); a
    constant image becomes zeros."""
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def read_image(path: Path, *, normalise: bool = False) -> tuple[np.ndarray, float]:
    """(image float32 (H, W) in [0, 1], axion mass in eV or NaN) of one file. `normalise`
    min-max scales the image first; without it, values outside [0, 1] are refused."""
    path = Path(path)
    raw = _load_fits(path) if path.name.lower().endswith(IMAGE_SUFFIXES[1:]) else _load_npy(path)
    mass = math.nan
    if raw.dtype == object:
        items = list(raw.ravel()) if raw.ndim else [raw.item()]
        if not items:
            raise BadFile(path, "empty object array")
        raw = np.asarray(items[0])
        if len(items) > 1:
            try:
                mass = float(items[1])
            except (TypeError, ValueError):
                raise BadFile(path, "second item of the object array is not a mass") from None
            if not math.isfinite(mass) or mass <= 0:
                raise BadFile(path, f"axion mass {mass!r} is not a positive number")
    image = _as_image(path, raw)
    if not np.isfinite(image).all():
        raise BadFile(path, "image has NaN or infinite pixels")
    if normalise:
        image = minmax(image)
    lo, hi = float(image.min()), float(image.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise BadFile(path, f"values outside [0, 1] (min {lo:.4g}, max {hi:.4g}); pass --normalise")
    return np.clip(image, 0.0, 1.0).astype(np.float32), mass
