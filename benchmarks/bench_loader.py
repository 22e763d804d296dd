"""Loader throughput (images/s, batches of 256) per backend, side by side with a plain torch
DataLoader over one .npy file per image (the way DeepLense code loads today).

Targets on a 2-core CPU: >= 10x the per-file loader, and >= 3x what MAE pretraining consumes.
Both sides run with and without augmentation (the per-file loader then flips each image in
numpy, as a DeepLense transform would), and the run ends with a table of each lensperf
backend's rate over the per-file loader's best, like for like.
"""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lensperf.data import make_loader
from lensperf.store import CLASSIFICATION, SR, StoreWriter, chunk_length

N_CLS, N_SR, BATCH = 8192, 1024, 256
ROUNDS = 7  # epochs per loader, median taken: with 3, one stall on this shared machine could
# move a rate by a third
RATES: dict[tuple, float] = {}  # (task, loader, workers, augment) -> images/s


def _rings(n, size, rng):
    """Rings with noise: noise-free rings compress far better than lens images do."""
    y, x = np.indices((size, size))
    r = np.hypot(y - (size - 1) / 2, x - (size - 1) / 2)
    radii = rng.uniform(0.15, 0.2, n) * size
    rings = np.exp(-0.5 * ((r[None] - radii[:, None, None]) / 2) ** 2)
    noisy = rings + rng.normal(0, 0.01, rings.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)[:, None]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    images = _rings(N_CLS, 64, rng)
    with StoreWriter(root / "cls.zarr", kind=CLASSIFICATION) as w:
        w.set_attrs(classes=["no_sub", "cdm", "axion"], image_size=64, source="bench")
        for split, n in (("train", N_CLS), ("val", 0)):
            c = chunk_length((1, 64, 64))
            w.create(split, "images", (n, 1, 64, 64), "float32", c)[:] = images[:n]
            w.create(split, "labels", (n,), "int64", c)[:] = np.arange(n) % 3
            w.create(split, "axion_mass", (n,), "float32", c)
    hr = _rings(N_SR, 150, rng)
    with StoreWriter(root / "sr.zarr", kind=SR) as w:
        w.set_attrs(lr_size=75, hr_size=150, factor=2, source="bench")
        for split, n in (("train", N_SR), ("val", 0)):
            c = chunk_length((1, 150, 150))
            w.create(split, "hr", (n, 1, 150, 150), "float32", c)[:] = hr[:n]
            lr = hr[:n].reshape(n, 1, 75, 2, 75, 2).mean(axis=(3, 5))
            w.create(split, "lr", (n, 1, 75, 75), "float32", c)[:] = lr
    files = root / "npy"
    files.mkdir()
    for i in range(N_CLS):
        np.save(files / f"img_{i}.npy", images[i, 0].astype(np.float64))
    return root


class PerFileNpy(Dataset):
    def __init__(self, root, augment: bool):
        self.files = sorted(root.glob("*.npy"))
        self.augment = augment

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        image = np.load(self.files[i]).astype(np.float32)
        if self.augment:  # the eight symmetries, as torchvision-style random flips would
            flip_h, flip_v, transpose = np.random.randint(0, 2, 3)
            image = image[:, ::-1] if flip_h else image
            image = image[::-1] if flip_v else image
            image = np.ascontiguousarray(image.T if transpose else image)
        return torch.from_numpy(image)[None], i % 3


def _epoch_rate(benchmark, make, n, key):
    loader = make()

    def epoch():
        for _ in loader:
            pass

    benchmark.pedantic(epoch, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = RATES[key] = n / benchmark.stats["median"]
    if hasattr(loader, "close"):
        loader.close()


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_per_file_npy_dataloader(benchmark, stores, workers, augment):
    def make():
        return DataLoader(PerFileNpy(stores / "npy", augment), batch_size=BATCH, shuffle=True,
                          num_workers=workers, persistent_workers=workers > 0)  # fmt: skip

    _epoch_rate(benchmark, make, N_CLS, ("classification", "per-file npy", workers, augment))


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize(
    "backend, workers", [("memory", 0), ("torch", 0), ("torch", 2), ("dali", 2)]
)
@pytest.mark.parametrize("task", ["classification", "sr"])
def test_lensperf_loader(benchmark, stores, backend, workers, task, augment):
    store = stores / ("cls.zarr" if task == "classification" else "sr.zarr")
    n = N_CLS if task == "classification" else N_SR

    def make():
        return make_loader(store, "train", batch_size=BATCH, backend=backend,
                           num_workers=workers, augment=augment, seed=0)  # fmt: skip

    _epoch_rate(benchmark, make, n, (task, backend, workers, augment))


@pytest.fixture(scope="module", autouse=True)
def ratio_table(request):
    """After the module: each lensperf loader over the per-file loader's best, like for like."""
    yield
    plugins = request.config.pluginmanager
    report, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if report is None or capture is None or not RATES:
        return
    lines = ["", "loader | workers | augment | images/s | x best per-file npy (same augment)"]
    for (task, name, workers, augment), rate in sorted(RATES.items(), key=str):
        base = max(
            (r for (t, n, _, a), r in RATES.items() if n == "per-file npy" and a == augment),
            default=None,
        )
        ratio = f"{rate / base:.1f}x" if base and task == "classification" else "-"
        lines.append(f"{task} {name} | {workers} | {augment} | {rate:,.0f} | {ratio}")
    with capture.global_and_fixture_disabled():
        for line in lines:
            report.write_line(line)
