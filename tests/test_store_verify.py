"""Store integrity: `verify` names damaged samples and `--repair` clears exactly their done flags;
a chunk that does not decode is named on read; a failed write leaves the sample not done; a reader
on a store being written serves only complete samples."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from train_fixtures import random_store

from pdfnet_pipeline import store

TESTS = Path(__file__).resolve().parent


def chunk_file(path: Path, array: str, row: int) -> Path:
    a = zarr.open_group(str(path), mode="r")[array]
    return path / array / a.metadata.encode_chunk_key((row,) + (0,) * (a.ndim - 1))


def flip_bytes(path: Path, array: str, row: int) -> None:
    f = chunk_file(path, array, row)
    data = bytearray(f.read_bytes())
    for k in range(8):
        data[len(data) // 2 + k] ^= 0xFF
    f.write_bytes(bytes(data))


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pdfnet_pipeline", *args], capture_output=True, text=True, timeout=120)


def test_verify_names_each_kind_of_damage_and_repair_clears_exactly_those(tmp_path):
    path = random_store(tmp_path / "s.zarr", n=6, size=16, seed=0, done=np.array([1, 1, 1, 1, 1, 0], bool))
    assert store.verify(path).ok and store.verify(path).checked == 5 and store.verify(path).checksums
    flip_bytes(path, "image", 1)  # rot: a checksum mismatch
    chunk_file(path, "mask", 2).unlink()  # a lost file would read as zeros
    g = zarr.open_group(str(path), mode="r+")
    g["depth/base"][3] = np.full((16, 16), 1.5, np.float16)  # decodes, but out of range
    g["depth/large_1024"][4] = np.full((16, 16), np.nan, np.float16)
    report = store.verify(path)
    assert report.checked == 5 and not report.ok and report.layout == []
    got = {b.row: (b.id, b.problems) for b in report.bad}
    assert sorted(got) == [1, 2, 3, 4]
    assert got[1][0] == "s1" and got[1][1][0].startswith(
        "image: does not decode (ValueError: Stored and computed checksum"
    )
    assert got[2][1] == ["mask: chunk file mask/c/2/0/0 missing"]
    assert got[3][1] == ["depth/base: values in [1.5, 1.5], outside [0, 1]"]
    assert got[4][1] == ["depth/large_1024: 256 non-finite values"]
    assert all(len(p) == 1 for _, p in got.values())  # the other arrays of those samples are fine

    res = cli("store", "verify", str(path))
    assert res.returncode == 1, res.stderr
    assert "bad sample 1 (s1): image: does not decode" in res.stdout
    assert f"{path}: 5 done samples checked, 4 bad" in res.stdout
    assert store.open_read(path).done_rows().tolist() == [0, 1, 2, 3, 4]  # verify alone changes nothing

    res = cli("store", "verify", str(path), "--repair")
    assert res.returncode == 1 and "cleared the done flags of samples [1, 2, 3, 4]" in res.stdout
    assert store.open_read(path).done_rows().tolist() == [0]
    res = cli("store", "verify", str(path))
    assert res.returncode == 0 and f"{path}: 1 done samples checked, 0 bad" in res.stdout


def test_repair_needs_the_writer_lock(tmp_path):
    path = random_store(tmp_path / "s.zarr", n=2, size=16)
    flip_bytes(path, "mask", 0)
    with store.writer_lock(path):
        with pytest.raises(store.StoreBusyError, match="being written by another run"):
            store.verify(path, repair=True)
    assert store.open_read(path).done_rows().tolist() == [0, 1]


def test_an_undecodable_chunk_is_named_by_store_sample_and_array(tmp_path):
    path = random_store(tmp_path / "s.zarr", n=3, size=16)
    flip_bytes(path, "depth/small", 2)
    st = store.open_read(path)
    st.sample(2, ("large",))  # the damaged map is not read: no error
    with pytest.raises(store.StoreReadError) as err:
        st.sample(2, ("small",))
    assert str(err.value).startswith(f"{path}: sample 2 (s2): depth/small does not decode (ValueError: Stored and")
    assert f"pdfnet-pipeline store verify {path}" in str(err.value)


def test_a_store_without_checksums_says_so(tmp_path, monkeypatch):
    from zarr.codecs import BloscCodec

    monkeypatch.setattr(store, "_codecs", lambda kind: None if kind == "done" else BloscCodec(cname="zstd"))
    path = random_store(tmp_path / "old.zarr", n=2, size=16)
    monkeypatch.undo()
    assert store.verify(path).ok and not store.verify(path).checksums
    res = cli("store", "verify", str(path))
    assert res.returncode == 0 and "without chunk checksums" in res.stdout


def _failing_set(monkeypatch, fragment: str, err: OSError) -> list[str]:
    """Make zarr's local store fail (after leaving nothing, as its atomic write does) on keys
    containing `fragment`; returns the keys it refused."""
    from zarr.storage import LocalStore

    original, refused = LocalStore.set, []

    async def set_(self, key, value):
        if fragment in key:
            refused.append(key)
            raise err
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", set_)
    return refused


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_write_names_the_store_and_leaves_the_sample_not_done(tmp_path, monkeypatch, code):
    path = random_store(tmp_path / "s.zarr", n=3, size=16, done=np.array([1, 0, 0], bool))
    st = store.open_write(path, _spec_of(path))
    rng = np.random.default_rng(0)
    image, mask = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), rng.integers(0, 256, (16, 16), dtype=np.uint8)
    depths = {m: rng.random((16, 16)).astype(np.float32) for m in store.DEPTH_MAPS}
    refused = _failing_set(monkeypatch, "depth/large/c/1", OSError(code, os.strerror(code)))
    with pytest.raises(store.StoreWriteError) as err:
        st.write_sample(1, image, mask, depths)
    assert refused == ["depth/large/c/1/0/0"]
    assert str(err.value).startswith(f"cannot write depth/large of sample 1 to {path}: [Errno {code}] ")
    assert "the sample stays not done" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.undo()
    r = store.open_read(path)
    assert r.done_rows().tolist() == [0]  # image, mask, small, base were written; not done
    assert not list(path.rglob("*.partial"))
    assert store.verify(path).ok  # nothing done is damaged
    st.write_sample(1, image, mask, depths)  # the rerun
    assert np.array_equal(
        store.open_read(path).sample(1, ("large",)).depth["large"], depths["large"].astype(np.float16)
    )


def _spec_of(path: Path) -> store.StoreSpec:
    st = store.open_read(path)
    a = st.attrs
    return store.StoreSpec(
        split=a["split"], ids=st.ids, orig_sizes=[tuple(x) for x in st.orig_sizes.tolist()], size=st.size,
        manifest_sha256=a["manifest_sha256"], maps=tuple(a["maps"]), models=a["models"],
        preprocessing=a["preprocessing"],
    )  # fmt: skip


WRITER = """
import sys, time
import numpy as np
from zarr.storage import LocalStore
from pdfnet_pipeline import store
sys.path.insert(0, {tests!r})
from test_store_verify import content
original = LocalStore.set
async def slow_set(self, key, value):  # widen the window in which a sample is half-written
    time.sleep(0.01)
    return await original(self, key, value)
LocalStore.set = slow_set
st = store.Store({path!r}, "r+")
for row in range(st.n):
    image, mask, depths = content(row, st.size)
    st.write_sample(row, image, mask, depths)
"""


def content(row: int, size: int):
    """What the writer writes for `row`: distinct per row and per array."""
    rng = np.random.default_rng(row)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (size, size), dtype=np.uint8)
    depths = {m: rng.random((size, size)).astype(np.float16) for m in store.DEPTH_MAPS}
    return image, mask, depths


def test_a_reader_on_a_store_being_written_serves_only_complete_samples(tmp_path):
    """A writer process fills a store sample by sample (slowed down); meanwhile the train and
    validation datasets are opened again and again, and every sample they serve must equal what
    the writer wrote. A control reads rows that are not done yet and does see half-written ones."""
    from pdfnet_pipeline.data.augment import AugmentConfig
    from pdfnet_pipeline.data.dataset import StoreDataset

    n, size = 12, 16
    path = random_store(tmp_path / "s.zarr", n=n, size=size, done=np.zeros(n, bool))
    script = WRITER.format(tests=str(TESTS), path=str(path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    writer = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    no_aug = AugmentConfig(hflip=0, rotate=0, enhance=0, grayscale=0, crop=0)
    served, half_seen, opened, finished = set(), 0, 0, False
    try:
        while not finished:
            finished = writer.poll() is not None  # one more round after the writer is done
            for train in (True, False):
                ds = StoreDataset([path], train=train, augment=no_aug, allow_incomplete=True)
                opened += 1
                for i in range(len(ds)):
                    item, (_, row) = ds[i], ds.locate(i)
                    image, mask, depths = content(row, size)
                    assert np.array_equal(item["image"].numpy(), image), row
                    assert np.array_equal(item["mask"].numpy(), mask), row
                    maps = ("small", "base", "large") if train else ("large",)
                    assert any(np.array_equal(item["depth"].numpy(), depths[m]) for m in maps), row
                    if train:
                        assert np.array_equal(item["depth_target"].numpy(), depths["large_1024"]), row
                    served.add(row)
            # control: the rows not done yet, read regardless of the flag
            st = store.open_read(path)
            done = st.done()
            for row in np.flatnonzero(~done):
                s = st.sample(int(row), ("large_1024",))
                image, mask, depths = content(int(row), size)
                wrote = [np.array_equal(s.image, image), np.array_equal(s.mask, mask)]
                half_seen += any(wrote) and not np.array_equal(s.depth["large_1024"], depths["large_1024"])
            time.sleep(0.005)
        assert writer.wait(60) == 0, writer.stderr.read()
    finally:
        if writer.poll() is None:
            writer.kill()
    ds = StoreDataset([path], train=False)  # finished: complete store
    assert len(ds) == n and served == set(range(n)) and opened > 10
    assert half_seen > 0  # the race is real: ignoring the done flags would have served these
