"""Batch reads from a store, opened lazily (so a reader can be pickled to worker processes),
with a small cache of decoded chunks: a window of chunks is decoded once, not once a batch."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from lensperf.errors import DataError
from lensperf.store import ARRAYS, CLASSIFICATION, open_store, read_rows

CACHE_CHUNKS = 16  # per array: two windows of 8 chunks


class StoreReader:
    def __init__(self, path: str | Path, split: str, kind: str | None = None):
        self.path = Path(path)
        self.split = split
        group = open_store(self.path, kind)  # fail early, in the main process
        self.kind = group.attrs["kind"]
        self.names = ARRAYS[self.kind]
        arrays = {name: group[f"{split}/{name}"] for name in self.names}
        self.length = int(arrays[self.names[0]].shape[0])
        self.chunk = int(arrays[self.names[0]].chunks[0])
        self.shapes = {name: tuple(a.shape[1:]) for name, a in arrays.items()}
        self._arrays = None
        self._small_arrays = None
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"], state["_small_arrays"], state["_cache"] = None, None, OrderedDict()
        return state

    @property
    def image_names(self) -> tuple[str, ...]:
        """The arrays that hold images (augmented and normalised); the rest are per-sample."""
        return ("images",) if self.kind == CLASSIFICATION else ("lr", "hr")

    def _open(self) -> dict:
        if self._arrays is None:
            group = open_store(self.path)
            self._arrays = {name: group[f"{self.split}/{name}"] for name in self.names}
        return self._arrays

    def _chunk(self, name: str, c: int) -> np.ndarray:
        key = (name, c)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rows = read_rows(self._open()[name], slice(c * self.chunk, (c + 1) * self.chunk))
        self._cache[key] = rows
        if len(self._cache) > CACHE_CHUNKS * len(self.names):
            self._cache.popitem(last=False)
        return rows

    def _small(self) -> dict[str, np.ndarray]:
        """Per-sample arrays (labels, masses: 12 bytes a sample) held whole: reading them chunk
        by chunk cost as many zarr calls as the images for 1/1000 of the bytes."""
        if self._small_arrays is None:
            self._small_arrays = {
                name: read_rows(self._open()[name], slice(None))
                for name in self.names
                if name not in self.image_names
            }
        return self._small_arrays

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """{array name: rows at `indices`} in the order given."""
        indices = np.asarray(indices, dtype=np.int64)
        chunk_of = indices // self.chunk
        out = {name: values[indices] for name, values in self._small().items()}
        for name in self.image_names:
            rows = np.empty((len(indices),) + self.shapes[name], dtype=self._open()[name].dtype)
            for c in np.unique(chunk_of):
                where = np.flatnonzero(chunk_of == c)
                rows[where] = self._chunk(name, int(c))[indices[where] - c * self.chunk]
            out[name] = rows
        return out

    def class_mask(self, classes: tuple[str, ...]) -> np.ndarray:
        """(n,) bool: samples whose class is one of `classes`."""
        if self.kind != CLASSIFICATION:
            raise DataError(f"{self.path} is an SR store: it has no classes to select")
        known = list(open_store(self.path).attrs["classes"])
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise DataError(f"unknown class {unknown[0]!r} (the store has {', '.join(known)})")
        wanted = [known.index(c) for c in classes]
        return np.isin(self._small()["labels"], wanted)

    def read_all(self) -> dict[str, np.ndarray]:
        return {name: read_rows(self._open()[name], slice(None)) for name in self.names}
