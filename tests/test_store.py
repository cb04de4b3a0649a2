"""Zarr store: layout, dtypes, provenance, refusal of foreign stores, the writer lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from pdfnet_pipeline import store


def spec(**over) -> store.StoreSpec:
    base = dict(
        split="DIS-VD",
        ids=["a", "bb", "c3"],
        orig_sizes=[(30, 40), (50, 20), (64, 64)],
        size=16,
        manifest_sha256="f" * 64,
        models={"small": {"arch": "tiny", "weights": "random", "seed": 0}},
        preprocessing={"input_side": 518, "resize": "bicubic"},
    )
    base.update(over)
    return store.StoreSpec(**base)


def test_layout_dtypes_chunks_and_attributes(tmp_path):
    path = tmp_path / "DIS-VD.zarr"
    store.create(path, spec())
    expect = {
        "image": ((3, 16, 16, 3), "uint8", (1, 16, 16, 3)),
        "mask": ((3, 16, 16), "uint8", (1, 16, 16)),
        "depth/small": ((3, 16, 16), "float16", (1, 16, 16)),
        "depth/base": ((3, 16, 16), "float16", (1, 16, 16)),
        "depth/large": ((3, 16, 16), "float16", (1, 16, 16)),
        "depth/large_1024": ((3, 16, 16), "float16", (1, 16, 16)),
        "done": ((3,), "bool", (1,)),
        "orig_size": ((3, 2), "int32", (3, 2)),
    }
    r = zarr.open_group(str(path), mode="r")  # the on-disk layout, read independently of store.py
    for name, (shape, dtype, chunks) in expect.items():
        a = r[name]
        assert (a.shape, str(a.dtype), a.chunks) == (shape, dtype, chunks), name
    assert list(r["ids"][:]) == ["a", "bb", "c3"]
    assert r["orig_size"][:].tolist() == [[30, 40], [50, 20], [64, 64]]
    assert r["done"][:].tolist() == [False, False, False]
    assert r.metadata.zarr_format == 3
    attrs = dict(r.attrs)
    assert attrs["schema_version"] == store.SCHEMA_VERSION == 1
    assert attrs["manifest_sha256"] == "f" * 64 and attrs["size"] == 16 and attrs["n"] == 3
    assert attrs["models"]["small"]["weights"] == "random"
    assert attrs["maps"] == ["small", "base", "large", "large_1024"]
    assert attrs["versions"]["zarr"] == zarr.__version__
    assert attrs["created"] == attrs["updated"]


def test_write_sample_round_trips_and_marks_done_last(tmp_path):
    path = tmp_path / "s.zarr"
    w = store.create(path, spec())
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    msk = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    depths = {m: rng.random((16, 16), dtype=np.float32) for m in store.DEPTH_MAPS}
    w.write_sample(1, img, msk, depths)
    r = store.open_read(path)
    got = r.sample(1, store.DEPTH_MAPS)
    assert np.array_equal(got.image, img) and np.array_equal(got.mask, msk)
    for m, d in depths.items():
        assert np.array_equal(got.depth[m], d.astype(np.float16))
    assert r.done_rows().tolist() == [1]
    assert (r.split, r.n, r.size, r.maps, r.ids) == ("DIS-VD", 3, 16, store.DEPTH_MAPS, ["a", "bb", "c3"])
    assert r.orig_sizes.tolist() == [[30, 40], [50, 20], [64, 64]]
    # A failing write leaves the sample not done.
    with pytest.raises(KeyError, match="depth/nope"):
        w.write_sample(2, img, msk, {"small": depths["small"], "nope": depths["base"]})
    assert store.open_read(path).done_rows().tolist() == [1]
    st = store.split_status(path)
    assert (st["split"], st["n"], st["done"], st["complete"], st["size"]) == ("DIS-VD", 3, 1, False, 16)
    assert st["models"] == {"small": "random"}
    assert store.split_status(tmp_path / "DIS-TE1.zarr") == {
        "path": str(tmp_path / "DIS-TE1.zarr"),
        "split": "DIS-TE1",
        "exists": False,
        "n": 0,
        "done": 0,
        "complete": False,
    }


def test_create_never_overwrites(tmp_path):
    path = tmp_path / "s.zarr"
    store.create(path, spec())
    with pytest.raises(FileExistsError, match="already contains data"):
        store.create(path, spec())


def test_open_write_refuses_another_manifest_size_models_or_ids(tmp_path):
    path = tmp_path / "s.zarr"
    store.create(path, spec())
    assert store.open_write(path, spec()).attrs["split"] == "DIS-VD"  # same inputs: accepted
    with pytest.raises(
        store.StoreError,
        match=r"another manifest: .* sha256 ffffffffffff\.\.\. in the store, 000000000000\.\.\. in this run",
    ):
        store.open_write(path, spec(manifest_sha256="0" * 64))
    with pytest.raises(store.StoreError, match="size"):
        store.open_write(path, spec(size=32))
    with pytest.raises(store.StoreError, match="models"):
        store.open_write(path, spec(models={"small": {"arch": "small", "weights": "hub"}}))
    with pytest.raises(store.StoreError, match="ids differ"):
        store.open_write(path, spec(ids=["a", "bb", "zz"]))


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    store.create(path, spec())
    zarr.open_group(str(path), mode="r+").attrs["schema_version"] = 99
    with pytest.raises(store.StoreError, match="schema version 99"):
        store.open_read(path)
    with pytest.raises(store.StoreError, match="schema version 99"):
        store.open_write(path, spec())
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(store.StoreError, match="not a pdfnet store"):
        store.open_read(tmp_path / "plain.zarr")


def test_second_writer_is_refused_in_process(tmp_path):
    path = tmp_path / "s.zarr"
    with store.writer_lock(path):
        with pytest.raises(store.StoreBusyError, match=f"pid {os.getpid()}"):
            with store.writer_lock(path):
                pass
    with store.writer_lock(path):  # released on exit
        pass


def test_lock_of_a_killed_process_is_released(tmp_path):
    path = tmp_path / "s.zarr"
    code = textwrap.dedent(
        f"""
        import sys, time
        from pdfnet_pipeline import store
        with store.writer_lock({str(path)!r}):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(store.StoreBusyError, match=f"pid {proc.pid}"):
            with store.writer_lock(path):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with store.writer_lock(path) as lp:  # the kernel dropped the dead holder's flock
        assert lp.read_text().strip() == str(os.getpid())


def test_empty_or_foreign_folder_is_a_store_error(tmp_path):
    from pdfnet_pipeline.store import StoreError, open_read

    bad = tmp_path / "DIS-VD.zarr"
    bad.mkdir()
    with pytest.raises(StoreError, match="DIS-VD.zarr: not a Zarr store"):
        open_read(bad)


def test_open_read_refuses_missing_maps_by_name(tmp_path):
    path = tmp_path / "s.zarr"
    store.create(path, spec(maps=("large",)))
    assert store.open_read(path, ("large",)).maps == ("large",)
    with pytest.raises(
        store.StoreError, match=r"s.zarr has no depth map\(s\) \['large_1024'\] \(eval\); it holds \['large'\]"
    ):
        store.open_read(path, ("large", "large_1024"), "eval")


def test_a_store_pickles_by_path_and_reopens(tmp_path):
    import pickle

    path = tmp_path / "s.zarr"
    w = store.create(path, spec())
    w.write_sample(2, np.zeros((16, 16, 3), np.uint8), np.full((16, 16), 7, np.uint8), {})
    r = pickle.loads(pickle.dumps(store.open_read(path)))
    assert r._group is None  # no handle travels to a worker
    assert r.sample(2).mask[0, 0] == 7 and r.done_rows().tolist() == [2]
