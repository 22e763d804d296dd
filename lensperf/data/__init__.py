"""Data loading: `make_loader` over a store, with the DALI or the torch backend."""

from __future__ import annotations

from pathlib import Path

import torch

from lensperf.data.loader import Loader
from lensperf.data.plan import EpochPlan
from lensperf.data.reader import StoreReader
from lensperf.errors import DataError
from lensperf.store import SPLITS

BACKENDS = ("dali", "torch", "memory")


def make_loader(
    store: str | Path,
    split: str,
    *,
    batch_size: int,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    shuffle: bool = True,
    augment: bool = False,
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    drop_last: bool = False,
    kind: str | None = None,
    num_workers: int = 0,
    standardise: tuple[float, float] | None = None,
    classes: tuple[str, ...] = (),
    per_class: int = 0,
    unlabelled: bool = True,
) -> Loader:
    """An iterable of batches (dicts of tensors on `device`) over `split` of `store`.

    backend: "dali" (a DALI pipeline fed by a parallel worker process building batches on
    `num_workers` threads), "torch" (batches built in this process, `num_workers` threads
    ahead; 0: when asked for) or "memory" (the whole split in RAM, built the same way).
    Every backend gives the same samples in the same order for the same seed. `classes`
    restricts a classification split to those classes (empty: all), and `per_class` to that many
    samples of each class, the same ones every time (0: all); `unlabelled=False` leaves out the
    images without a label (label -1; a classifier's cross-entropy and evaluation need labels).
    `standardise=(mean, std)`
    maps every image x to (x - mean) / std as the batch is gathered.
    """
    if backend not in BACKENDS:
        raise DataError(f"unknown loader backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} ({' or '.join(SPLITS)})")
    reader = StoreReader(store, split, kind)
    keep = reader.class_mask(classes) if classes else None
    if per_class:
        drawn = reader.per_class_mask(per_class)
        keep = drawn if keep is None else keep & drawn
    labelled = None if unlabelled else reader.labelled_mask()
    if labelled is not None:
        keep = labelled if keep is None else keep & labelled
    try:
        plan = EpochPlan(
            n=reader.length, chunk=reader.chunk, batch_size=batch_size, seed=seed,
            shuffle=shuffle, shard_id=shard_id, num_shards=num_shards, drop_last=drop_last,
            keep=keep,
        )  # fmt: skip
    except ValueError as error:
        raise DataError(str(error)) from None
    common = dict(device=device, augment=augment, standardise=standardise)
    if backend == "dali":
        from lensperf.data.dali_backend import DaliLoader

        return DaliLoader(reader, plan, num_workers=max(1, num_workers), **common)
    from lensperf.data.torch_backend import TorchLoader

    return TorchLoader(
        reader, plan, num_workers=num_workers, in_memory=backend == "memory", **common
    )
