"""Render DeepLense-style lens images with lenstronomy.

A `Scene` holds every random draw of one image (source position, substructure, exposure); a
`Renderer` turns a scene into pixels for one instrument. Keeping the two apart lets the
super-resolution simulator render the same scene at two pixel scales, and keeps each image's
randomness a function of its own generator only (so the output does not depend on --workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.cosmology import FlatLambdaCDM
from lenstronomy.Cosmo.lens_cosmo import LensCosmo
from lenstronomy.SimulationAPI.observation_api import SingleBand
from lenstronomy.SimulationAPI.sim_api import SimAPI

from lensperf.errors import ConfigError
from lensperf.simulate.config import (
    InstrumentConfig,
    LensConfig,
    SourceConfig,
    SubhaloConfig,
    VortexConfig,
)


@dataclass
class Scene:
    """The random draws behind one image. Point masses are (x, y, theta_E) rows in arcsec."""

    source_x: float
    source_y: float
    point_masses: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    exposure_time: float | None = None  # None: the instrument's own
    axion_mass: float = math.nan  # eV, only for axion images
    main_theta_e: float | None = None  # None: the preset's Einstein radius


class SceneSampler:
    """Draws scenes for each class; the order of draws is fixed so that the source position of
    image i is the same whatever its class (the substructure test relies on it)."""

    def __init__(
        self,
        lens: LensConfig,
        source: SourceConfig,
        instrument: InstrumentConfig,
        cdm: SubhaloConfig | None = None,
        axion: VortexConfig | None = None,
    ):
        self.lens = lens
        self.source = source
        self.instrument = instrument
        self.cdm = cdm or SubhaloConfig()
        self.axion = axion or VortexConfig()
        cosmo = FlatLambdaCDM(H0=lens.H0, Om0=lens.Om0)
        lens_cosmo = LensCosmo(lens.z_lens, lens.z_source, cosmo=cosmo)
        # Point mass: M = pi * Sigma_crit * theta_E^2, so theta_E scales as sqrt(M / M(1")).
        self._mass_in_one_arcsec = float(lens_cosmo.mass_in_theta_E(1.0))
        vortex = self.point_mass_theta_e(np.array([self.axion.total_mass]))[0]
        if self.axion.mass_from_main_halo and vortex >= lens.einstein_radius:
            raise ConfigError(
                "axion.total_mass", "exceeds the main halo's mass inside its Einstein radius"
            )
        self._main_theta_e_with_vortex = float(np.sqrt(max(lens.einstein_radius**2 - vortex**2, 0)))

    def point_mass_theta_e(self, mass: np.ndarray) -> np.ndarray:
        return np.sqrt(np.asarray(mass, dtype=np.float64) / self._mass_in_one_arcsec)

    def draw(self, class_name: str, rng: np.random.Generator) -> Scene:
        r = self.source.center_range
        x, y = rng.uniform(-r, r, size=2)
        scene = Scene(source_x=float(x), source_y=float(y))
        log_range = self.instrument.exposure_time_log10_range
        if log_range:
            scene.exposure_time = float(10 ** rng.uniform(*log_range))
        if class_name == "cdm":
            scene.point_masses = self._subhalos(rng)
        elif class_name == "axion":
            scene.point_masses, scene.axion_mass = self._vortex(rng)
            if self.axion.mass_from_main_halo:
                # Any circular lens holds pi * Sigma_crit * theta_E^2 inside theta_E, so moving
                # the vortex mass out of the halo keeps the enclosed mass (and the ring) fixed.
                scene.main_theta_e = self._main_theta_e_with_vortex
        elif class_name != "no_sub":
            raise ValueError(f"unknown class {class_name!r}")
        return scene

    def _subhalos(self, rng: np.random.Generator) -> np.ndarray:
        c = self.cdm
        # Inverse-CDF sampling of dN/dm ~ m^-slope on [mass_min, mass_max].
        a = 1.0 - c.slope
        u = rng.uniform(size=c.count)
        mass = (c.mass_min**a + u * (c.mass_max**a - c.mass_min**a)) ** (1.0 / a)
        radius = rng.uniform(c.radius_min, c.radius_max, size=c.count)
        angle = rng.uniform(0, 2 * np.pi, size=c.count)
        theta_e = self.point_mass_theta_e(mass) * c.theta_e_scale
        return np.stack([radius * np.cos(angle), radius * np.sin(angle), theta_e], axis=1)

    def _vortex(self, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        v = self.axion
        axion_mass = float(np.exp(rng.uniform(np.log(v.axion_mass_min), np.log(v.axion_mass_max))))
        half_length = v.half_length_at_1e_22 * (1e-22 / axion_mass)
        angle = rng.uniform(0, np.pi)
        t = np.linspace(-half_length, half_length, v.count)
        theta_e = self.point_mass_theta_e(np.full(v.count, v.total_mass / v.count))
        return np.stack([t * np.cos(angle), t * np.sin(angle), theta_e], axis=1), axion_mass


class Renderer:
    """Pixels of a scene through one instrument. Image models are cached per number of point
    masses (one per class), since building a lenstronomy model costs far more than using it."""

    def __init__(self, lens: LensConfig, source: SourceConfig, instrument: InstrumentConfig):
        self.lens = lens
        self.source = source
        self.instrument = instrument
        self._cosmo = FlatLambdaCDM(H0=lens.H0, Om0=lens.Om0)
        self._models: dict[int, object] = {}
        band = self._band_kwargs()
        self._band = SingleBand(**band)
        self._source_amp = source.amplitude
        if self._source_amp is None:
            self._source_amp = self._sim(0).magnitude2amplitude(
                kwargs_source_mag=[self._source_kwargs(0.0, 0.0) | {"magnitude": source.magnitude}]
            )[1][0]["amp"]

    def _band_kwargs(self) -> dict:
        ins = self.instrument
        band = dict(
            pixel_scale=ins.pixel_scale,
            exposure_time=ins.exposure_time,
            num_exposures=ins.num_exposures,
            magnitude_zero_point=ins.magnitude_zero_point,
            sky_brightness=ins.sky_brightness,
            read_noise=ins.read_noise,
            ccd_gain=ins.ccd_gain,
            seeing=ins.seeing,
            psf_type="GAUSSIAN",
            background_noise=ins.background_rms,
        )
        if ins.background_rms is not None:  # it replaces the sky model (lenstronomy warns else)
            for key in ("sky_brightness", "read_noise", "ccd_gain"):
                band.pop(key)
        return {k: v for k, v in band.items() if v is not None}

    def _sim(self, n_point_masses: int) -> SimAPI:
        model = dict(
            lens_model_list=["SIE", "SHEAR"] + ["POINT_MASS"] * n_point_masses,
            source_light_model_list=["SERSIC_ELLIPSE"],
            z_lens=self.lens.z_lens,
            z_source=self.lens.z_source,
            cosmo=self._cosmo,
        )
        return SimAPI(
            num_pix=self.instrument.num_pix,
            kwargs_single_band=self._band_kwargs(),
            kwargs_model=model,
        )

    def _image_model(self, n_point_masses: int):
        if n_point_masses not in self._models:
            numerics = {"supersampling_factor": self.instrument.supersampling}
            self._models[n_point_masses] = self._sim(n_point_masses).image_model_class(numerics)
        return self._models[n_point_masses]

    def _source_kwargs(self, x: float, y: float) -> dict:
        s = self.source
        return dict(
            R_sersic=s.r_sersic, n_sersic=s.n_sersic, e1=s.e1, e2=s.e2, center_x=x, center_y=y
        )

    def render(self, scene: Scene) -> np.ndarray:
        """Noise-free image in electrons per second per pixel, float64 (num_pix, num_pix)."""
        lens = self.lens
        theta_e = lens.einstein_radius if scene.main_theta_e is None else scene.main_theta_e
        kwargs_lens = [
            dict(theta_E=theta_e, e1=lens.e1, e2=lens.e2, center_x=0.0, center_y=0.0),
            dict(gamma1=lens.shear_gamma1, gamma2=lens.shear_gamma2, ra_0=0.0, dec_0=0.0),
        ]
        kwargs_lens += [
            dict(theta_E=float(t), center_x=float(x), center_y=float(y))
            for x, y, t in scene.point_masses
        ]
        kwargs_source = [self._source_kwargs(scene.source_x, scene.source_y)]
        kwargs_source[0]["amp"] = self._source_amp
        model = self._image_model(len(scene.point_masses))
        return model.image(kwargs_lens=kwargs_lens, kwargs_source=kwargs_source)

    def add_noise(self, image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """Background plus Poisson noise (Gaussian approximation, as lenstronomy estimates it)."""
        exposure = self._band.exposure_time
        if scene.exposure_time is not None:
            exposure = scene.exposure_time * self.instrument.num_exposures
        variance = self._band.background_noise**2 + np.clip(image, 0, None) / exposure
        return image + rng.standard_normal(image.shape) * np.sqrt(variance)

    def observe(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """The image a user gets: rendered, noisy if the instrument says so, min-max normalised."""
        image = self.render(scene)
        if self.instrument.noise:
            image = self.add_noise(image, scene, rng)
        return normalise(image)


def normalise(image: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] as float32, as the DeepLense files are."""
    lo, hi = float(image.min()), float(image.max())
    if not hi > lo:
        return np.zeros(image.shape, dtype=np.float32)
    return ((image - lo) / (hi - lo)).astype(np.float32)


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one image: a function of (seed, stream, index) only."""
    return np.random.default_rng([seed, stream, index])
