"""What a person watches while training: initial.safetensors (the "before" model), one line per
epoch, curve.png (train/curve.py) and the optional TensorBoard events, across resumes."""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_train_loop import toy, toy_cfg
from train_fixtures import TIMING, sample_store, toy_stores

from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.train import checkpoint as ckpt
from pdfnet_pipeline.train.config import LogConfig
from pdfnet_pipeline.train.curve import plot_training_curve, read_metrics
from pdfnet_pipeline.train.loop import TB_TAGS, seed_all, train

CURVE_SIZE = (1210, 495)  # 11 x 4.5 inches at 110 dpi, as eval's curves.png


@pytest.fixture()
def stores(tmp_path):
    return toy_stores(tmp_path)


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run / "metrics.jsonl")]


def test_initial_weights_are_the_built_model_and_a_resume_leaves_them(tmp_path):
    """Tiny PDFNet at 256 px: initial.safetensors is the model `build_model` makes with the run's
    seed (a model file eval loads), not the best one; the resumed run does not touch it."""
    from pdfnet_pipeline.model import build_pdfnet
    from pdfnet_pipeline.model.checkpoint import load_model

    tr = sample_store(tmp_path / "tr.zarr", "DIS-TR", 2, 256)
    vd = sample_store(tmp_path / "vd.zarr", "DIS-VD", 1, 256)
    cfg = toy_cfg(tmp_path, [tr], [vd], epochs=1, max_steps=1)  # stops mid-epoch after step 1
    train(cfg)
    initial = cfg.run_dir / "initial.safetensors"
    seed_all(cfg.seed)
    fresh = build_pdfnet(cfg.model).state_dict()
    saved = load_model(initial).state_dict()
    assert set(saved) == set(fresh) and all(torch.equal(saved[k], fresh[k]) for k in fresh)
    assert not [p for p in cfg.run_dir.iterdir() if ".tmp" in p.name]
    stat = initial.stat()
    train(toy_cfg(tmp_path, [tr], [vd], epochs=1, resume=True))  # step 2, validation, best
    again = initial.stat()
    assert (again.st_ino, again.st_mtime_ns, again.st_size) == (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    best = load_model(cfg.run_dir / "best.safetensors").state_dict()
    assert any(not torch.equal(best[k], fresh[k]) for k in fresh)  # two steps at lr 1e-2 moved it
    assert Image.open(cfg.run_dir / "curve.png").size == CURVE_SIZE


def test_one_line_per_epoch_with_or_without_the_bar(tmp_path, stores, capsys):
    for progress in (False, True):
        name = f"p{int(progress)}"
        cfg = replace(toy_cfg(tmp_path, *[[s] for s in stores], name=name, epochs=3), progress=progress)
        train(cfg, model=toy())
        out = capsys.readouterr().out
        lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
        epochs = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["kind"] == "epoch"]
        best, expected = ckpt.TrainState().best_max_f, []
        for r in epochs:
            mark = " (best)" if r["val_max_f"] > best else ""
            best = max(best, r["val_max_f"])
            expected.append(
                f"epoch {r['epoch'] + 1}/3: train loss {r['train_loss']:.3f} | "
                f"val F_max {r['val_max_f']:.3f} MAE {r['val_mae']:.3f}{mark}"
            )
        assert lines == expected, out
        assert expected[0].endswith(" (best)")
    # the documented shape: epoch i/N: train loss x | val F_max y MAE z (best)
    assert re.fullmatch(r"epoch 1/3: train loss \d+\.\d{3} \| val F_max \d\.\d{3} MAE \d\.\d{3} \(best\)", lines[0])
    # no validation: the line has the train loss only
    train(toy_cfg(tmp_path, [stores[0]], name="noval", epochs=1), model=toy())
    loss = read_metrics(tmp_path / "noval" / "metrics.jsonl")[-1]["train_loss"]
    assert f"epoch 1/1: train loss {loss:.3f}\n" in capsys.readouterr().out


def test_curve_png_draws_the_records_with_the_random_label(tmp_path):
    steps = [{"kind": "step", "step": s, "epoch": (s - 1) // 4, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 13)]
    epochs = [
        {"kind": "epoch", "epoch": e, "step": 4 * (e + 1), "train_loss": 1.0 / (e + 1), "val_max_f": f, "val_mae": m}
        for e, (f, m) in enumerate([(0.4, 0.3), (0.7, 0.2), (0.6, 0.1)])
    ]
    label = "RANDOM-WEIGHT RUN: PDFNet backbone random - these numbers measure nothing"
    plain = plot_training_curve(steps + epochs, tmp_path / "plain.png")
    marked = plot_training_curve(steps + epochs, tmp_path / "marked.png", label)
    empty = plot_training_curve([], tmp_path / "empty.png")  # before the first logged step
    for path in (plain, marked, empty):
        assert Image.open(path).size == CURVE_SIZE
    top = np.asarray(Image.open(marked).convert("RGB"))[:30].reshape(-1, 3).astype(int)
    assert ((top[:, 0] > 200) & (top[:, 1] < 60) & (top[:, 2] < 60)).sum() > 100  # the red title
    top = np.asarray(Image.open(plain).convert("RGB"))[:10].reshape(-1, 3).astype(int)
    assert not ((top[:, 0] > 200) & (top[:, 1] < 60)).any()
    assert not list(tmp_path.glob(".*tmp*"))


def _cut_and_resume(tmp_path, stores, **kw) -> tuple[Path, Path]:
    """An uninterrupted run ("full") and one killed after logging step 7 whose last checkpoint is
    step 6 ("cut": step 7's checkpoint removed, as a kill -9 before its save leaves it), resumed."""
    kw = dict(ckpt_every=3, workers=0, **kw)
    train(toy_cfg(tmp_path, *[[s] for s in stores], name="full", **kw), model=toy(0.3))
    train(toy_cfg(tmp_path, *[[s] for s in stores], name="cut", max_steps=7, **kw), model=toy(0.3))
    ckdir = tmp_path / "cut" / "checkpoints"
    shutil.rmtree(ckdir / "step_00000007")
    (ckdir / "latest.json").write_text(json.dumps({"dir": "step_00000006", "step": 6, "epoch": 1}))
    assert _records(tmp_path / "cut")[-1]["step"] == 7  # a line past the checkpoint
    initial = (tmp_path / "cut" / "initial.safetensors").read_bytes()
    train(toy_cfg(tmp_path, *[[s] for s in stores], name="cut", resume=True, **kw), model=toy(0.3, seed=9))
    assert (tmp_path / "cut" / "initial.safetensors").read_bytes() == initial
    return tmp_path / "full", tmp_path / "cut"


def test_a_resumed_run_draws_the_uninterrupted_curve_and_keeps_initial(tmp_path, stores):
    full, cut = _cut_and_resume(tmp_path, stores)
    assert _records(cut) == _records(full)
    assert (cut / "curve.png").read_bytes() == (full / "curve.png").read_bytes()
    first = load_file(str(full / "initial.safetensors"))
    model = toy(0.3).state_dict()
    assert all(torch.equal(first[k], model[k]) for k in model)
    best = load_file(str(full / "best.safetensors"))
    assert any(not torch.equal(best[k], model[k]) for k in model)


def test_tensorboard_events_hold_the_metrics_jsonl_scalars_across_a_resume(tmp_path, stores):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    full, cut = _cut_and_resume(tmp_path, stores, log=LogConfig(tensorboard=True))
    for run in (full, cut):
        events = EventAccumulator(str(run / "tb"))
        events.Reload()
        expected = {}
        for r in read_metrics(run / "metrics.jsonl"):
            for key, tag in TB_TAGS[r["kind"]].items():
                if key in r:
                    expected.setdefault(tag, []).append((r["step"], r[key]))
        assert set(events.Tags()["scalars"]) == set(expected)
        for tag, points in expected.items():
            got = [(e.step, e.value) for e in events.Scalars(tag)]
            assert [s for s, _ in got] == [s for s, _ in points], tag  # step 7 of the killed run purged
            assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert len(expected["val/max_f"]) == 2 and len(expected["train/step_loss"]) == 10


def test_tensorboard_missing_fails_at_start_naming_the_install(tmp_path, stores, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    cfg = toy_cfg(tmp_path, [stores[0]], log=LogConfig(tensorboard=True))
    with pytest.raises(
        UserError, match=r"log.tensorboard = true needs the tensorboard package .*pip install tensorboard"
    ):
        train(cfg, model=toy())
    assert not cfg.run_dir.exists()  # nothing started
