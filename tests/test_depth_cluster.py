"""The depth stage on a cluster: a stop signal lets the samples in flight finish, releases the lock
and exits 75, and the rerun completes the store exactly; a failed write names the store and
leaves only complete samples done; verify -> repair -> rerun gives back the clean store."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import test_depth_stage
from test_depth_stage import ARRAYS, N, _arrays, small_cfg
from test_store_verify import _failing_set, flip_bytes

from pdfnet_pipeline import config as cfgmod
from pdfnet_pipeline import preempt, store
from pdfnet_pipeline.depth import stage

# The generated data and the uninterrupted reference store (module fixtures: built once here too).
data, reference = test_depth_stage.data, test_depth_stage.reference

STOP = """
import json, os, signal, sys, time
from pdfnet_pipeline import cli, config, store
from pdfnet_pipeline.depth import stage
write, infer, batches = store.Store.write_sample, stage._infer, [0]
def slow_write(*args, **kwargs):  # writes still in flight when the stop is noticed
    time.sleep(0.3)
    write(*args, **kwargs)
def signalling_infer(*args, **kwargs):
    batches[0] += 1
    if batches[0] == 2:  # the second batch [2, 3]: SIGTERM to the whole process group, as SLURM does
        os.killpg(0, signal.SIGTERM)
    return infer(*args, **kwargs)
store.Store.write_sample, stage._infer = slow_write, signalling_infer
sys.argv = ["pdfnet-pipeline", "stage", "run", "depth", "--stages-dir", sys.argv[2]] + [
    f"--set={k}={json.dumps(v)}" for k, v in json.loads(sys.argv[1]).items()]
cli.main()
"""


def _flat(cfg: stage.Config) -> dict:
    """A config as --set key=value pairs (dotted keys for the nested models)."""
    out = {}
    for k, v in cfgmod.to_dict(cfg).items():
        if isinstance(v, dict):
            out.update({f"{k}.{n}.{f}": x for n, spec in v.items() for f, x in spec.items()})
        else:
            out[k] = v
    return out


@pytest.mark.slow
def test_a_stop_signal_writes_the_samples_in_flight_releases_the_lock_and_exits_75(data, reference, tmp_path):
    cfg = small_cfg(data, tmp_path / "stores", workers=1)  # a worker process gets the group's SIGTERM too
    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "depth.toml").write_text("")
    proc = subprocess.run(
        [sys.executable, "-c", STOP, json.dumps(_flat(cfg)), str(stages)],
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # its own process group, so killpg(0) stays inside
    )
    path = tmp_path / "stores" / "DIS-VD.zarr"
    assert proc.returncode == preempt.EXIT_PREEMPTED, proc.stderr[-3000:]
    stopped = [ln for ln in proc.stderr.splitlines() if ln.startswith("stopped:")]
    assert stopped == [
        f"stopped: depth stage stopped on SIGTERM after writing the samples in flight: {path}: 4/{N} samples done, "
        f"4 written this run; rerun the same command to finish the missing samples"
    ], proc.stderr[-3000:]
    # The batch in hand when the flag was seen ([2, 3]) was written, slow writes included; not the next.
    assert store.open_read(path).done().tolist() == [True, True, True, True, False]
    assert store.verify(path).ok
    with store.writer_lock(path):  # released
        pass
    out = stage.run(small_cfg(data, tmp_path / "stores"))
    assert out[0]["written"] == 1 and out[0]["done"] == N
    got, want = _arrays(path), _arrays(reference)
    for k in ARRAYS:
        assert np.array_equal(got[k], want[k]), k


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_store_write_stops_naming_the_store_and_only_complete_samples_are_done(
    data, reference, tmp_path, monkeypatch, code
):
    cfg = small_cfg(data, tmp_path / "stores")
    path = tmp_path / "stores" / "DIS-VD.zarr"
    _failing_set(monkeypatch, "depth/large/c/3/", OSError(code, os.strerror(code)))
    with pytest.raises(store.StoreWriteError) as err:
        stage.run(cfg)
    msg = str(err.value)
    assert msg.startswith(f"cannot write depth/large of sample 3 to {path}: [Errno {code}] {os.strerror(code)}")
    assert "\n" not in msg
    monkeypatch.undo()
    done = store.open_read(path).done()
    assert not done[3] and done[:2].all()  # the earlier batch is kept
    assert store.verify(path).ok  # every done sample is complete
    with store.writer_lock(path):
        pass
    out = stage.run(cfg)  # the disk has room again: the rerun completes it
    assert out[0]["done"] == N and out[0]["written"] == N - int(done.sum())
    got, want = _arrays(path), _arrays(reference)
    for k in ARRAYS:
        assert np.array_equal(got[k], want[k]), k


def test_verify_repair_then_the_depth_stage_gives_back_the_clean_store(data, reference, tmp_path):
    stores = tmp_path / "stores"
    path = stores / "DIS-VD.zarr"
    shutil.copytree(reference, path)
    flip_bytes(path, "depth/large_1024", 2)
    ids = store.open_read(path).ids
    res = subprocess.run(
        [sys.executable, "-m", "pdfnet_pipeline", "store", "verify", str(path)], capture_output=True, text=True
    )
    assert res.returncode == 1
    assert f"bad sample 2 ({ids[2]}): depth/large_1024: does not decode (ValueError: Stored and computed" in res.stdout
    assert f"{N} done samples checked, 1 bad" in res.stdout
    report = store.verify(path, repair=True)
    assert [b.row for b in report.bad] == report.repaired == [2]
    out = stage.run(small_cfg(data, stores))
    assert out[0]["written"] == 1 and out[0]["done"] == N  # exactly the repaired sample
    got, want = _arrays(path), _arrays(reference)
    for k in ARRAYS:
        assert np.array_equal(got[k], want[k]), k
    assert store.verify(path).ok


def test_signal_handlers_are_restored_after_a_run(data, reference):
    before = {s: signal.getsignal(s) for s in preempt.STOP_SIGNALS}
    stage.run(small_cfg(data, reference.parent))
    assert {s: signal.getsignal(s) for s in preempt.STOP_SIGNALS} == before


def test_a_signal_during_the_last_batch_finishes_normally(data, reference, tmp_path, monkeypatch):
    """The stop is looked at before a batch starts: with no batch left, the run just completes."""
    infer, calls = stage._infer, []

    def signalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # batches [0, 1], [2, 3], [4]: the last
            os.kill(os.getpid(), signal.SIGTERM)
        return infer(*args, **kwargs)

    monkeypatch.setattr(stage, "_infer", signalling)
    out = stage.run(small_cfg(data, tmp_path / "stores"))
    assert len(calls) == 3 and out[0]["done"] == N
