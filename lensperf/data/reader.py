"""Batch reads from a store, opened lazily (so a reader can be pickled to worker processes),
with a cache of decoded chunks: a window of chunks is decoded once, not once a batch.

Several threads may read at once (the loaders build batches ahead on threads): the cache hands
each chunk to the first thread that asks, and later askers wait for that decode instead of
repeating it. File reads, checksums and the compiled gather release the GIL, so the threads
overlap with the training step and with each other.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from lensperf.data.augment import gather
from lensperf.errors import DataError
from lensperf.store import (
    CLASSIFICATION,
    LAYOUTS,
    UNLABELLED,
    UNLABELLED_NAME,
    open_store,
    read_rows,
)
from lensperf.store.chunk_files import ChunkFiles

CACHE_CHUNKS = 48  # per array: six windows of 8 chunks, for batches being built ahead
PER_CLASS_DRAW = 0x1AB  # the seed of `per_class_mask`'s draw, fixed across runs


class StoreReader:
    def __init__(self, path: str | Path, split: str, kind: str | None = None):
        self.path = Path(path)
        self.split = split
        group = open_store(self.path, kind, splits=(split,))  # fail early, in this process
        self.kind = group.attrs["kind"]
        self.classes = list(group.attrs.get("classes") or [])
        self.layout = LAYOUTS[self.kind]
        self.names = self.layout.arrays
        arrays = {name: group[f"{split}/{name}"] for name in self.names}
        self.length = int(arrays[self.names[0]].shape[0])
        self.chunk = int(arrays[self.names[0]].chunks[0])
        self.shapes = {name: tuple(a.shape[1:]) for name, a in arrays.items()}
        self._arrays = None
        self._chunk_files = None
        self._small_arrays = None
        self._cache: OrderedDict[tuple[str, int], Future] = OrderedDict()
        self._lock = threading.Lock()
        if self.kind == CLASSIFICATION:
            self._small()  # damaged labels fail here, before any batch or worker

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"], state["_chunk_files"] = None, None
        state["_small_arrays"], state["_cache"] = None, OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _open(self) -> dict:
        if self._arrays is None:
            group = open_store(self.path)
            self._arrays = {name: group[f"{self.split}/{name}"] for name in self.names}
        return self._arrays

    def _direct(self) -> dict:
        """Direct chunk-file readers for the image arrays (None where zarr must read)."""
        with self._lock:
            if self._chunk_files is None:
                arrays = self._open()
                self._chunk_files = {n: ChunkFiles.for_array(arrays[n]) for n in self.layout.images}
            return self._chunk_files

    def _chunk(self, name: str, c: int) -> np.ndarray:
        key = (name, c)
        with self._lock:
            entry = self._cache.get(key)
            owner = entry is None
            if owner:
                entry = self._cache[key] = Future()
                if len(self._cache) > CACHE_CHUNKS * len(self.layout.images):
                    self._cache.popitem(last=False)  # holders of its future keep the rows
            else:
                self._cache.move_to_end(key)
        if owner:
            try:
                entry.set_result(self._decode(name, c))
            except BaseException as error:
                with self._lock:
                    self._cache.pop(key, None)  # let a later read try again
                entry.set_exception(error)
        return entry.result()

    def _decode(self, name: str, c: int) -> np.ndarray:
        direct = self._direct()[name]
        if direct is not None:
            return direct.read(c)
        return read_rows(self._open()[name], slice(c * self.chunk, (c + 1) * self.chunk))

    def _small(self) -> dict[str, np.ndarray]:
        """Per-sample arrays (labels, masses: 12 bytes a sample) held whole: reading them chunk
        by chunk cost as many zarr calls as the images for 1/1000 of the bytes."""
        if self._small_arrays is None:
            small = {
                name: read_rows(self._open()[name], slice(None))
                for name in self.names
                if name not in self.layout.images
            }
            if "labels" in small:
                self._check_labels(small["labels"])
            self._small_arrays = small
        return self._small_arrays

    def read(
        self,
        indices: np.ndarray,
        codes: np.ndarray | None = None,
        standardise: tuple[float, float] | None = None,
    ) -> dict[str, np.ndarray]:
        """{array name: rows at `indices`} in the order given, each image transformed by
        SYMMETRIES[codes[i]] when `codes` (augment.flag_codes) are given and standardised when
        `standardise` (mean, std) is: one compiled pass per chunk the batch touches."""
        indices = np.asarray(indices, dtype=np.int64)
        chunk_of = indices // self.chunk
        local = indices - chunk_of * self.chunk
        out = {name: values[indices] for name, values in self._small().items()}
        groups = []  # (chunk, positions in the batch, rows in the chunk, codes), shared by LR/HR
        for c in np.unique(chunk_of).tolist():
            where = np.flatnonzero(chunk_of == c)
            groups.append((c, where, local[where], None if codes is None else codes[where]))
        for name in self.layout.images:
            rows = np.empty((len(indices),) + self.shapes[name], dtype=self._open()[name].dtype)
            for c, where, in_chunk, some_codes in groups:
                gather(rows, self._chunk(name, c), where, in_chunk, some_codes, standardise)
            out[name] = rows
        return out

    def _check_labels(self, labels: np.ndarray) -> None:
        """A label that is neither a class index nor UNLABELLED is damage: it would be trained
        on as a wrong class or stop training at its first batch."""
        bad = labels[(labels < UNLABELLED) | (labels >= len(self.classes))]
        if bad.size:
            raise DataError(
                f"{self.path} is damaged: {self.split}/labels holds {int(bad[0])}, not a class "
                f"index (0-{len(self.classes) - 1}) or {UNLABELLED} (unlabelled)"
            )

    def _labels_and_classes(self, asked: str) -> tuple[np.ndarray, list[str]]:
        if self.kind != CLASSIFICATION:
            raise DataError(f"{self.path} is an SR store: it has no classes {asked}")
        return self._small()["labels"], self.classes

    def class_mask(self, classes: tuple[str, ...]) -> np.ndarray:
        """(n,) bool: samples whose class is one of `classes` ("unlabelled": those without)."""
        labels, known = self._labels_and_classes("to select")
        names = [*known, UNLABELLED_NAME]
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DataError(f"unknown class {unknown[0]!r} (the store has {', '.join(names)})")
        codes = [UNLABELLED if c == UNLABELLED_NAME else known.index(c) for c in classes]
        return np.isin(labels, codes)

    def labelled_mask(self) -> np.ndarray | None:
        """(n,) bool: samples with a label; None where every sample has one, and in SR stores
        (which have no labels to need)."""
        if self.kind != CLASSIFICATION:
            return None
        labelled = self._small()["labels"] != UNLABELLED
        return None if labelled.all() else labelled

    def per_class_mask(self, n: int) -> np.ndarray:
        """(n,) bool: `n` samples of each class, drawn once with a fixed seed, so that every run
        and every `runtime.seed` trains on the same labelled images (a study of few labels).
        Unlabelled samples are never drawn."""
        labels, known = self._labels_and_classes("to draw from")
        keep, rng = np.zeros(len(labels), bool), np.random.default_rng(PER_CLASS_DRAW)
        for k, name in enumerate(known):
            members = np.flatnonzero(labels == k)
            if len(members) < n:
                raise DataError(f"labels_per_class={n}: class {name} has only {len(members)} "
                                f"{self.split} images in {self.path}")  # fmt: skip
            keep[rng.choice(members, n, replace=False)] = True
        return keep

    def read_all(self) -> dict[str, np.ndarray]:
        return {name: read_rows(self._open()[name], slice(None)) for name in self.names}
