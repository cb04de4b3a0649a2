"""Zarr-backed dataset: done samples only, the right depth maps, seeded and worker-independent."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import zarr
from train_fixtures import DEPTHS, random_store, write_store

from pdfnet_pipeline.data import augment as A
from pdfnet_pipeline.data.batch import batch_inputs
from pdfnet_pipeline.data.dataset import DataConfig, EpochSampler, ShardSampler, StoreDataset, make_loader
from pdfnet_pipeline.store import StoreError

NO_AUG = A.AugmentConfig(hflip=0, rotate=0, enhance=0, grayscale=0, crop=0)


@pytest.fixture()
def stores(tmp_path):
    a = random_store(tmp_path / "a.zarr", n=4, size=32, seed=1, done=np.array([1, 0, 1, 1], bool), prefix="a")
    b = random_store(tmp_path / "b.zarr", n=2, size=32, seed=2, prefix="b")
    return a, b


def test_incomplete_store_refused_unless_allowed(stores):
    with pytest.raises(StoreError, match=r"a.zarr: only 3/4 samples are done"):
        StoreDataset(list(stores), train=False)


def test_store_without_the_needed_depth_maps_refused(tmp_path):
    path = random_store(tmp_path / "c.zarr", n=2, maps=("large", "large_1024"))
    with pytest.raises(StoreError, match=r"c.zarr has no depth map\(s\) \['base', 'small'\] \(training"):
        StoreDataset([path], train=True)
    assert len(StoreDataset([path], train=False)) == 2  # validation needs only large


def test_a_store_of_only_the_large_map_serves_validation(tmp_path):
    """The bug this guards: such a store passed the start-up check for validation, then ds[0]
    read depth/large_1024 and raised KeyError."""
    path = random_store(tmp_path / "l.zarr", n=2, maps=("large",))
    ds = StoreDataset([path], train=False)
    item = ds[1]
    g = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(item["depth"].numpy(), g["depth/large"][1])
    assert "depth_target" not in item
    with pytest.raises(StoreError, match=r"no depth map\(s\) \['base', 'large_1024', 'small'\]"):
        StoreDataset([path], train=True)


def test_only_done_samples_from_all_stores(stores):
    ds = StoreDataset(list(stores), train=False, allow_incomplete=True)
    assert len(ds) == 5
    assert ds.ids == ["a0", "a2", "a3", "b0", "b1"]
    g = zarr.open_group(str(stores[0]), mode="r")
    item = ds[1]  # a2
    np.testing.assert_array_equal(item["image"].numpy(), g["image"][2])
    np.testing.assert_array_equal(item["mask"].numpy(), g["mask"][2])


def test_validation_reads_large_depth_unaugmented(stores):
    ds = StoreDataset(
        list(stores), train=False, augment=A.AugmentConfig(), allow_incomplete=True
    )  # augment ignored for val
    g = zarr.open_group(str(stores[1]), mode="r")
    for epoch in range(3):
        item = ds[(epoch, 4)]  # b1
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (32, 32, 3)
        assert item["depth"].dtype == torch.float16 and item["depth"].shape == (32, 32)
        np.testing.assert_array_equal(item["depth"].numpy(), g["depth/large"][1])
        assert "depth_target" not in item  # validation reads no supervision map
        np.testing.assert_array_equal(item["image"].numpy(), g["image"][1])


def test_train_draws_each_depth_quality_a_third_of_the_time(stores):
    ds = StoreDataset([stores[1]], train=True, augment=NO_AUG)
    g = zarr.open_group(str(stores[1]), mode="r")
    maps = {name: g[f"depth/{name}"][0] for name in DEPTHS}
    seen = Counter()
    for epoch in range(600):
        item = ds[(epoch, 0)]
        (name,) = [n for n in DEPTHS[:3] if np.array_equal(item["depth"].numpy(), maps[n])]
        seen[name] += 1
        np.testing.assert_array_equal(item["depth_target"].numpy(), maps["large_1024"])
    assert all(abs(seen[n] / 600 - 1 / 3) < 0.06 for n in DEPTHS[:3]), seen


def test_augmentation_is_applied_identically_to_every_array(tmp_path):
    # image channels, mask and depth maps hold one pattern; any misalignment breaks equality
    s = 48
    yy, xx = np.mgrid[0:s, 0:s]
    pat = ((np.sin(xx / 3.0) * np.cos(yy / 5.0) + 1) * 127).astype(np.uint8)[None]
    depth = (pat / 255).astype(np.float16)
    path = write_store(tmp_path / "p.zarr", np.repeat(pat[..., None], 3, -1), pat, {n: depth for n in DEPTHS}, ["p0"])
    cfg = A.AugmentConfig(enhance=0, grayscale=0)  # geometry only, so values stay comparable
    ds = StoreDataset([path], train=True, augment=cfg, seed=3)
    changed = 0
    for epoch in range(12):
        item = ds[(epoch, 0)]
        m = item["mask"].numpy()
        changed += not np.array_equal(m, pat[0])
        for ch in range(3):
            np.testing.assert_array_equal(item["image"].numpy()[..., ch], m)
        for key in ("depth", "depth_target"):
            assert np.abs(item[key].numpy().astype(np.float64) * 255 - m).max() <= 1.0
    assert changed >= 8  # P(no geometric op) = 1/8 per draw


def test_same_key_same_sample_other_epoch_other_sample(stores):
    ds = StoreDataset(list(stores), train=True, seed=5, allow_incomplete=True)
    a, b, c = ds[(2, 3)], ds[(2, 3)], ds[(3, 3)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["depth"], b["depth"])
    assert not (torch.equal(a["image"], c["image"]) and torch.equal(a["depth"], c["depth"]))


def test_loader_output_does_not_depend_on_worker_count(stores):
    ds = StoreDataset(list(stores), train=True, seed=9, allow_incomplete=True)

    def batches(workers):
        sampler = EpochSampler(len(ds), shuffle=True, seed=9)
        sampler.set_epoch(1)
        loader = make_loader(ds, sampler, DataConfig(workers=workers, start_method="forkserver"), batch_size=2)
        return [(b["id"], b["image"], b["depth"], b["mask"]) for b in loader]

    zero, two = batches(0), batches(2)
    assert len(zero) == 3
    for x, y in zip(zero, two):
        assert x[0] == y[0]
        for t, u in zip(x[1:], y[1:]):
            assert torch.equal(t, u)


def test_epoch_sampler_shards_and_resumes():
    full = EpochSampler(10, shuffle=True, seed=4)
    full.set_epoch(3)
    order = [i for _, i in full]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    full.set_epoch(3, start=4)
    assert [i for _, i in full] == order[4:] and len(full) == 6
    shards = []
    for r in range(2):
        s = EpochSampler(10, shuffle=True, seed=4, rank=r, world=2)
        s.set_epoch(3)
        shards.append([i for e, i in s if e == 3])
    assert len(shards[0]) == len(shards[1]) == 5 and sorted(shards[0] + shards[1]) == list(range(10))
    v = [list(ShardSampler(5, r, 2)) for r in range(2)]
    assert v == [[0, 2, 4], [1, 3]]


def test_batch_inputs_normalise(stores):
    ds = StoreDataset(list(stores), train=False, allow_incomplete=True)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    out = batch_inputs(batch, torch.device("cpu"))
    assert sorted(out) == ["depth", "image", "mask"]  # validation: no supervision map
    assert out["image"].shape == (2, 3, 32, 32) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (2, 1, 32, 32) and 0 <= out["mask"].min() and out["mask"].max() <= 1
    img = batch["image"][1, 5, 7].double() / 255
    exp = (img - torch.tensor(A.IMAGENET_MEAN, dtype=torch.float64)) / torch.tensor(A.IMAGENET_STD, dtype=torch.float64)
    torch.testing.assert_close(out["image"][1, :, 5, 7].double(), exp, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["depth"][1, 0], batch["depth"][1].float())


# A child process's loader set-up; `unguarded` switches one of the worker guards off.
SCRIPT_HEAD = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from multiprocessing import forkserver
from pathlib import Path
from train_fixtures import random_store
from pdfnet_pipeline import workers
from pdfnet_pipeline.data.dataset import DataConfig, ShardSampler, StoreDataset, make_loader
if {unguarded!r}:
    setattr(workers, {guard!r}, lambda: None)
"""

EXIT_SCRIPT = (
    SCRIPT_HEAD
    + """
if __name__ == "__main__":
    ds = StoreDataset([random_store(Path({tmp!r}) / "s.zarr", n=4, size=32)], train=False)
    loader = make_loader(ds, ShardSampler(len(ds)), DataConfig(workers=2), batch_size=1)
    batch = next(iter(loader))  # persistent workers stay up, referenced by the loader
    print("got", batch["id"], flush=True)
"""
)


def _script(tmp_path, text: str, unguarded: bool, guard: str):
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(
        text.format(tests=str(Path(__file__).parent), tmp=str(tmp_path), unguarded=unguarded, guard=guard)
    )
    return script


@pytest.mark.parametrize("unguarded", [False, True])
def test_a_process_exits_with_its_loader_still_alive(tmp_path, unguarded):
    """The workers ignore SIGTERM (pre-emption is the main process's), which multiprocessing's
    exit handler sends before joining them: a loader still referenced at exit used to hang the
    interpreter forever (CI hit this after the last test). Unguarded, it still hangs: the check
    that this test can fail."""
    import os
    import signal
    import subprocess
    import sys

    script = _script(tmp_path, EXIT_SCRIPT, unguarded, "kill_shielded_at_exit")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline()  # the batch arrived; what is left is the exit
        proc.wait(timeout=15 if unguarded else 60)
        ended = True
    except subprocess.TimeoutExpired:
        ended = False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the process, its forkserver and the workers
        proc.communicate()
    assert first == "got ['s0']\n"
    assert ended is not unguarded


SIGTERM_SCRIPT = (
    SCRIPT_HEAD
    + """
if __name__ == "__main__":
    ds = StoreDataset([random_store(Path({tmp!r}) / "s.zarr", n=8, size=32)], train=False)
    it = iter(make_loader(ds, ShardSampler(len(ds)), DataConfig(workers=1), batch_size=1))
    ids = list(next(it)["id"])
    os.kill(forkserver._forkserver._forkserver_pid, signal.SIGTERM)  # a job-wide SIGTERM reaches it too
    time.sleep(6)  # past torch's 5 s worker watchdog, which quits when the worker's parent is gone
    try:
        ids += [i for batch in it for i in batch["id"]]
    except RuntimeError as err:
        print("error:", err)
    print("ids:", " ".join(ids))
"""
)


@pytest.mark.parametrize("unguarded", [False, True])
def test_workers_outlive_a_sigterm_to_the_forkserver(tmp_path, unguarded):
    """SLURM signals the whole process group. The forkserver starts with the stop signals blocked,
    so it survives, and so do the workers it forked (they quit when their parent dies). Unguarded,
    the loader fails with "exited unexpectedly": the CI failure this test pins down."""
    import subprocess
    import sys

    script = _script(tmp_path, SIGTERM_SCRIPT, unguarded, "_start_forkserver_shielded")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180).stdout
    if unguarded:
        assert "exited unexpectedly" in out, out
    else:
        assert "error" not in out and out.splitlines()[-1] == "ids: " + " ".join(f"s{i}" for i in range(8)), out


EARLY = """
import sys
from pathlib import Path
from pdfnet_pipeline.data.dataset import DataConfig, start_workers_early
def server_children():
    # every process whose parent is this one (/proc/PID/task/*/children may miss a child that was
    # just created), that runs multiprocessing's forkserver
    import os
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(stat.parent, "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        if ppid == os.getpid() and "forkserver" in cmd:
            kids.append(stat.parent.name)
    return kids
start_workers_early(DataConfig(workers=int(sys.argv[1])))
print(len(server_children()))
"""


@pytest.mark.parametrize("n_workers, servers", [(2, 1), (0, 0)])
def test_the_trainer_can_start_the_worker_server_before_its_loaders(n_workers, servers):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", EARLY, str(n_workers)], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == servers
