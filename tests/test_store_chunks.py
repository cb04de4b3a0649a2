"""The direct chunk reader gives zarr's bytes for every layout it takes, zarr's errors for damaged
chunks, and leaves every other layout (and a missing chunk) to zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from test_store_verify import chunk_file, flip_bytes
from train_fixtures import random_store
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

from pdfnet_pipeline import store
from pdfnet_pipeline.store_chunks import ChunkReader

ARRAYS = ("image", "mask", "depth/small", "depth/base", "depth/large", "depth/large_1024")


def _assert_reads_equal_zarr(path, n: int) -> None:
    g = zarr.open_group(str(path), mode="r")
    for name in ARRAYS:
        reader = ChunkReader.of(g[name])
        assert reader is not None, name
        for row in range(n):
            got, want = reader.read(row), g[name][row]
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), (name, row)
    st = store.open_read(path, ("small", "large_1024"))
    s = st.sample(1, ("small", "large_1024"))
    assert np.array_equal(s.image, g["image"][1]) and np.array_equal(s.depth["large_1024"], g["depth/large_1024"][1])
    assert st._array("image")[1] is not None  # the store's reads take this path


def test_the_layout_this_project_writes_reads_as_zarr_reads_it(tmp_path):
    # lz4 (u8 unshuffled, float16 byte-shuffled) + CRC32C: what store.create writes today
    _assert_reads_equal_zarr(random_store(tmp_path / "s.zarr", n=3, size=24, seed=1), 3)


@pytest.mark.parametrize(
    "codecs",
    [
        [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"), Crc32cCodec()],  # stores of session 1-3
        [BloscCodec(cname="zstd")],  # no checksum
    ],
)
def test_older_blosc_stores_read_as_zarr_reads_them(tmp_path, monkeypatch, codecs):
    monkeypatch.setattr(store, "_codecs", lambda kind: None if kind == "done" else codecs)
    path = random_store(tmp_path / "old.zarr", n=2, size=16)
    monkeypatch.undo()
    _assert_reads_equal_zarr(path, 2)


def test_other_layouts_are_left_to_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    cases = {
        "zstd": dict(chunks=(1, 8, 8), compressors=[ZstdCodec()]),  # not blosc
        "two_rows": dict(chunks=(2, 8, 8), compressors=[BloscCodec()]),  # a chunk is not one sample
        "big_endian": dict(chunks=(1, 8, 8), compressors=[BloscCodec()], serializer=BytesCodec(endian="big")),
    }
    for name, kw in cases.items():
        a = g.create_array(name, shape=data.shape, dtype=data.dtype, **kw)
        a[:] = data
        assert ChunkReader.of(a) is None, name
    v2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=(2, 8), chunks=(1, 8), dtype="u1", zarr_format=2)
    assert ChunkReader.of(v2) is None


def test_damaged_and_missing_chunks(tmp_path):
    path = random_store(tmp_path / "s.zarr", n=3, size=16)
    g = zarr.open_group(str(path), mode="r")
    flip_bytes(path, "image", 0)
    with pytest.raises(ValueError, match="^Stored and computed checksum do not match"):
        ChunkReader.of(g["image"]).read(0)
    f = chunk_file(path, "mask", 1)  # a blosc frame cut short, its checksum made to match
    body = f.read_bytes()[:-4][:40]
    import google_crc32c

    f.write_bytes(body + np.uint32(google_crc32c.value(body)).tobytes())
    with pytest.raises(RuntimeError, match="^blosc frame of 40 bytes says 272 bytes holding 256; the chunk holds 256$"):
        ChunkReader.of(g["mask"]).read(1)  # zarr itself reads such a frame past its end, as garbage
    chunk_file(path, "depth/base", 2).unlink()  # zarr reads a missing chunk as the fill value
    assert ChunkReader.of(g["depth/base"]).read(2) is None
    st = store.open_read(path, ("base",))
    assert np.array_equal(st.sample(2, ("base",)).depth["base"], np.zeros((16, 16), np.float16))
    with pytest.raises(
        store.StoreReadError, match=r"sample 1 \(s1\): mask does not decode \(RuntimeError: blosc frame of 40"
    ):
        st.sample(1, ())
    # verify names what the trainer would hit: the checksum, the cut frame and the missing file
    got = {b.row: b.problems for b in store.verify(path).bad}
    assert got[0][0].startswith("image: does not decode (ValueError: Stored and computed checksum")
    assert got[1] == [
        "mask: does not decode (RuntimeError: blosc frame of 40 bytes says 272 bytes holding 256; the chunk holds 256)"
    ]
    assert got[2] == ["depth/base: chunk file depth/base/c/2/0/0 missing"]
