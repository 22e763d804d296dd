"""Simulation presets: instrument, main lens, source and the two kinds of substructure.

Physics follows DeepLenseSim (the README's Data section); values marked "calibrated" in the
YAML presets were fitted so that simulated images match the real DeepLense samples.
Angles are in arcsec, masses in solar masses, axion masses in eV.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lensperf.config import require


@dataclass(frozen=True, kw_only=True)
class InstrumentConfig:
    num_pix: int = 64
    pixel_scale: float = 0.101  # arcsec / pixel
    seeing: float = 0.16  # FWHM of the Gaussian PSF, arcsec
    exposure_time: float = 565.0  # seconds per exposure
    # Model I draws each image's exposure time as 10**U(lo, hi) seconds; empty keeps it fixed.
    exposure_time_log10_range: tuple[float, ...] = ()
    num_exposures: int = 1
    magnitude_zero_point: float = 24.0
    sky_brightness: float | None = 22.35  # mag / arcsec^2 (nominal Euclid VIS)
    read_noise: float | None = 4.2
    ccd_gain: float | None = 3.1
    background_rms: float | None = None  # overrides the sky/read-noise background when set
    noise: bool = False  # add background + Poisson noise (DeepLense Model II files are noise-free)
    supersampling: int = 2  # sub-pixels per pixel side when rendering

    def __post_init__(self):
        require(8 <= self.num_pix <= 1024, "num_pix", f"must be in [8, 1024], got {self.num_pix}")
        require(self.pixel_scale > 0, "pixel_scale", "must be positive")
        require(self.seeing > 0, "seeing", "must be positive")
        require(self.exposure_time > 0, "exposure_time", "must be positive")
        require(
            len(self.exposure_time_log10_range) in (0, 2),
            "exposure_time_log10_range",
            "must be empty or [lo, hi]",
        )
        if self.exposure_time_log10_range:
            lo, hi = self.exposure_time_log10_range
            require(lo <= hi, "exposure_time_log10_range", "lo must not exceed hi")
        require(self.num_exposures >= 1, "num_exposures", "must be at least 1")
        require(1 <= self.supersampling <= 8, "supersampling", "must be in [1, 8]")
        # lenstronomy builds a background model for every image, noisy or not.
        sky = (self.sky_brightness, self.read_noise, self.ccd_gain)
        require(
            self.background_rms is not None or all(v is not None for v in sky),
            "background_rms",
            "must be set, or else sky_brightness, read_noise and ccd_gain",
        )

    @property
    def field_of_view(self) -> float:
        return self.num_pix * self.pixel_scale


@dataclass(frozen=True, kw_only=True)
class LensConfig:
    z_lens: float = 0.5
    z_source: float = 1.0
    H0: float = 70.0
    Om0: float = 0.3
    # Main lens (SIE). The nominal 1e12 M_sun gives 1.2-1.3"; presets hold the calibrated value.
    einstein_radius: float = 1.2
    e1: float = 0.1
    e2: float = 0.0
    shear_gamma1: float = 0.05
    shear_gamma2: float = 0.0

    def __post_init__(self):
        require(0 < self.z_lens < self.z_source, "z_lens", "must be in (0, z_source)")
        require(self.einstein_radius > 0, "einstein_radius", "must be positive")
        require(self.H0 > 0, "H0", "must be positive")
        require(0 < self.Om0 < 1, "Om0", "must be in (0, 1)")
        require(abs(self.e1) < 1 and abs(self.e2) < 1, "e1", "ellipticities must be in (-1, 1)")


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    r_sersic: float = 0.25
    n_sersic: float = 1.0
    e1: float = -0.1
    e2: float = 0.1
    center_range: float = 0.35  # centre drawn uniformly in [-range, range] on each axis
    magnitude: float = 20.0  # sets the flux, which matters only for the noise
    amplitude: float | None = None  # Sersic amplitude; when set, used instead of magnitude

    def __post_init__(self):
        require(self.r_sersic > 0, "r_sersic", "must be positive")
        require(0.2 <= self.n_sersic <= 8, "n_sersic", "must be in [0.2, 8]")
        require(self.center_range >= 0, "center_range", "must be non-negative")


@dataclass(frozen=True, kw_only=True)
class SubhaloConfig:
    """CDM substructure: point-mass subhalos with a power-law mass function."""

    count: int = 25
    mass_min: float = 1e6
    mass_max: float = 1e10
    slope: float = 1.9  # dN/dm ~ m^-slope
    radius_min: float = 0.25
    radius_max: float = 2.0
    # Calibrated: point masses at their nominal Einstein radii barely touch the image (median
    # largest pixel change 0.002), while the real cdm sample differs from no_sub by 0.003 on
    # average and up to 0.25. Presets scale each subhalo's Einstein radius by this factor.
    theta_e_scale: float = 1.0

    def __post_init__(self):
        require(self.count >= 1, "count", "must be at least 1")
        require(self.theta_e_scale > 0, "theta_e_scale", "must be positive")
        require(0 < self.mass_min < self.mass_max, "mass_min", "must be in (0, mass_max)")
        require(self.slope != 1.0, "slope", "must not be 1 (the sampler uses m^(1-slope))")
        require(0 <= self.radius_min < self.radius_max, "radius_min", "must be in [0, radius_max)")


@dataclass(frozen=True, kw_only=True)
class VortexConfig:
    """Axion substructure: a line ("vortex") of point masses through the lens centre."""

    count: int = 100
    total_mass: float = 3e10
    # half-length = half_length_at_1e-22 * (1e-22 eV / m_a)
    half_length_at_1e_22: float = 0.03
    axion_mass_min: float = 1e-24
    axion_mass_max: float = 1e-22
    # Calibrated: the real axion rings sit at the no_sub radius, so the vortex's mass is taken
    # out of the main halo (same mass inside the ring) rather than added to it.
    mass_from_main_halo: bool = True

    def __post_init__(self):
        require(self.count >= 1, "count", "must be at least 1")
        require(self.total_mass > 0, "total_mass", "must be positive")
        require(self.half_length_at_1e_22 > 0, "half_length_at_1e_22", "must be positive")
        require(
            0 < self.axion_mass_min <= self.axion_mass_max,
            "axion_mass_min",
            "must be in (0, axion_mass_max]",
        )


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """A classification-set preset (`lensperf data simulate`)."""

    name: str = "model_ii"
    n_per_class: int = 1000
    val_fraction: float = 0.1
    seed: int = 0
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    lens: LensConfig = field(default_factory=LensConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    cdm: SubhaloConfig = field(default_factory=SubhaloConfig)
    axion: VortexConfig = field(default_factory=VortexConfig)

    def __post_init__(self):
        require(self.n_per_class >= 1, "n_per_class", "must be at least 1")
        require(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        require(self.seed >= 0, "seed", "must be non-negative")


@dataclass(frozen=True, kw_only=True)
class SRSimulationConfig:
    """A super-resolution preset (`lensperf data simulate-sr`): no_sub lenses at two scales.

    HR is rendered by `instrument`; LR covers the same field with `num_pix / factor` pixels of
    `pixel_scale * factor`.
    """

    name: str = "sr"
    n: int = 1000
    val_fraction: float = 0.1
    seed: int = 0
    factor: int = 2
    # Which images get background + Poisson noise (instrument.noise is not used here). "lr":
    # a noisy observation and its clean high-resolution truth, the task a network can learn.
    noise: Literal["none", "lr", "both"] = "lr"
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    lens: LensConfig = field(default_factory=LensConfig)
    source: SourceConfig = field(default_factory=SourceConfig)

    def __post_init__(self):
        require(self.n >= 1, "n", "must be at least 1")
        require(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        require(self.seed >= 0, "seed", "must be non-negative")
        require(self.factor in (2, 3, 4), "factor", "must be 2, 3 or 4")
        require(
            self.noise == "none"
            or self.instrument.background_rms is not None
            or self.instrument.sky_brightness is not None,
            "noise",
            "needs instrument.background_rms or instrument.sky_brightness",
        )
        require(
            self.instrument.num_pix % self.factor == 0,
            "instrument.num_pix",
            f"must be divisible by factor={self.factor}",
        )
