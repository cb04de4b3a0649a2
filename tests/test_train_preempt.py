"""Training on a cluster: a pre-emption signal stops after the optimizer step (exit 75 from the CLI)
and the resumed run equals an uninterrupted one; checkpoint write failures keep the previous
checkpoint; undecodable store chunks stop the run by name or are skipped and counted."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from test_train_loop import toy, toy_cfg, weights
from train_fixtures import TIMING, random_store, sample_store, toy_stores

from pdfnet_pipeline import preempt
from pdfnet_pipeline import store as store_mod
from pdfnet_pipeline.data.dataset import EpochSampler
from pdfnet_pipeline.train import checkpoint as ckpt
from pdfnet_pipeline.train.loop import Trainer, train

TESTS = Path(__file__).resolve().parent


@pytest.fixture()
def stores(tmp_path):
    return toy_stores(tmp_path)


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def signal_at(monkeypatch, call: int, sig: int) -> list[int]:
    """Send `sig` to this process from inside the `call`-th micro-step (1-based); returns the
    list of micro-steps made (its length is the count)."""
    made, original = [], Trainer.micro_step

    def micro_step(self, batch, weight, sync):
        made.append(len(made) + 1)
        if len(made) == call:
            os.kill(os.getpid(), sig)  # the handler runs here, in the main thread, before the step ends
        return original(self, batch, weight, sync)

    monkeypatch.setattr(Trainer, "micro_step", micro_step)
    return made


@pytest.mark.parametrize(
    ("sig", "call", "micro", "stop"),
    [
        # accum 2 over 5 samples: windows [0,2) [2,4) [4,5) per epoch. Micro-step 3 opens the second
        # window: the window is finished (4 micro-steps), optimizer step 2 saved, then the stop.
        (signal.SIGTERM, 3, 4, (2, 0, 4)),
        # Micro-step 5 is epoch 0's last window: the epoch closes (validation, checkpoint) first.
        (signal.SIGUSR1, 5, 5, (3, 1, 0)),
    ],
)
def test_a_stop_signal_finishes_the_window_saves_and_the_rerun_resumes_exactly(
    tmp_path, stores, monkeypatch, sig, call, micro, stop
):
    kw = dict(accum_steps=2, epochs=2, workers=1)
    full = train(toy_cfg(tmp_path, [stores[0]], [stores[1]], name="full", **kw), model=toy(0.3))
    handlers = {s: signal.getsignal(s) for s in preempt.STOP_SIGNALS}
    made = signal_at(monkeypatch, call, sig)
    part = train(toy_cfg(tmp_path, [stores[0]], [stores[1]], name="cut", **kw), model=toy(0.3))
    monkeypatch.undo()
    assert part.stopped == signal.Signals(sig).name
    assert (part.state.step, part.state.epoch, part.state.position) == stop
    assert len(made) == micro  # every micro-step of the started window, no more
    assert json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())["step"] == stop[0]
    assert part.checkpoint == tmp_path / "cut" / "checkpoints" / f"step_{stop[0]:08d}"
    assert {s: signal.getsignal(s) for s in preempt.STOP_SIGNALS} == handlers  # restored
    rest = train(toy_cfg(tmp_path, [stores[0]], [stores[1]], name="cut", resume=True, **kw), model=toy(0.3, seed=9))
    assert not rest.stopped
    assert part.losses + rest.losses == full.losses  # bit-exact floats
    assert part.val + rest.val == full.val
    wf, wc = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(wf[k], wc[k]) for k in wf)
    assert records(tmp_path / "cut") == records(tmp_path / "full")  # the log too, step by step


@pytest.mark.slow
def test_cli_exits_75_with_one_line_after_a_stop_signal(tmp_path):
    """The stage through the console entry (tiny PDFNet, 256 px): SIGTERM from outside once two
    steps are logged; one `stopped:` line, exit code 75, the log ends at the checkpoint's step."""
    train_store = sample_store(tmp_path / "DIS-TR.zarr", "DIS-TR", 4, 256)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "pdfnet_pipeline", "stage", "run", "train", "--profile", "smoke",
        "--set", f'run_dir="{run_dir}"', "--set", f'data.train_stores=["{train_store}"]',
        "--set", "data.val_stores=[]", "--set", "val_every=0", "--set", "epochs=1000",
        "--set", "data.workers=0", "--set", "progress=false",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=TESTS.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            log = run_dir / "metrics.jsonl"
            if log.is_file() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == preempt.EXIT_PREEMPTED == 75, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("stopped:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    step = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"]
    assert f"after optimizer step {step} " in lines[0] and "resume=true" in lines[0]
    assert [r["step"] for r in records(run_dir) if r["kind"] == "step"] == list(range(1, step + 1))


DDP_SCRIPT = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
import torch.distributed as dist
from train_fixtures import ToyNet
from pdfnet_pipeline import runtime
from pdfnet_pipeline.train.loop import Trainer, train
from test_train_ddp import make_cfg
dist.init_process_group("gloo")  # three runs in one launch share one process group (gloo's re-init
runtime.Runtime.shutdown = lambda self: None  # in one process is unreliable), kept until the end
tmp = Path({tmp!r})
rank = os.environ["RANK"]
def run(name, resume=False):
    cfg = make_cfg(tmp, name, 1)
    cfg.resume = resume
    torch.manual_seed(0)
    r = train(cfg, model=ToyNet())
    return {{"losses": r.losses, "stopped": r.stopped, "step": r.state.step, "val": r.val}}
out = {{"full": run("full")}}
original, calls = Trainer.micro_step, []
def micro_step(self, batch, weight, sync):
    calls.append(1)
    if rank == "1" and len(calls) == 3:  # rank 1 only, inside epoch 1's first step (step 3)
        os.kill(os.getpid(), signal.SIGUSR1)
    return original(self, batch, weight, sync)
Trainer.micro_step = micro_step
out["cut"] = run("cut")
out["cut"]["latest"] = json.loads((tmp / "cut" / "checkpoints" / "latest.json").read_text())["step"]
Trainer.micro_step = original
out["rest"] = run("cut", resume=True)
(tmp / f"rank{{rank}}.json").write_text(json.dumps(out))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_ranks_stop_at_the_same_step_when_one_is_signalled(tmp_path):
    random_store(tmp_path / "tr.zarr", n=4, size=32, seed=1)
    random_store(tmp_path / "vd.zarr", n=3, size=32, seed=2, prefix="v")
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS), tmp=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{TESTS}{os.pathsep}{TESTS.parent}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # 2 samples per rank per epoch, batch 1: 2 steps per epoch, 4 in all. Rank 1 is signalled in step 3.
    assert r1["cut"]["stopped"] == "SIGUSR1" and r0["cut"]["stopped"] == "a stop signal on another rank"
    assert r0["cut"]["step"] == r1["cut"]["step"] == 3
    # Read before the resumed run, which moves latest.json on to step 4.
    assert r0["cut"]["latest"] == r1["cut"]["latest"] == 3
    for r in (r0, r1):
        assert len(r["full"]["losses"]) == 4
        assert r["cut"]["losses"] + r["rest"]["losses"] == r["full"]["losses"]  # exact, on both ranks
        assert r["cut"]["val"] + r["rest"]["val"] == r["full"]["val"]
    wf, wc = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(wf[k], wc[k]) for k in wf)


def _tree(path: Path) -> dict:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


def _fail_on(monkeypatch, target: str, name: str, exc: Exception) -> None:
    """Make ckpt.<target> raise `exc` when it writes a file called `name` (the others still work)."""
    original = getattr(ckpt, target)

    def failing(*args, **kwargs):
        path = Path(args[1] if target == "save_file" else args[0])
        if path.name == name:
            if target == "save_file":  # a partial file, as a real full disk leaves one
                path.write_bytes(b"\0" * 100)
            raise exc
        return original(*args, **kwargs)

    monkeypatch.setattr(ckpt, target, failing)


@pytest.mark.parametrize(
    ("target", "name", "exc"),
    [
        ("save_file", "optimizer.safetensors", OSError(errno.ENOSPC, "No space left on device")),
        ("save_file", "rng.safetensors", SafetensorError("Error while serializing: I/O error: No space left")),
        ("_fsync", "state.json", OSError(errno.EIO, "Input/output error")),
        ("_write_json", "latest.json", OSError(errno.ENOSPC, "No space left on device")),
    ],
)
def test_a_failed_checkpoint_write_names_it_and_keeps_the_previous_one(
    tmp_path, stores, monkeypatch, target, name, exc
):
    kw = dict(epochs=1, ckpt_every=1, keep=10)
    train(toy_cfg(tmp_path, [stores[0]], max_steps=2, **kw), model=toy())
    ckdir = tmp_path / "run" / "checkpoints"
    before = _tree(ckdir)
    _fail_on(monkeypatch, target, name, exc)
    with pytest.raises(ckpt.CheckpointWriteError, match=rf"cannot write checkpoint {ckdir / 'step_00000003'}: ") as err:
        train(toy_cfg(tmp_path, [stores[0]], resume=True, max_steps=3, **kw), model=toy())
    assert "latest.json still points at step_00000002, intact" in str(err.value)
    monkeypatch.undo()
    after = _tree(ckdir)
    assert {k: v for k, v in after.items() if not k.startswith("step_00000003/")} == before  # nothing else changed
    assert not [p for p in ckdir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]  # no partial folder
    if target != "_write_json":
        assert not (ckdir / "step_00000003").exists()
    assert ckpt.resolve(ckdir).name == "step_00000002"
    # The run resumes from the intact checkpoint to the uninterrupted result.
    again = train(toy_cfg(tmp_path, [stores[0]], resume=True, **kw), model=toy(seed=5))
    full = train(toy_cfg(tmp_path, [stores[0]], name="full", **kw), model=toy())
    assert again.losses == full.losses[2:]


def test_a_failed_best_model_write_changes_neither_pointer_nor_file(tmp_path, stores, monkeypatch):
    from pdfnet_pipeline.train import checkpoint

    run = tmp_path / "run"
    ckdir, best = run / "checkpoints", run / "best.safetensors"
    checkpoint.save_checkpoint(ckdir, toy(), torch.optim.AdamW(toy().parameters()), None, checkpoint.TrainState(step=1),
                               config={}, model_config={})  # fmt: skip
    checkpoint.mark_best(ckdir, run, ckdir / "step_00000001", {"max_f": 0.5})
    before = (best.read_bytes(), (ckdir / "best.json").read_text())
    checkpoint.save_checkpoint(ckdir, toy(seed=1), torch.optim.AdamW(toy().parameters()), None,
                               checkpoint.TrainState(step=2), config={}, model_config={})  # fmt: skip

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "link", no_space)
    monkeypatch.setattr(checkpoint.shutil, "copyfile", no_space)
    with pytest.raises(checkpoint.CheckpointWriteError, match=r"cannot mark .*step_00000002 as best .*No space left"):
        checkpoint.mark_best(ckdir, run, ckdir / "step_00000002", {"max_f": 0.9})
    assert (best.read_bytes(), (ckdir / "best.json").read_text()) == before
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "checkpoints"]


def _damage_chunk(store_path: Path, array: str, row: int) -> None:
    """Flip bytes in the middle of one chunk file on disk (files rot)."""
    chunk = next((store_path / array / "c" / str(row)).rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    data = bytearray(chunk.read_bytes())
    for k in range(8):
        data[len(data) // 2 + k] ^= 0xFF
    chunk.write_bytes(bytes(data))


def test_an_undecodable_chunk_stops_training_naming_store_and_sample(tmp_path, stores):
    _damage_chunk(stores[0], "image", 3)
    with pytest.raises(store_mod.StoreReadError) as err:
        train(toy_cfg(tmp_path, [stores[0]], workers=1), model=toy())  # through a DataLoader worker
    msg = str(err.value)
    assert msg.startswith(
        f"{stores[0]}: sample 3 (s3): image does not decode (ValueError: Stored and computed checksum"
    )
    assert "\n" not in msg and msg.endswith("(data.on_error=skip would skip it)")


def test_on_error_skip_leaves_the_sample_out_and_counts_it(tmp_path, stores):
    """Batch 1: the damaged sample's step updates nothing; the log counts it in step and epoch records."""
    _damage_chunk(stores[0], "mask", 3)
    _damage_chunk(stores[1], "depth/large", 0)
    cfg = toy_cfg(tmp_path, [stores[0]], [stores[1]], workers=1, epochs=1, ckpt_every=1, keep=10)
    cfg.data.on_error = "skip"
    result = train(cfg, model=toy())
    position = [i for _, i in iter(EpochSampler(5, shuffle=True, seed=0))].index(3) + 1  # its step
    assert result.losses[position - 1] == 0.0 and all(v > 0 for k, v in enumerate(result.losses) if k != position - 1)
    if position > 1:  # no update in that step
        w = {s: load_model_file(tmp_path / "run" / "checkpoints" / f"step_{s:08d}") for s in (position - 1, position)}
        assert all(torch.equal(w[position - 1][k], w[position][k]) for k in w[position])
    recs = records(tmp_path / "run")
    assert [r.get("skipped", 0) for r in recs if r["kind"] == "step"] == [int(s == position) for s in range(1, 6)]
    epoch = recs[-1]
    assert epoch["kind"] == "epoch" and epoch["skipped"] == 1 and epoch["val_skipped"] == 1
    assert result.val[0]["skipped"] == 1


def load_model_file(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_a_signal_in_the_very_last_step_finishes_normally(tmp_path, stores, monkeypatch):
    """Nothing is left to resume: no Preempted (exit 75) for a run that completed."""
    made = signal_at(monkeypatch, 5, signal.SIGTERM)  # epochs=1: micro-step 5 is the last
    result = train(toy_cfg(tmp_path, [stores[0]], epochs=1), model=toy())
    assert len(made) == 5 and result.state.step == 5 and result.stopped == ""
