"""Ring statistics that tie the simulator to the real DeepLense Model II samples.

The presets are calibrated so that these statistics of simulated no_sub images match those of
the real samples (tests/test_calibration.py holds them there).
"""

from __future__ import annotations

import numpy as np

RADIAL_BINS = 30  # pixels from the centre covered by the profile (64x64 images: to the edge)


def radial_profile(image: np.ndarray) -> np.ndarray:
    """Mean pixel value in 1-px annuli [k, k+1) around the image centre."""
    h, w = image.shape
    y, x = np.indices(image.shape)
    r = np.hypot(y - (h - 1) / 2, x - (w - 1) / 2).astype(int).ravel()
    sums = np.bincount(r, image.ravel(), minlength=RADIAL_BINS)[:RADIAL_BINS]
    counts = np.bincount(r, minlength=RADIAL_BINS)[:RADIAL_BINS]
    return sums / np.maximum(counts, 1)


def ring_statistics(image: np.ndarray) -> dict[str, float]:
    """Ring radius and width (px) from the radial profile, the fraction of pixels above 0.5
    and the pixel sum, of a [0, 1]-normalised image."""
    profile = radial_profile(image)
    k = int(np.argmax(profile))
    half = profile[k] / 2
    # Interpolated half-maximum crossings on either side of the peak.
    inner = k
    while inner > 0 and profile[inner - 1] >= half:
        inner -= 1
    outer = k
    while outer < len(profile) - 1 and profile[outer + 1] >= half:
        outer += 1
    left = inner - 1 + _crossing(profile[inner - 1], profile[inner], half) if inner > 0 else 0.0
    right = (
        outer + _crossing(profile[outer], profile[outer + 1], half)
        if outer + 1 < len(profile)
        else float(outer)
    )
    return {
        "ring_radius": k + 0.5,
        "ring_width": right - left,
        "frac_bright": float((image > 0.5).mean()),
        "image_sum": float(image.sum()),
    }


def _crossing(a: float, b: float, level: float) -> float:
    """Fraction of the way from a to b where the linear interpolant reaches `level`."""
    return float((level - a) / (b - a)) if b != a else 0.5


def mean_statistics(images) -> dict[str, float]:
    stats = [ring_statistics(np.asarray(im, dtype=np.float64).squeeze()) for im in images]
    return {key: float(np.mean([s[key] for s in stats])) for key in stats[0]}
