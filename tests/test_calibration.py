"""The Model II preset must keep producing images that look like the real DeepLense samples."""

import numpy as np
import pytest
from scipy.optimize import minimize

from lensperf.simulate.calibration import mean_statistics, ring_statistics
from lensperf.simulate.render import Renderer, Scene, SceneSampler, image_rng

# Real samples: ring radius 10.2 px, width 5.7 px, 3.3% pixels above 0.5, sum 223.
TOLERANCES = {
    "ring_radius": ("abs", 1.0),  # px; the nominal 1.25" Einstein radius lands ~2 px out
    "ring_width": ("abs", 1.0),  # px; the nominal 0.16" PSF gives rings ~2 px wider (arcs)
    "frac_bright": ("rel", 0.35),
    "image_sum": ("rel", 0.2),
}
N_IMAGES = 48


def simulated_statistics(config, class_name: str) -> dict[str, float]:
    sampler = SceneSampler(config.lens, config.source, config.instrument, config.cdm, config.axion)
    renderer = Renderer(config.lens, config.source, config.instrument)
    images = []
    for i in range(N_IMAGES):
        rng = image_rng(config.seed, 0, i)
        images.append(renderer.observe(sampler.draw(class_name, rng), rng))
    return mean_statistics(images)


def misfits(simulated: dict, real: dict) -> list[str]:
    bad = []
    for key, (kind, tol) in TOLERANCES.items():
        err = abs(simulated[key] - real[key])
        if kind == "rel":
            err /= abs(real[key])
        if err > tol:
            bad.append(f"{key}: simulated {simulated[key]:.4g} vs real {real[key]:.4g}")
    return bad


def test_real_samples_statistics(real_samples):
    stats = mean_statistics(real_samples.values())
    assert stats["ring_radius"] == pytest.approx(10.2, abs=0.5)
    assert stats["frac_bright"] == pytest.approx(0.033, abs=0.002)
    assert stats["image_sum"] == pytest.approx(223, rel=0.02)


@pytest.mark.parametrize("class_name", ["no_sub", "cdm", "axion"])
def test_model_ii_preset_matches_real_samples(model_ii_config, real_samples, class_name):
    real = mean_statistics(real_samples.values())
    assert misfits(simulated_statistics(model_ii_config(), class_name), real) == []


@pytest.mark.parametrize(
    "drift", ["lens.einstein_radius=1.25", "instrument.seeing=0.45", "source.r_sersic=0.5"]
)
def test_drifted_preset_fails_the_calibration(model_ii_config, real_samples, drift):
    real = mean_statistics(real_samples.values())
    assert misfits(simulated_statistics(model_ii_config(drift), "no_sub"), real) != []


def closest_rendering(config, target: np.ndarray) -> float:
    """The smallest mean |pixel difference| between `target` and the preset's smooth lens, over
    source positions within the preset's range (a grid, then Nelder-Mead from its best)."""
    renderer = Renderer(config.lens, config.source, config.instrument)

    def distance(xy) -> float:
        scene = Scene(source_x=float(xy[0]), source_y=float(xy[1]))
        return float(np.abs(renderer.observe(scene, None) - target).mean())

    r = config.source.center_range
    grid = [(x, y) for x in np.linspace(-r, r, 9) for y in np.linspace(-r, r, 9)]
    start = min(grid, key=distance)
    return float(minimize(distance, start, method="Nelder-Mead", options={"xatol": 1e-3}).fun)


def test_the_preset_reproduces_the_real_lens_closer_than_substructure_changes_it(
    model_ii_config, real_samples
):
    """Average ring statistics are not enough: a classifier reads substructure as departures
    from the smooth lens, so the simulated lens must match the real one to well under what
    substructure changes (0.003-0.004 mean |difference| in the real samples). The fitted preset
    gets to 0.002; the preset before the fit (a 0.22" PSF, the nominal source and shear) stays
    at 0.009."""
    real = real_samples["no_sub"]
    assert closest_rendering(model_ii_config(), real) < 0.0025
    before_fit = ["instrument.seeing=0.22", "lens.einstein_radius=1.05", "lens.e1=0.1",
                  "lens.shear_gamma1=0.05", "source.r_sersic=0.25"]  # fmt: skip
    assert closest_rendering(model_ii_config(*before_fit), real) > 0.005


def substructure_strength(config, class_name: str) -> float:
    """Mean |image - no_sub image| over images that share their source position."""
    sampler = SceneSampler(config.lens, config.source, config.instrument, config.cdm, config.axion)
    renderer = Renderer(config.lens, config.source, config.instrument)
    diffs = []
    for i in range(N_IMAGES):
        rng = image_rng(config.seed, 0, i)
        smooth = renderer.observe(sampler.draw("no_sub", rng), rng)
        rng = image_rng(config.seed, 0, i)
        diffs.append(np.abs(renderer.observe(sampler.draw(class_name, rng), rng) - smooth).mean())
    return float(np.mean(diffs))


@pytest.mark.parametrize("class_name", ["cdm", "axion"])
def test_substructure_is_as_visible_as_in_the_real_samples(
    model_ii_config, real_samples, class_name
):
    # Real: mean |cdm - no_sub| = 0.0031, |axion - no_sub| = 0.0041 (nearly the same source).
    real = np.abs(real_samples[class_name] - real_samples["no_sub"]).mean()
    simulated = substructure_strength(model_ii_config(), class_name)
    assert real / 2.5 < simulated < real * 2.5, (simulated, real)


def test_nominal_subhalos_would_be_invisible(model_ii_config, real_samples):
    """Why theta_e_scale exists: unscaled point masses change the image 30x less than real."""
    real = np.abs(real_samples["cdm"] - real_samples["no_sub"]).mean()
    assert substructure_strength(model_ii_config("cdm.theta_e_scale=1.0"), "cdm") < real / 5


def test_ring_statistics_of_a_synthetic_ring():
    y, x = np.indices((64, 64))
    r = np.hypot(y - 31.5, x - 31.5)
    ring = np.exp(-0.5 * ((r - 12.3) / 1.5) ** 2)
    stats = ring_statistics(ring)
    assert stats["ring_radius"] == pytest.approx(12.5, abs=0.01)  # bin [12, 13)
    assert stats["ring_width"] == pytest.approx(2.355 * 1.5, abs=0.4)  # FWHM of the Gaussian
