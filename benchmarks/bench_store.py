"""Store reads and imports: a random batch of 256 from a chunked store against per-file .npy
loads (the way DeepLense code reads today), and the importer's files per second."""

import numpy as np
import pytest

from lensperf.store import CLASSIFICATION, StoreWriter, chunk_length, open_store, read_rows
from lensperf.store.importer import import_tree

N_IMAGES = 4096
BATCH = 256


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    y, x = np.indices((64, 64))
    r = np.hypot(y - 31.5, x - 31.5)
    radii = rng.uniform(8, 12, N_IMAGES)
    images = np.exp(-0.5 * ((r[None] - radii[:, None, None]) / 2) ** 2)
    with StoreWriter(root / "s.zarr", kind=CLASSIFICATION) as writer:
        writer.set_attrs(classes=["no_sub", "cdm", "axion"], image_size=64, source="bench")
        writer.create("val", "images", (0, 1, 64, 64), "float32", 1)
        for split in ("train", "val"):
            n = N_IMAGES if split == "train" else 0
            writer.create(split, "labels", (n,), "int64", 1024)
            writer.create(split, "axion_mass", (n,), "float32", 1024)
        chunk = chunk_length((1, 64, 64))
        writer.create("train", "images", (N_IMAGES, 1, 64, 64), "float32", chunk)[:] = images[
            :, None
        ]
    tree = root / "tree"
    for c, name in enumerate(("no_sub", "cdm", "axion")):
        (tree / name).mkdir(parents=True)
        for i in range(c, N_IMAGES, 3):
            np.save(tree / name / f"{name}_sim_{i}.npy", images[i])
    return root


def test_random_batch_from_store(benchmark, image_set):
    array = open_store(image_set / "s.zarr")["train/images"]
    rng = np.random.default_rng(1)
    benchmark(lambda: read_rows(array, rng.choice(N_IMAGES, BATCH, replace=False)))
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats["median"]


def test_random_batch_from_npy_files(benchmark, image_set):
    files = sorted((image_set / "tree").rglob("*.npy"))
    rng = np.random.default_rng(1)
    benchmark(lambda: np.stack([np.load(files[i]) for i in rng.choice(len(files), BATCH)]))
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats["median"]


def test_import_npy_tree(benchmark, image_set, tmp_path):
    outs = iter(range(1000))
    benchmark.pedantic(
        lambda: import_tree(image_set / "tree", tmp_path / f"o{next(outs)}.zarr"),
        rounds=3,
        iterations=1,
    )
    benchmark.extra_info["files_per_s"] = N_IMAGES / benchmark.stats["median"]
