"""Reading and writing stores: zarr v3 groups, written atomically, with checksummed chunks.

The layout is in `layout.py`. Each array is chunked along N only and checksummed with CRC32C,
so a damaged chunk raises DataError instead of being read as garbage. Chunks are stored raw
unless the writer is asked to compress them (Blosc-LZ4; see `_codecs` for why raw is the
default). Stores written with Blosc
(LZ4 or zstd, by earlier versions) read the same: the codecs are in each array's metadata.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync as zarr_sync
from zarr.storage import LocalStore

from lensperf.atomic import remove_stale_temporaries, replace_folder, temporary_sibling
from lensperf.errors import DataError
from lensperf.store.layout import (
    ALL_CHUNKS_WRITTEN,
    CLASSIFICATION,
    FORMAT_VERSION,
    LAYOUTS,
    SPLITS,
)


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
        self.tmp = temporary_sibling(self.out)
        self.group: zarr.Group | None = None
        self._arrays: list[zarr.Array] = []

    def __enter__(self) -> StoreWriter:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        for stale in remove_stale_temporaries(self.out.parent, self.out.name):
            print(f"lensperf: removed {stale}, left by a write that was killed", file=sys.stderr)
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
        self.group.attrs.update({
            "lensperf_format": FORMAT_VERSION, "kind": self.kind, ALL_CHUNKS_WRITTEN: True, **attrs
        })  # fmt: skip

    def create(
        self, split: str, name: str, shape: tuple[int, ...], dtype: str, chunk_len: int
    ) -> zarr.Array:
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        array = self.group.create_array(
            f"{split}/{name}",
            shape=shape,
            chunks=(max(1, min(chunk_len, shape[0] or 1)),) + tuple(shape[1:]),
            dtype=dtype,
            compressors=_codecs(self.compress),
            fill_value=fill,
            # Every chunk on disk, even one equal to the fill value (zarr leaves those out by
            # default): a missing chunk file is then damage, never data.
            config={"write_empty_chunks": True},
        )
        self._arrays.append(array)
        return array

    def _commit(self) -> None:
        written = {array.path.split("/")[0] for array in self._arrays}
        self.group.attrs["splits"] = [split for split in SPLITS if split in written]
        _wait_for_zarr_writes()
        for array in self._arrays:  # a writer that skipped rows must not leave a store behind
            if missing_chunks(array):
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise RuntimeError(f"{array.path}: rows were never written; no store was made")
        replace_folder(self.tmp, self.out)  # replaces a store only with overwrite=True


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


def store_splits(group: zarr.Group) -> list[str]:
    """The splits a store holds (stores from before the `splits` attribute hold train, val)."""
    return list(group.attrs.get("splits") or [s for s in SPLITS if s in group])


def open_store(
    path: str | Path, kind: str | None = None, *, splits: tuple[str, ...] = ()
) -> zarr.Group:
    """Open a store for reading, checking that it is a complete lensperf store of `kind` that
    holds `splits`."""
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
    layout = LAYOUTS[store_kind]
    present = store_splits(group)
    for split in splits:
        if split not in present:
            raise DataError(f"{path} has no {split} split (it holds {', '.join(present)})")
    for split in present:
        for name in layout.arrays:
            if f"{split}/{name}" not in group:
                raise DataError(f"{path} is incomplete: {split}/{name} is missing")
            # Stores from before ALL_CHUNKS_WRITTEN may leave out chunks of labels equal to the
            # fill value; an image chunk is never all NaN, so missing ones are damage anywhere.
            if attrs.get(ALL_CHUNKS_WRITTEN) or name in layout.images:
                missing = missing_chunks(group[f"{split}/{name}"])
                if missing:
                    raise DataError(
                        f"{path} is damaged: {len(missing)} chunk file(s) of {split}/{name} are "
                        f"missing, first {missing[0]}; simulate or import the store again"
                    )
    return group


def missing_chunks(array: zarr.Array) -> list[Path]:
    """The chunk files of a store on local disk that should hold `array`'s rows but do not
    exist (none for other stores, which zarr reads its own way)."""
    if not isinstance(array.store, LocalStore) or array.shape[0] == 0:
        return []
    directory = Path(array.store.root) / array.path
    encode = array.metadata.chunk_key_encoding.encode_chunk_key
    zeros = (0,) * (len(array.shape) - 1)
    n_chunks = -(-array.shape[0] // array.chunks[0])
    keys = (directory / encode((c, *zeros)) for c in range(n_chunks))
    return [key for key in keys if not key.is_file()]


def preprocessing(group: zarr.Group) -> dict:
    """How the store's images were made from their source files, for a model to do the same to
    new files: `minmax` (each image scaled by its own min and max, as the simulator and
    `import --normalise` do) and the image size a model is trained on."""
    attrs = group.attrs.asdict()
    steps = attrs.get("preprocessing")
    if steps is None:  # stores from before this attribute
        simulated = str(attrs.get("source", "")).startswith("simulated")
        steps = {"minmax": simulated or bool(attrs.get("config", {}).get("normalise"))}
    size = attrs.get("image_size") if attrs["kind"] == CLASSIFICATION else attrs.get("lr_size")
    return {**steps, "image_size": size}


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
