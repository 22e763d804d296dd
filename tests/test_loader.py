import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lensperf.data import make_loader
from lensperf.data.augment import apply_flags, flag_codes, gather, take
from lensperf.data.dali_backend import DaliLoader
from lensperf.data.plan import EpochPlan
from lensperf.data.reader import StoreReader
from lensperf.errors import DataError
from lensperf.store import CLASSIFICATION, SR, StoreWriter

N, SIZE, CHUNK = 203, 8, 8  # many small chunks, a ragged last one


def synthetic_store(path: Path, kind: str = CLASSIFICATION) -> Path:
    rng = np.random.default_rng(0)
    with StoreWriter(path, kind=kind) as w:
        if kind == CLASSIFICATION:
            w.set_attrs(classes=["no_sub", "cdm", "axion"], image_size=SIZE, source="test")
        else:
            w.set_attrs(lr_size=SIZE, hr_size=2 * SIZE, factor=2, source="test")
        for split, n in (("train", N), ("val", 20)):
            if kind == CLASSIFICATION:
                w.create(split, "images", (n, 1, SIZE, SIZE), "float32", CHUNK)[:] = rng.random(
                    (n, 1, SIZE, SIZE), dtype=np.float32
                )
                w.create(split, "labels", (n,), "int64", CHUNK)[:] = rng.integers(0, 3, n)
                w.create(split, "axion_mass", (n,), "float32", CHUNK)[:] = np.nan
            else:
                hr = rng.random((n, 1, 2 * SIZE, 2 * SIZE), dtype=np.float32)
                w.create(split, "hr", hr.shape, "float32", CHUNK)[:] = hr
                lr = hr.reshape(n, 1, SIZE, 2, SIZE, 2).mean(axis=(3, 5))
                w.create(split, "lr", lr.shape, "float32", CHUNK)[:] = lr
    return path


@pytest.fixture(scope="module")
def cls_store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("d") / "c.zarr")


@pytest.fixture(scope="module")
def sr_store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("d") / "s.zarr", SR)


def indices(loader) -> np.ndarray:
    return np.concatenate([b["index"].numpy() for b in loader])


def test_every_sample_exactly_once_per_epoch(cls_store):
    loader = make_loader(cls_store, "train", batch_size=16, backend="memory", seed=3)
    assert len(loader) == -(-N // 16)
    first, second = indices(loader), indices(loader)
    assert sorted(first.tolist()) == list(range(N)) == sorted(second.tolist())
    assert not np.array_equal(first, second)  # a new order each epoch
    again = make_loader(cls_store, "train", batch_size=16, backend="memory", seed=3)
    assert np.array_equal(indices(again), first)  # the same order for the same seed
    other = make_loader(cls_store, "train", batch_size=16, backend="memory", seed=4)
    assert not np.array_equal(indices(other), first)


@pytest.mark.parametrize("backend", ["memory", "torch"])
def test_labels_per_class_draws_the_same_images_for_every_seed(cls_store, backend):
    """`per_class` keeps that many samples of each class, drawn once: every epoch and every seed
    trains on the same ones, each visited once an epoch; a class with fewer is refused."""
    labels = StoreReader(cls_store, "train").read_all()["labels"]
    seen = []
    for seed in (0, 5):
        loader = make_loader(cls_store, "train", batch_size=4, backend=backend, seed=seed,
                             per_class=7)  # fmt: skip
        for _ in range(2):
            got = indices(loader)
            assert len(got) == len(set(got.tolist())) == 21
            assert np.bincount(labels[got], minlength=3).tolist() == [7, 7, 7]
            seen.append(sorted(got.tolist()))
    assert all(s == seen[0] for s in seen)
    first = sorted(np.concatenate([np.flatnonzero(labels == k)[:7] for k in range(3)]).tolist())
    assert seen[0] != first  # a draw, not the store's first images (an import is sorted by name)
    fewest = np.bincount(labels).min()
    with pytest.raises(DataError, match=f"labels_per_class={fewest + 1}: class .* has only"):
        make_loader(cls_store, "train", batch_size=4, per_class=fewest + 1)


def test_order_is_chunk_local():
    plan = EpochPlan(n=10_000, chunk=64, batch_size=256, seed=0)
    order = plan.order(0)
    for b in range(len(plan)):
        chunks = np.unique(plan.batch_indices(0, b, order) // 64)
        assert len(chunks) <= 2 * 8  # a batch spans at most two windows of 8 chunks


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_disjoint_and_cover_the_split(cls_store, drop_last):
    shards = [
        indices(make_loader(cls_store, "train", batch_size=10, backend="memory", seed=1,
                            shard_id=s, num_shards=3, drop_last=drop_last))
        for s in range(3)
    ]  # fmt: skip
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union)  # disjoint
    if drop_last:
        assert len({len(s) for s in shards}) == 1  # equal batches per rank
    else:
        assert sorted(union.tolist()) == list(range(N))


def test_mid_epoch_state_round_trip(cls_store):
    def loader():
        return make_loader(
            cls_store, "train", batch_size=16, backend="memory", seed=2, augment=True
        )

    full = loader()
    next(iter(full))  # finish epoch 0 partially, then run the rest
    reference = [b for _, b in zip(range(30), _batches_forever(full))]

    interrupted = loader()
    it = iter(interrupted)
    next(it)
    taken = [next(it) for _ in range(5)]
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [b for _, b in zip(range(25), _batches_forever(resumed))]
    for got, want in zip(taken + rest, reference):
        assert all(torch.equal(got[k], want[k]) for k in want)


def _batches_forever(loader):
    while True:
        yield from loader


def test_state_for_another_seed_is_refused(cls_store):
    loader = make_loader(cls_store, "train", batch_size=16, backend="memory", seed=2)
    with pytest.raises(DataError, match="seed 5"):
        loader.load_state_dict({"epoch": 0, "batch": 1, "seed": 5})


def test_classification_augmentation_keeps_labels(cls_store):
    reader = StoreReader(cls_store, "train")
    stored = reader.read_all()
    loader = make_loader(cls_store, "train", batch_size=32, backend="memory", augment=True, seed=7)
    changed = 0
    for batch in loader:
        idx = batch["index"].numpy()
        assert np.array_equal(batch["label"].numpy(), stored["labels"][idx])
        for image, original in zip(batch["image"].numpy(), stored["images"][idx]):
            assert _symmetry_of(image, original) is not None
            changed += not np.array_equal(image, original)
    assert changed > N // 2  # 7 of 8 symmetries change a random image


def test_sr_pairs_get_the_same_symmetry(sr_store):
    stored = StoreReader(sr_store, "train").read_all()
    loader = make_loader(sr_store, "train", batch_size=32, backend="memory", augment=True)
    for batch in loader:
        idx = batch["index"].numpy()
        for lr, hr, i in zip(batch["lr"].numpy(), batch["hr"].numpy(), idx):
            g = _symmetry_of(lr, stored["lr"][i])
            assert g is not None and np.array_equal(hr, apply_flags(stored["hr"][i][None], g)[0])


def _symmetry_of(image, original):
    for code in range(8):
        flags = np.array([[code & 1, (code >> 1) & 1, (code >> 2) & 1]], np.uint8)
        if np.array_equal(apply_flags(original[None], flags)[0], image):
            return flags
    return None


@pytest.mark.parametrize("standardise", [None, (0.25, 0.3)])
def test_symmetries_match_per_image_numpy(standardise):
    images = np.random.default_rng(1).random((64, 2, 5, 5), dtype=np.float32)
    flags = np.array([[c >> 2 & 1, c >> 1 & 1, c & 1] for c in range(8)] * 8, np.uint8)
    order = np.random.default_rng(2).permutation(64)
    images, flags = images[order], flags[order]
    rows = np.random.default_rng(3).permutation(64)  # gathered out of order, as from a chunk
    got = take(images, rows, flag_codes(flags), standardise)
    for r, (flip_h, flip_v, transpose), out in zip(rows, flags, got):
        want = np.flip(images[r], 2) if flip_h else images[r]
        want = np.flip(want, 1) if flip_v else want
        want = np.swapaxes(want, 1, 2) if transpose else want
        if standardise is not None:
            want = (want - np.float32(0.25)) * (np.float32(1) / np.float32(0.3))
        assert out.dtype == np.float32 and np.array_equal(out, want)
    assert len({out.tobytes() for out in got}) == 64  # eight distinct symmetries of each


def test_symmetries_of_non_square_images_are_refused():
    images = np.zeros((4, 1, 6, 5), np.float32)
    assert take(images, np.arange(4), np.array([0, 2, 4, 6])).shape == (4, 1, 6, 5)  # flips
    with pytest.raises(DataError, match="square"):
        take(images, np.arange(4), np.array([0, 1, 0, 0]))


def test_gather_checks_every_index():
    src, out = np.zeros((5, 1, 4, 4), np.float32), np.zeros((3, 1, 4, 4), np.float32)
    ok = dict(positions=np.arange(3), rows=np.arange(3), codes=np.zeros(3, int))
    for name, bad in [("rows", [0, 1, 5]), ("rows", [-1, 0, 1]), ("positions", [0, 1, 3]),
                      ("codes", [0, 8, 0])]:  # fmt: skip
        args = {**ok, name: np.array(bad)}
        with pytest.raises(DataError, match="out of range"):
            gather(out, src, args["positions"], args["rows"], args["codes"], None)
    with pytest.raises(DataError, match="alike"):
        gather(out, np.zeros((5, 1, 4, 3), np.float32), *ok.values(), None)


@pytest.mark.parametrize("augment", [False, True])
def test_store_reads_match_numpy(cls_store, augment):
    reader = StoreReader(cls_store, "train")
    indices = np.random.default_rng(3).permutation(reader.length)[:40]
    flags = np.random.default_rng(4).integers(0, 2, (40, 3), dtype=np.uint8)
    codes = flag_codes(flags) if augment else None
    got = reader.read(indices, codes, standardise=(0.5, 2.0))
    stored = reader.read_all()
    want = stored["images"][indices]
    want = (apply_flags(want, flags) if augment else want) - np.float32(0.5)
    assert np.array_equal(got["images"], want * np.float32(0.5))
    assert np.array_equal(got["labels"], stored["labels"][indices])


def _make(store, backend, workers, **kw):
    """make_loader, plus "dali-graph": DALI with its graph's operators (the GPU path) on CPU."""
    if backend != "dali-graph":
        return make_loader(store, "train", backend=backend, num_workers=workers, **kw)
    reader = StoreReader(store, "train")
    plan = EpochPlan(n=reader.length, chunk=reader.chunk, batch_size=kw.pop("batch_size"),
                     seed=kw.pop("seed", 0))  # fmt: skip
    return DaliLoader(reader, plan, num_workers=workers, graph_ops=True, **kw)


@pytest.mark.parametrize(
    "backend, workers", [("torch", 0), ("torch", 2), ("dali", 2), ("dali-graph", 1)]
)
def test_backends_give_the_same_samples(cls_store, backend, workers):
    kw = dict(batch_size=32, seed=9, augment=True, standardise=(0.5, 0.3))
    loader = _make(cls_store, backend, workers, **dict(kw))
    for epoch in range(2):
        got, want = list(loader), list(_epoch(cls_store, epoch, **kw))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            assert all(torch.equal(g[k], w[k]) for k in w), (backend, epoch)
    loader.close()


def _epoch(store, epoch, **kw):
    loader = make_loader(store, "train", backend="memory", **kw)
    loader.set_epoch(epoch)
    return loader


@pytest.mark.parametrize("backend", ["dali", "dali-graph"])
def test_dali_sr_batches(sr_store, backend):
    kw = dict(batch_size=16, augment=True, seed=2)
    loader = _make(sr_store, backend, 1, **dict(kw))
    want = list(make_loader(sr_store, "train", backend="memory", **kw))
    got = list(loader)
    assert got[0]["lr"].shape == (16, 1, SIZE, SIZE) and got[0]["hr"].shape == (16, 1, 16, 16)
    assert len(got) == len(want)
    assert all(torch.equal(g[k], w[k]) for g, w in zip(got, want) for k in w)
    loader.close()


def test_missing_and_wrong_kind(cls_store, tmp_path):
    with pytest.raises(DataError, match="no dataset store"):
        make_loader(tmp_path / "none.zarr", "train", batch_size=4)
    with pytest.raises(DataError, match="classification store; this needs a sr store"):
        make_loader(cls_store, "train", batch_size=4, kind="sr")
    with pytest.raises(DataError, match="unknown loader backend"):
        make_loader(cls_store, "train", batch_size=4, backend="fast")
    with pytest.raises(DataError, match="batch_size"):
        make_loader(cls_store, "train", batch_size=0)


@pytest.mark.parametrize(
    "backend, workers", [("memory", 0), ("torch", 0), ("torch", 2), ("dali", 2)]
)
def test_damaged_chunk_is_reported(tmp_path, backend, workers):
    store = synthetic_store(tmp_path / "c.zarr")
    victim = next(p for p in sorted((store / "train" / "images" / "c").rglob("*")) if p.is_file())
    victim.write_bytes(victim.read_bytes()[:-3] + b"xyz")
    with pytest.raises(DataError, match="damaged"):
        loader = make_loader(store, "train", batch_size=16, backend=backend, num_workers=workers)
        list(loader)


class DyingReader(StoreReader):
    def read(self, indices):
        os._exit(3)  # a worker killed mid-epoch (OOM killer, segfault)


def test_dead_worker_gives_a_clear_error(cls_store):
    # The torch backend's workers are threads of this process; DALI's worker is a process.
    reader = DyingReader(cls_store, "train")
    loader = DaliLoader(reader, EpochPlan(n=reader.length, chunk=CHUNK, batch_size=8))
    with pytest.raises(DataError, match="data loading failed"):
        list(loader)


def test_prefetcher_hands_out_in_order_and_restarts_on_a_jump():
    from lensperf.data.prefetch import Prefetcher

    built = []

    def build(key):
        built.append(key)
        return {"key": key}

    plan = EpochPlan(n=40, chunk=8, batch_size=10)  # 4 batches an epoch
    prefetcher = Prefetcher(build, plan.next_key, threads=2, depth=3)
    keys = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    assert [prefetcher.get(k)["key"] for k in keys] == keys
    assert prefetcher.get((5, 2))["key"] == (5, 2)  # not built ahead: dropped, started again
    assert prefetcher.get((5, 3))["key"] == (5, 3)
    assert set(prefetcher._pending) == {(6, 0), (6, 1), (6, 2)}  # across the epoch boundary
    prefetcher.close()
    assert set(keys) <= set(built) and built.count((0, 0)) == 1  # each built once


def test_prefetcher_passes_a_build_error_to_its_batch():
    from lensperf.data.prefetch import Prefetcher

    def build(key):
        if key == (0, 2):
            raise DataError("damaged data in chunk 3")
        return {"key": key}

    prefetcher = Prefetcher(build, lambda k: (k[0], k[1] + 1), threads=2)
    assert prefetcher.get((0, 0))["key"] == (0, 0) and prefetcher.get((0, 1))["key"] == (0, 1)
    with pytest.raises(DataError, match="chunk 3"):
        prefetcher.get((0, 2))
    prefetcher.close()
