import numpy as np
import pytest
import zarr

from lensperf.simulate.config import SubhaloConfig
from lensperf.simulate.render import Renderer, SceneSampler, image_rng
from lensperf.simulate.runner import simulate_classification, simulate_sr
from lensperf.store import CLASSES


@pytest.fixture
def sampler_and_renderer(model_ii_config):
    cfg = model_ii_config()
    sampler = SceneSampler(cfg.lens, cfg.source, cfg.instrument, cfg.cdm, cfg.axion)
    return cfg, sampler, Renderer(cfg.lens, cfg.source, cfg.instrument)


def _observe(sampler, renderer, class_name, index, seed=0):
    rng = image_rng(seed, 0, index)  # one stream for all classes: the same source position
    return renderer.observe(sampler.draw(class_name, rng), rng)


def test_substructure_changes_the_image(sampler_and_renderer):
    cfg, sampler, renderer = sampler_and_renderer
    for index in range(3):
        images = {c: _observe(sampler, renderer, c, index) for c in CLASSES}
        again = _observe(sampler, renderer, "no_sub", index)
        assert np.array_equal(images["no_sub"], again)  # deterministic per (seed, stream, index)
        for c in ("cdm", "axion"):
            # Subhalos perturb the arcs: a visible change, but not a different lens.
            diff = np.abs(images[c] - images["no_sub"]).max()
            assert 1e-3 < diff < 0.9, (c, index, diff)
        for image in images.values():
            assert image.dtype == np.float32 and image.shape == (64, 64)
            assert image.min() == 0.0 and image.max() == 1.0


def test_axion_scenes(sampler_and_renderer):
    cfg, sampler, _ = sampler_and_renderer
    v = cfg.axion
    masses = []
    for i in range(200):
        scene = sampler.draw("axion", image_rng(1, 2, i))
        masses.append(scene.axion_mass)
        xy = scene.point_masses[:, :2]
        assert scene.point_masses.shape == (v.count, 3)
        # Points on a line through the centre, of half-length 0.03" * (1e-22 eV / m_a).
        half = v.half_length_at_1e_22 * 1e-22 / scene.axion_mass
        assert np.hypot(*xy.T).max() == pytest.approx(half, rel=1e-9)
        cross = xy[0, 0] * xy[-1, 1] - xy[0, 1] * xy[-1, 0]  # collinear with the centre
        assert abs(cross) < 1e-9 * max(1.0, half**2)
        # Total mass conserved: sum of theta_E^2 scales with mass.
        total = sampler.point_mass_theta_e(np.array([v.total_mass]))[0] ** 2
        assert (scene.point_masses[:, 2] ** 2).sum() == pytest.approx(total, rel=1e-9)
    masses = np.array(masses)
    assert masses.min() >= v.axion_mass_min and masses.max() <= v.axion_mass_max
    # log-uniform: the median log-mass sits mid-range
    mid = (np.log10(v.axion_mass_min) + np.log10(v.axion_mass_max)) / 2
    assert abs(np.median(np.log10(masses)) - mid) < 0.25
    for c in ("no_sub", "cdm"):
        assert np.isnan(sampler.draw(c, image_rng(1, 0, 0)).axion_mass)


def test_subhalo_mass_function_and_radii(sampler_and_renderer):
    cfg, sampler, _ = sampler_and_renderer
    c: SubhaloConfig = cfg.cdm
    rows = np.concatenate(
        [sampler.draw("cdm", image_rng(2, 1, i)).point_masses for i in range(400)]
    )
    assert len(rows) == 400 * c.count
    radius = np.hypot(rows[:, 0], rows[:, 1])
    assert radius.min() >= c.radius_min and radius.max() <= c.radius_max
    unit = sampler.point_mass_theta_e(np.array([1.0]))[0] * c.theta_e_scale
    mass = (rows[:, 2] / unit) ** 2
    assert mass.min() >= c.mass_min * (1 - 1e-9) and mass.max() <= c.mass_max * (1 + 1e-9)
    # Maximum-likelihood slope of a truncated power law (10k draws: sd ~0.01).
    grid = np.linspace(1.5, 2.3, 801)
    logm = np.log(mass)
    lo, hi = c.mass_min, c.mass_max
    loglik = [
        len(mass) * np.log((a - 1) / (lo ** (1 - a) - hi ** (1 - a))) - a * logm.sum() for a in grid
    ]
    assert grid[int(np.argmax(loglik))] == pytest.approx(c.slope, abs=0.05)


def test_store_is_identical_for_any_worker_count(model_ii_config, tmp_path):
    cfg = model_ii_config("n_per_class=24", "seed=5")
    one = simulate_classification(cfg, tmp_path / "one.zarr", workers=1)
    two = simulate_classification(cfg, tmp_path / "two.zarr", workers=2)
    a, b = zarr.open_group(str(one), mode="r"), zarr.open_group(str(two), mode="r")
    for split in ("train", "val"):
        for name in ("images", "labels", "axion_mass"):
            np.testing.assert_array_equal(a[f"{split}/{name}"][:], b[f"{split}/{name}"][:])


def test_classes_balanced_and_split_90_10(model_ii_config, tmp_path):
    cfg = model_ii_config("n_per_class=30")
    group = zarr.open_group(str(simulate_classification(cfg, tmp_path / "s.zarr")), mode="r")
    train, val = group["train/labels"][:], group["val/labels"][:]
    assert np.bincount(train, minlength=3).tolist() == [27, 27, 27]
    assert np.bincount(val, minlength=3).tolist() == [3, 3, 3]
    # Shuffled: the first chunk mixes the classes.
    assert len(set(train[:9].tolist())) > 1
    for split, labels in (("train", train), ("val", val)):
        mass = group[f"{split}/axion_mass"][:]
        assert np.isfinite(mass[labels == 2]).all() and np.isnan(mass[labels != 2]).all()
    assert group.attrs["source"] == "simulated: model_ii"
    assert group.attrs["config"]["n_per_class"] == 30
    # A different seed gives different images.
    other = simulate_classification(
        model_ii_config("n_per_class=30", "seed=1"), tmp_path / "o.zarr"
    )
    assert not np.array_equal(group["val/images"][:], zarr.open_group(str(other))["val/images"][:])


def test_sr_pairs_show_the_same_lens(sr_config, tmp_path):
    cfg = sr_config("n=10")
    group = zarr.open_group(str(simulate_sr(cfg, tmp_path / "sr.zarr")), mode="r")
    lr, hr = group["train/lr"][:], group["train/hr"][:]
    assert lr.shape == (9, 1, 75, 75) and hr.shape == (9, 1, 150, 150)
    assert group["val/lr"].shape == (1, 1, 75, 75)
    binned = hr.reshape(9, 1, 75, 2, 75, 2).mean(axis=(3, 5))
    for a, b in zip(lr, binned):
        # LR is the HR lens at twice the pixel scale: binning HR 2x2 recovers it closely.
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


@pytest.mark.parametrize(
    "noise, lr_noisy, hr_noisy", [("none", 0, 0), ("lr", 1, 0), ("both", 1, 1)]
)
def test_sr_noise_option(sr_config, tmp_path, noise, lr_noisy, hr_noisy):
    out = simulate_sr(sr_config("n=4", "val_fraction=0", f"noise={noise}"), tmp_path / "s.zarr")
    group = zarr.open_group(str(out))
    for name, noisy in (("lr", lr_noisy), ("hr", hr_noisy)):
        corner = group[f"train/{name}"][:, 0, :10, :10]  # blank sky: flat unless noisy
        assert (corner.std() > 1e-3) == bool(noisy), (name, corner.std())
