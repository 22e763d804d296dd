"""The direct chunk-file reader against zarr's own reads of the same arrays."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from lensperf.data.reader import StoreReader
from lensperf.errors import DataError
from lensperf.store.chunk_files import ChunkFiles
from tests.test_store import write_store


def _images(store):
    return zarr.open_group(str(store), mode="r")["train/images"]


@pytest.mark.parametrize("compress", [False, True])
def test_every_chunk_equals_zarr_including_the_ragged_last(tmp_path, compress):
    # 6 full chunks and 8 rows
    images = write_store(tmp_path / "s.zarr", n=200, chunk=32, compress=compress)
    array = _images(tmp_path / "s.zarr")
    direct = ChunkFiles.for_array(array)
    assert direct is not None
    for c in range(7):
        rows = direct.read(c)
        assert rows.shape == (min(32, 200 - 32 * c), 1, 16, 16)
        assert np.array_equal(rows, images[32 * c : 32 * c + 32])
    with pytest.raises(IndexError):
        direct.read(7)


def test_a_missing_chunk_is_damage_not_fill(tmp_path):
    write_store(tmp_path / "s.zarr")
    array = _images(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "train" / "images" / "c" / "1" / "0" / "0" / "0").unlink()
    with pytest.raises(DataError, match="chunk file .* is missing"):
        ChunkFiles.for_array(array).read(1)
    assert np.isnan(array[32:64]).all()  # what zarr alone would have handed over


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "checksum"),
        (lambda b: b[:-10], "checksum"),
        (lambda b: b"", "checksum"),
    ],
)
def test_damaged_chunks_raise_data_error(tmp_path, damage, message, compress):
    write_store(tmp_path / "s.zarr", compress=compress)
    path = tmp_path / "s.zarr" / "train" / "images" / "c" / "2" / "0" / "0" / "0"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        ChunkFiles.for_array(_images(tmp_path / "s.zarr")).read(2)


def test_other_layouts_are_left_to_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    plain = group.create_array("a", shape=(10, 4), chunks=(5, 4), dtype="float32")
    no_checksum = group.create_array(
        "b", shape=(10, 4), chunks=(5, 4), dtype="float32", compressors=[BloscCodec()]
    )
    split_rows = group.create_array("c", shape=(10, 4), chunks=(5, 2), dtype="float32")
    assert all(ChunkFiles.for_array(a) is None for a in (plain, no_checksum, split_rows))


def test_threads_reading_at_once_decode_each_chunk_once(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    images = write_store(tmp_path / "s.zarr", n=256, chunk=32)
    reader = StoreReader(tmp_path / "s.zarr", "train")
    decoded = []
    original = ChunkFiles.read
    monkeypatch.setattr(ChunkFiles, "read", lambda self, c: decoded.append(c) or original(self, c))
    batches = [np.random.default_rng(i).permutation(256)[:64] for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda idx: reader.read(idx)["images"], batches))
    for idx, rows in zip(batches, results):
        assert np.array_equal(rows, images[idx])
    assert sorted(decoded) == list(range(8))  # 8 chunks, each decoded by one thread only


@pytest.mark.parametrize("compress", [False, True])
def test_a_chunk_of_the_wrong_size_is_refused(tmp_path, compress):
    import google_crc32c
    from numcodecs import Blosc

    write_store(tmp_path / "s.zarr", compress=compress)
    path = tmp_path / "s.zarr" / "train" / "images" / "c" / "2" / "0" / "0" / "0"
    body = np.zeros(10, np.float32).tobytes()
    if compress:
        body = Blosc(cname="lz4").encode(np.zeros(10, np.float32))  # valid Blosc
    path.write_bytes(body + google_crc32c.value(body).to_bytes(4, "little"))
    with pytest.raises(DataError, match="wrong size"):
        ChunkFiles.for_array(_images(tmp_path / "s.zarr")).read(2)
