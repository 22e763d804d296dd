import asyncio
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.sync import _get_loop as zarr_sync_loop

from lensperf.errors import DataError
from lensperf.store import (
    CLASSIFICATION,
    SR,
    StoreWriter,
    chunk_length,
    open_store,
    read_rows,
    split_length,
)


def write_store(
    out: Path, n: int = 200, size: int = 16, chunk: int = 32, compress: bool = False
) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.random((n, 1, size, size), dtype=np.float32)
    with StoreWriter(out, kind=CLASSIFICATION, compress=compress) as writer:
        writer.set_attrs(classes=["no_sub", "cdm", "axion"], image_size=size, source="test")
        for split, rows in (("train", images), ("val", images[:10])):
            writer.create(split, "images", rows.shape, "float32", chunk)[:] = rows
            writer.create(split, "labels", (len(rows),), "int64", chunk)[:] = (
                np.arange(len(rows)) % 3
            )
            writer.create(split, "axion_mass", (len(rows),), "float32", chunk)[:] = np.nan
    return images


def chunk_files(store: Path, array: str) -> list[Path]:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())


def test_round_trip_and_random_reads(tmp_path):
    out = tmp_path / "s.zarr"
    images = write_store(out)
    group = open_store(out, CLASSIFICATION)
    assert split_length(group, "train") == 200 and split_length(group, "val") == 10
    np.testing.assert_array_equal(read_rows(group["train/images"], slice(None)), images)
    idx = np.array([150, 3, 77, 3, 199])  # unsorted, repeated
    np.testing.assert_array_equal(read_rows(group["train/images"], idx), images[idx])
    assert np.isnan(read_rows(group["train/axion_mass"], slice(None))).all()


def test_flipped_byte_is_reported(tmp_path):
    out = tmp_path / "s.zarr"
    write_store(out)
    victim = chunk_files(out, "train/images")[2]  # rows 64..95
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    group = open_store(out)
    read_rows(group["train/images"], slice(0, 64))  # other chunks still read
    with pytest.raises(DataError, match="damaged data"):
        read_rows(group["train/images"], slice(64, 96))
    with pytest.raises(DataError, match="damaged data"):
        read_rows(group["train/images"], np.array([5, 70]))


def test_a_batch_touches_only_its_chunks(tmp_path):
    out = tmp_path / "s.zarr"
    images = write_store(out, n=256, chunk=32)
    batch = np.array([1, 40, 41, 250])  # chunks 0, 1 and 7
    needed = {0, 1, 7}
    for i, path in enumerate(chunk_files(out, "train/images")):
        if i not in needed:
            path.write_bytes(b"garbage")  # any read of these would fail its checksum
    np.testing.assert_array_equal(read_rows(open_store(out)["train/images"], batch), images[batch])


@pytest.mark.parametrize("compress", [False, True])
def test_chunks_are_raw_plus_checksum_unless_compressed(tmp_path, compress):
    out = tmp_path / "s.zarr"
    y, x = np.indices((64, 64))
    r = np.hypot(y - 31.5, x - 31.5)
    rings = np.stack([np.exp(-0.5 * ((r - 10 - k % 5) / 2) ** 2) for k in range(256)])
    with StoreWriter(out, kind=CLASSIFICATION, compress=compress) as writer:
        writer.create("train", "images", (256, 1, 64, 64), "float32", 64)[:] = rings[:, None]
    stored = sum(p.stat().st_size for p in chunk_files(out, "train/images"))
    raw = rings.astype(np.float32).nbytes + 4 * 4  # 4 chunks, each with a 4-byte CRC32C
    assert stored < raw if compress else stored == raw


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError):
        with StoreWriter(out, kind=CLASSIFICATION) as writer:
            writer.create("train", "images", (10, 1, 4, 4), "float32", 4)[:] = 0.5
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_a_zarr_write_leaves_nothing(tmp_path):
    # An interrupt stops the main thread's wait on a zarr write, not the write itself, which
    # goes on in zarr's IO thread; started here without waiting, as the interrupt leaves it.
    out = tmp_path / "s.zarr"
    images = np.random.default_rng(0).random((2048, 1, 64, 64), dtype=np.float32)
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(out, kind=CLASSIFICATION) as writer:
            array = writer.create("train", "images", images.shape, "float32", 64)
            write = asyncio.run_coroutine_threadsafe(
                array._async_array.setitem(slice(None), images), zarr_sync_loop()
            )
            raise KeyboardInterrupt
    assert write.done()  # the writer waited for it before removing the temporary store
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_store(tmp_path):
    out = tmp_path / "s.zarr"
    images = write_store(out)
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(out, kind=CLASSIFICATION, overwrite=True) as writer:
            writer.create("train", "images", (10, 1, 4, 4), "float32", 4)
            raise KeyboardInterrupt
    np.testing.assert_array_equal(open_store(out)["train/images"][:], images)
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "s.zarr"
    write_store(out)
    with pytest.raises(DataError, match="--overwrite"):
        StoreWriter(out, kind=CLASSIFICATION)
    write_store_again = StoreWriter(out, kind=CLASSIFICATION, overwrite=True)
    assert write_store_again.out == out
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(DataError, match="not a zarr store"):
        StoreWriter(tmp_path / "plain.zarr", kind=CLASSIFICATION, overwrite=True)
    with pytest.raises(DataError, match="must end in .zarr"):
        StoreWriter(tmp_path / "s.npy", kind=CLASSIFICATION)


def test_open_store_errors(tmp_path):
    with pytest.raises(DataError, match="no dataset store"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(DataError, match="not a"):
        open_store(tmp_path / "empty.zarr")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(DataError, match="not a lensperf store"):
        open_store(tmp_path / "foreign.zarr")
    out = tmp_path / "s.zarr"
    write_store(out)
    with pytest.raises(DataError, match="classification store; this needs a sr store"):
        open_store(out, SR)


def test_chunk_length_targets_a_megabyte():
    assert chunk_length((1, 64, 64)) == 64  # 16 KiB images
    assert chunk_length((1, 150, 150)) == 8  # 88 KiB images
    assert chunk_length((1, 2048, 2048)) == 1
