from pathlib import Path

import numpy as np
import pytest

from lensperf.errors import DataError
from lensperf.store import open_store, read_rows
from lensperf.store.importer import import_tree, read_image

from .conftest import REAL_SAMPLES, run_cli

SIZE = 16


def _image(seed: int, size: int = SIZE) -> np.ndarray:
    image = np.random.default_rng(seed).random((size, size))
    return (image - image.min()) / (image.max() - image.min())


def _object_array(image: np.ndarray, mass: float) -> np.ndarray:
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = image, mass
    return arr


def make_tree(root: Path, per_class: int = 10, folders=("no_sub", "cdm", "axion")) -> dict:
    """A DeepLense-like tree using every file format; returns {file name: (image, mass)}."""
    truth = {}
    formats = ["plain", "channel", "flat", "flat_label", "object"]
    for c, folder in enumerate(folders):
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            image = _image(100 * c + i)
            kind = formats[i % len(formats)]
            mass = np.nan
            if kind == "plain":
                data = image
            elif kind == "channel":
                data = image[None]
            elif kind == "flat":
                data = image.ravel()
            elif kind == "flat_label":
                data = np.append(image.ravel(), c)
            else:
                mass = 10.0 ** -(22 + i / per_class)
                data = _object_array(image, mass)
            name = f"{folder}_sim_{1000 + i}.npy"
            np.save(root / folder / name, data, allow_pickle=True)
            truth[(c, image.tobytes())] = mass
    return truth


def stored_samples(store: Path) -> dict:
    group = open_store(store)
    found = {}
    for split in ("train", "val"):
        images = read_rows(group[f"{split}/images"], slice(None))
        labels = read_rows(group[f"{split}/labels"], slice(None))
        masses = read_rows(group[f"{split}/axion_mass"], slice(None))
        for image, label, mass in zip(images, labels, masses):
            found[(int(label), image[0].astype(np.float64).tobytes())] = float(mass)
    return found


def test_every_format_imports(tmp_path):
    truth = make_tree(tmp_path / "src")
    report = import_tree(tmp_path / "src", tmp_path / "out.zarr", val_fraction=0.2, seed=3)
    assert report.counts == {"train": 24, "val": 6} and report.skipped == []
    group = open_store(tmp_path / "out.zarr", "classification")
    assert group.attrs["image_size"] == SIZE
    assert group.attrs["source"].startswith("imported: ")
    # float32 storage: compare each image after the same rounding.
    truth32 = {
        (c, np.frombuffer(b).astype(np.float32).astype(np.float64).tobytes()): m
        for (c, b), m in truth.items()
    }
    found = stored_samples(tmp_path / "out.zarr")
    assert set(found) == set(truth32)
    for key, mass in truth32.items():
        if np.isnan(mass):
            assert np.isnan(found[key])
        else:
            assert found[key] == pytest.approx(mass, rel=1e-6)


def test_class_folder_aliases(tmp_path):
    make_tree(tmp_path / "src", per_class=3, folders=("no", "sphere", "vort"))
    import_tree(tmp_path / "src", tmp_path / "out.zarr")
    group = open_store(tmp_path / "out.zarr")
    labels = [*group["train/labels"][:], *group["val/labels"][:]]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_unknown_class_folder(tmp_path):
    make_tree(tmp_path / "src", per_class=2, folders=("no_sub", "mystery"))
    with pytest.raises(DataError, match="mystery: not a class folder"):
        import_tree(tmp_path / "src", tmp_path / "out.zarr")


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\x93NUMPY garbage", "not a readable .npy"),
        (np.zeros((3, 5)), "expected a square image"),
        (np.full((SIZE, SIZE), np.nan), "NaN or infinite"),
        (np.full((SIZE, SIZE), 3.0), "outside [0, 1]"),
        (np.zeros((SIZE + 2, SIZE + 2)), "differs from"),
        (np.array(["a", "b"]), "not numbers"),
    ],
)
def test_bad_file_stops_the_import_naming_it(tmp_path, content, reason):
    make_tree(tmp_path / "src", per_class=4)
    bad = tmp_path / "src" / "cdm" / "cdm_sim_zzz.npy"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        np.save(bad, content)
    with pytest.raises(DataError) as info:
        import_tree(tmp_path / "src", tmp_path / "out.zarr")
    assert str(bad) in str(info.value) and reason in str(info.value)
    assert list(tmp_path.glob("*out.zarr*")) == [] and list(tmp_path.glob(".out*")) == []
    report = import_tree(tmp_path / "src", tmp_path / "out.zarr", skip_bad=True)
    assert len(report.skipped) == 1 and report.counts["train"] + report.counts["val"] == 12


def test_truncated_file(tmp_path):
    make_tree(tmp_path / "src", per_class=3)
    victim = sorted((tmp_path / "src" / "axion").glob("*.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError, match=victim.name):
        import_tree(tmp_path / "src", tmp_path / "out.zarr")


def test_normalise_option(tmp_path):
    for name in ("cdm", "no_sub"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(2):
            np.save(tmp_path / "src" / name / f"{i}.npy", 5 + 10 * _image(1))
    with pytest.raises(DataError, match="--normalise"):
        import_tree(tmp_path / "src", tmp_path / "out.zarr")
    import_tree(tmp_path / "src", tmp_path / "out.zarr", normalise=True)
    image = open_store(tmp_path / "out.zarr")["train/images"][0, 0]
    np.testing.assert_allclose(image, _image(1), atol=1e-6)


def test_real_samples_read(real_samples):
    for name, expected in real_samples.items():
        image, mass = read_image(REAL_SAMPLES / f"{name}.npy")
        np.testing.assert_array_equal(image, expected.astype(np.float32))
        assert np.isnan(mass)


def make_sr_tree(root: Path, n: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    (root / "HR").mkdir(parents=True)
    (root / "LR").mkdir()
    pairs = []
    for i in range(n):
        hr = _image(i, 2 * SIZE)
        lr = _image(1000 + i, SIZE)
        np.save(root / "HR" / f"sample{i}.npy", hr[None])
        np.save(root / "LR" / f"sample{i}.npy", lr[None])
        pairs.append((lr, hr))
    return pairs


def test_sr_tree_pairs_by_name(tmp_path):
    pairs = make_sr_tree(tmp_path / "src")
    report = import_tree(tmp_path / "src", tmp_path / "sr.zarr")
    assert report.kind == "sr" and report.counts == {"train": 5, "val": 1}
    group = open_store(tmp_path / "sr.zarr", "sr")
    assert group.attrs["factor"] == 2
    lrs = [*group["train/lr"][:, 0], *group["val/lr"][:, 0]]
    hrs = [*group["train/hr"][:, 0], *group["val/hr"][:, 0]]
    stored = {lr.tobytes(): hr for lr, hr in zip(lrs, hrs)}
    for lr, hr in pairs:
        np.testing.assert_array_equal(
            stored[lr.astype(np.float32).tobytes()], hr.astype(np.float32)
        )


def test_sr_missing_partner(tmp_path):
    make_sr_tree(tmp_path / "src")
    (tmp_path / "src" / "HR" / "sample3.npy").unlink()
    with pytest.raises(DataError, match="sample3.npy: no partner file in HR/"):
        import_tree(tmp_path / "src", tmp_path / "sr.zarr")
    report = import_tree(tmp_path / "src", tmp_path / "sr.zarr", skip_bad=True)
    assert report.counts["train"] + report.counts["val"] == 5 and len(report.skipped) == 1


def test_cli_import_and_errors(tmp_path):
    make_tree(tmp_path / "src", per_class=3)
    result = run_cli("data", "import", tmp_path / "src", "--out", tmp_path / "a.zarr")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    again = run_cli("data", "import", tmp_path / "src", "--out", tmp_path / "a.zarr")
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = run_cli("data", "import", tmp_path / "nope", "--out", tmp_path / "b.zarr")
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    assert "Traceback" not in missing.stderr + again.stderr


def test_cli_import_compress_writes_the_same_samples_with_blosc(tmp_path):
    make_tree(tmp_path / "src", per_class=3)
    for name, flags in (("raw.zarr", []), ("lz4.zarr", ["--compress"])):
        result = run_cli("data", "import", tmp_path / "src", "--out", tmp_path / name, *flags)
        assert result.returncode == 0, result.stderr
    codecs = {
        name: [
            type(c).__name__ for c in open_store(tmp_path / name)["train/images"].metadata.codecs
        ]
        for name in ("raw.zarr", "lz4.zarr")
    }
    assert codecs == {
        "raw.zarr": ["BytesCodec", "Crc32cCodec"],
        "lz4.zarr": ["BytesCodec", "BloscCodec", "Crc32cCodec"],
    }
    raw, lz4 = stored_samples(tmp_path / "raw.zarr"), stored_samples(tmp_path / "lz4.zarr")
    assert sorted(raw) == sorted(lz4)
    masses = [[samples[key] for key in sorted(raw)] for samples in (raw, lz4)]
    assert np.array_equal(*masses, equal_nan=True)  # NaN: not an axion image
