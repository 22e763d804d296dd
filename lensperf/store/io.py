"""Reading and writing stores: zarr v3 groups, written atomically, with checksummed chunks.

The layout is in `layout.py`. Each array is chunked along N only and checksummed with CRC32C,
so a damaged chunk raises DataError instead of being read as garbage. Chunks are stored raw
unless the writer is asked to compress them (Blosc-LZ4; see `_codecs` for why raw is the
default). Stores written with Blosc
(LZ4 or zstd, by earlier versions) read the same: the codecs are in each array's metadata.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync as zarr_sync

from lensperf.errors import DataError
from lensperf.store.layout import FORMAT_VERSION, LAYOUTS, SPLITS


def _codecs(compress: bool) -> list:
    # Lens images are noisy floats and compress poorly: Blosc-LZ4 with byte shuffle keeps 86%
    # of the bytes of DeepLense's own Model II images (zstd-3: 79.5%, decoding 3x slower). A
    # loader reads a 1 MiB chunk in 0.23 ms raw and 0.59 ms through LZ4, which put the torch
    # loader at 7.3x the per-file loader instead of 11.2x. So chunks are raw unless asked.
    if compress:
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()]
    return [Crc32cCodec()]


class StoreWriter:
    """Writes a store under a hidden temporary name and renames it into place on success.

    Use as a context manager: on any exception (KeyboardInterrupt included) the temporary store
    is removed and an existing store at `out` is left untouched. `compress` stores chunks with
    Blosc-LZ4 (14% smaller on lens images, 2.5x slower to read); by default they are raw.
    """

    def __init__(
        self, out: str | Path, *, kind: str, overwrite: bool = False, compress: bool = False
    ):
        self.out = Path(out)
        self.kind = kind
        self.overwrite = overwrite
        self.compress = compress
        check_output_path(self.out, overwrite)
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        self.group: zarr.Group | None = None

    def __enter__(self) -> StoreWriter:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.group = zarr.open_group(str(self.tmp), mode="w-")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            _wait_for_zarr_writes()
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self._commit()

    def set_attrs(self, **attrs: Any) -> None:
        self.group.attrs.update({"lensperf_format": FORMAT_VERSION, "kind": self.kind, **attrs})

    def create(
        self, split: str, name: str, shape: tuple[int, ...], dtype: str, chunk_len: int
    ) -> zarr.Array:
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        return self.group.create_array(
            f"{split}/{name}",
            shape=shape,
            chunks=(max(1, min(chunk_len, shape[0] or 1)),) + tuple(shape[1:]),
            dtype=dtype,
            compressors=_codecs(self.compress),
            fill_value=fill,
        )

    def _commit(self) -> None:
        old = None
        if self.out.exists():
            # Only reached with overwrite=True (checked on entry). Swap, then delete the old one.
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _wait_for_zarr_writes(timeout: float = 30.0) -> None:
    """Let writes still running on zarr's IO thread finish.

    An interrupt that lands while the main thread waits on a zarr write stops the wait, not the
    write: without this, chunk files written after the temporary store is removed recreate it.
    """

    async def others_done() -> None:
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=timeout)

    zarr_sync(others_done())


def check_output_path(out: Path, overwrite: bool) -> None:
    """Fail before any work if `out` cannot be written."""
    if out.suffix != ".zarr":
        raise DataError(f"output {out} must end in .zarr")
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists (pass --overwrite to replace it)")
    if out.exists() and not (out / "zarr.json").exists():
        raise DataError(f"{out} exists and is not a zarr store; refusing to replace it")


def open_store(path: str | Path, kind: str | None = None) -> zarr.Group:
    """Open a store for reading, checking that it is a complete lensperf store of `kind`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no dataset store at {path}")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as error:  # zarr raises several types for a directory that is no store
        raise DataError(f"{path} is not a zarr store ({type(error).__name__})") from None
    attrs = group.attrs.asdict()
    if attrs.get("lensperf_format") != FORMAT_VERSION:
        raise DataError(f"{path} is not a lensperf store (format {attrs.get('lensperf_format')!r})")
    store_kind = attrs.get("kind")
    if store_kind not in LAYOUTS:
        raise DataError(f"{path} has an unknown kind {store_kind!r}")
    if kind is not None and store_kind != kind:
        raise DataError(f"{path} is a {store_kind} store; this needs a {kind} store")
    for split in SPLITS:
        for name in LAYOUTS[store_kind].arrays:
            if f"{split}/{name}" not in group:
                raise DataError(f"{path} is incomplete: {split}/{name} is missing")
    return group


def split_length(group: zarr.Group, split: str) -> int:
    first = LAYOUTS[group.attrs["kind"]].arrays[0]
    return int(group[f"{split}/{first}"].shape[0])


def read_rows(array: zarr.Array, index: np.ndarray | slice) -> np.ndarray:
    """Rows of `array` (a slice, or sorted or unsorted integer indices), reading only the
    chunks that hold them. A checksum or decompression failure becomes a DataError."""
    try:
        if isinstance(index, slice):
            return array[index]
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        rows = array.get_orthogonal_selection((index[order],))
        out = np.empty_like(rows)
        out[order] = rows
        return out
    except (ValueError, RuntimeError) as error:
        raise DataError(f"damaged data in {array.store_path}: {error}") from None
