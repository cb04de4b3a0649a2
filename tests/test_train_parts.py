"""Trainer parts: LR function, parameter groups, checkpoint round trip, in-loop max-F / MAE."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdfnet_pipeline.train import checkpoint as ckpt
from pdfnet_pipeline.train.optim import OptimConfig, build_optimizer, lr_at, param_groups
from pdfnet_pipeline.train.validate import ValScores, fmeasure_mae

FIXTURE = Path(__file__).parent / "data" / "pysodmetrics_fixture"  # copied from ../shared (MIT)


def test_lr_constant_paper_default_and_warmup_cosine():
    paper = OptimConfig()
    assert [lr_at(s, 1000, paper) for s in (0, 10, 999)] == [1e-5, 1e-5, 1e-5]
    cos = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=4, min_lr=0.1)
    assert [lr_at(s, 104, cos) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 104, cos) == 1.0
    assert lr_at(54, 104, cos) == pytest.approx(0.55)  # halfway: min + (max - min) / 2
    assert lr_at(104, 104, cos) == pytest.approx(0.1) and lr_at(500, 104, cos) == pytest.approx(0.1)
    assert lr_at(29, 104, cos) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.25)))


def test_no_weight_decay_on_biases_and_1d_params():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4  # conv bias, LN weight + bias, linear bias


def _toy():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Dropout(0.5), torch.nn.Linear(5, 1))


def _step(model, opt):
    loss = model(torch.randn(4, 3)).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def test_checkpoint_round_trip_restores_everything_bit_exactly(tmp_path):
    model = _toy()
    opt = build_optimizer(model, OptimConfig(lr=1e-2), torch.device("cpu"))
    for _ in range(3):
        _step(model, opt)
    np.random.seed(3)
    random.seed(4)
    state = ckpt.TrainState(step=3, epoch=1, position=2, best_max_f=0.5)
    path = ckpt.save_checkpoint(tmp_path / "c", model, opt, None, state, config={"a": 1}, model_config={"preset": "t"})
    expect = [_step(model, opt) for _ in range(3)] + [np.random.rand(), random.random()]
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    model2 = _toy()
    opt2 = build_optimizer(model2, OptimConfig(lr=1e-2), torch.device("cpu"))
    got_state, config = ckpt.load_checkpoint(tmp_path / "c", model2, opt2, None, model_config={"preset": "t"})
    assert got_state == state and config == {"a": 1}
    got = [_step(model2, opt2) for _ in range(3)] + [np.random.rand(), random.random()]
    assert got == expect  # same dropout masks, same Adam moments, same numpy / python RNG
    for k, v in model2.state_dict().items():
        assert torch.equal(v, weights[k])
    doc = json.loads((path / "state.json").read_text())
    assert doc["train"]["position"] == 2 and doc["model_config"] == {"preset": "t"}


def test_checkpoint_refuses_another_architecture_but_not_other_training_settings(tmp_path):
    model = _toy()
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    mc = {"preset": "tiny", "variant": "paper", "drop_path": 0.1, "backbone_weights": "random"}
    ckpt.save_checkpoint(tmp_path / "c", model, opt, None, ckpt.TrainState(), config={}, model_config=mc)
    ok = dict(mc, drop_path=0.0, backbone_weights="x.pth")
    ckpt.load_checkpoint(tmp_path / "c", _toy(), None, None, model_config=ok)
    with pytest.raises(ckpt.CheckpointError, match="variant"):
        ckpt.load_checkpoint(tmp_path / "c", _toy(), None, None, model_config=dict(mc, variant="v2"))


def test_keep_recent_latest_and_best(tmp_path):
    model = _toy()
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    d = tmp_path / "checkpoints"
    for step in range(1, 7):
        p = ckpt.save_checkpoint(d, model, opt, None, ckpt.TrainState(step=step), config={}, model_config={}, keep=2)
        if step == 2:
            ckpt.mark_best(d, tmp_path, p, {"max_f": 0.9})
    names = sorted(x.name for x in d.iterdir() if x.is_dir())
    assert names == ["step_00000002", "step_00000005", "step_00000006"]
    assert ckpt.resolve(tmp_path) == d / "step_00000006"
    assert ckpt.resolve(tmp_path, "best") == d / "step_00000002"
    assert (tmp_path / "best.safetensors").stat().st_ino == (d / "step_00000002" / "model.safetensors").stat().st_ino
    assert not [x for x in d.iterdir() if ".tmp" in x.name]


def _sod_reference(preds, gts):
    import warnings

    import py_sod_metrics as M

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm, mae = M.Fmeasure(), M.MAE()
    for p, g in zip(preds, gts):
        fm.step(pred=p, gt=g)
        mae.step(pred=p, gt=g)
    return fm.get_results()["fm"]["curve"].max(), mae.get_results()["mae"]


def test_maxf_and_mae_match_pysodmetrics_on_its_fixture():
    names = sorted(p.name for p in (FIXTURE / "preds").iterdir())
    preds = [np.array(Image.open(FIXTURE / "preds" / n).convert("L")) for n in names]
    gts = [np.array(Image.open(FIXTURE / "masks" / n).convert("L")) for n in names]
    scores = ValScores(torch.device("cpu"))
    for p, g in zip(preds, gts):  # different sizes: one image per update
        scores.update(torch.from_numpy(p)[None], torch.from_numpy(g)[None])
    res = ValScores.result(scores.packed())
    assert res["count"] == 3
    assert res["max_f"] == pytest.approx(0.5886784581120638, abs=1e-12)  # upstream's expected values
    assert res["mae"] == pytest.approx(0.03705558476661653, abs=1e-12)


def test_maxf_batched_equals_reference_on_random_maps():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 256, (4, 40, 30), dtype=np.uint8)
    preds[1] = 77  # constant prediction: no min-max stretch
    gts = (rng.random((4, 40, 30)) > 0.6).astype(np.uint8) * 255
    gts[2] = 0  # empty GT
    curves, mae = fmeasure_mae(torch.from_numpy(preds), torch.from_numpy(gts))
    ref_f, ref_mae = _sod_reference(list(preds), list(gts))
    assert curves.mean(0).max().item() == pytest.approx(ref_f, abs=1e-12)
    assert mae.mean().item() == pytest.approx(ref_mae, abs=1e-12)


def test_accumulation_windows_cover_the_epoch_with_exact_sample_counts():
    from pdfnet_pipeline.train.optim import Window, accumulation_windows

    # 7 samples, batch 2 -> micro-batches of 2,2,2,1; accum 3 -> windows [0,3) of 6 and [3,4) of 1
    assert accumulation_windows(7, 2, 3) == [Window(0, 3, 6), Window(3, 4, 1)]
    assert accumulation_windows(8, 2, 2) == [Window(0, 2, 4), Window(2, 4, 4)]
    assert accumulation_windows(5, 1, 1) == [Window(i, i + 1, 1) for i in range(5)]
    assert accumulation_windows(3, 4, 0) == [Window(0, 1, 3)]  # accum 0 means 1; one short micro-batch
    w = accumulation_windows(7, 2, 3)[0]
    assert [w.weight(n) for n in (2, 2, 2)] == [1 / 3] * 3 and accumulation_windows(7, 2, 3)[1].weight(1) == 1.0


def test_resume_keeps_channels_last_moments_aligned_with_fused_adamw(tmp_path):
    """Saved moments come back contiguous; with a channels-last weight the fused kernel would pair
    each weight with another element's moments unless the layout is restored on load."""

    def make():
        torch.manual_seed(0)
        m = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        return m, torch.optim.AdamW(m.parameters(), lr=0.1, fused=True)

    def step(m, opt, seed):
        torch.manual_seed(seed)
        x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
        m(x).square().mean().backward()
        opt.step()
        opt.zero_grad()

    a, opt_a = make()
    step(a, opt_a, 1)
    ckpt.save_checkpoint(tmp_path, a, opt_a, None, ckpt.TrainState(step=1), config={}, model_config={}, keep=1)
    step(a, opt_a, 2)
    b, opt_b = make()
    ckpt.load_checkpoint(tmp_path, b, opt_b, None, model_config={}, restore_rng=False)
    assert opt_b.state[b.weight]["exp_avg"].stride() == b.weight.stride()
    step(b, opt_b, 2)
    torch.testing.assert_close(b.weight, a.weight, rtol=0, atol=0)
