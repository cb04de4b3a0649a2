"""Training loop mechanics on a fast stand-in model: exact resume, accumulation, NaN guard, config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import DEPTHS, ToyNet, ToyOutput, toy_stores, write_store

from pdfnet_pipeline import config as cfgmod
from pdfnet_pipeline.data.dataset import DataConfig, EpochSampler
from pdfnet_pipeline.model import PDFNetConfig
from pdfnet_pipeline.train import checkpoint as ckpt
from pdfnet_pipeline.train.loop import NonFiniteError, train
from pdfnet_pipeline.train.optim import OptimConfig
from pdfnet_pipeline.train.stage import Config


def toy_cfg(tmp: Path, train_stores, val_stores=(), **kw) -> Config:
    data = DataConfig(train_stores=list(train_stores), val_stores=list(val_stores), workers=kw.pop("workers", 0))
    return Config(
        run_dir=tmp / kw.pop("name", "run"),
        epochs=kw.pop("epochs", 2),
        log_every=1,
        progress=False,
        val_every=1 if val_stores else 0,
        data=data,
        optim=OptimConfig(lr=kw.pop("lr", 1e-2)),
        model=PDFNetConfig(preset="tiny", backbone_weights="random"),
        **kw,
    )


def toy(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return ToyNet(dropout)


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["dir"]
    return load_file(str(run_dir / "checkpoints" / latest / "model.safetensors"))


@pytest.fixture()
def stores(tmp_path):
    return toy_stores(tmp_path)


def test_resume_continues_bit_exactly(tmp_path, stores):
    """Uninterrupted 2 epochs vs stop mid-epoch 1 (step 4 of 6) + resume: same losses, weights, scores."""
    kw = dict(accum_steps=2, epochs=2, workers=1)  # windows 2, 2, 1 per epoch: 3 steps
    full = train(toy_cfg(tmp_path, *[[s] for s in stores], name="full", **kw), model=toy(0.3))
    assert len(full.losses) == 6
    part = train(toy_cfg(tmp_path, *[[s] for s in stores], name="cut", max_steps=4, **kw), model=toy(0.3))
    assert part.state.step == 4 and part.state.epoch == 1 and part.state.position == 2
    # mid-epoch, the position only means the same samples with the same accumulation / batch / world
    with pytest.raises(ckpt.CheckpointError, match=r"cannot resume mid-epoch.*'accum_steps': \(2, 1\)"):
        train(
            toy_cfg(tmp_path, *[[s] for s in stores], name="cut", resume=True, **dict(kw, accum_steps=1)),
            model=toy(0.3),
        )
    rest = train(toy_cfg(tmp_path, *[[s] for s in stores], name="cut", resume=True, **kw), model=toy(0.3, seed=99))
    assert part.losses + rest.losses == full.losses  # bit-exact floats
    assert rest.val == full.val[1:]
    wf, wr = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "step"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    # a different seed would not give these losses: the comparison can fail
    other = train(toy_cfg(tmp_path, *[[s] for s in stores], name="other", seed=1, **kw), model=toy(0.3))
    assert other.losses != full.losses


def test_accumulation_matches_the_larger_batch(tmp_path, stores):
    """batch 2 vs 2 x batch 1 accumulated, over 5 samples: the last window holds one sample."""
    a = train(toy_cfg(tmp_path, [stores[0]], name="b2", batch_size=2, epochs=1), model=toy())
    b = train(toy_cfg(tmp_path, [stores[0]], name="acc", batch_size=1, accum_steps=2, epochs=1), model=toy())
    assert len(a.losses) == len(b.losses) == 3
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)
    wa, wb = weights(tmp_path / "b2"), weights(tmp_path / "acc")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    # weighting the single-sample last window by 1/accum would differ visibly
    c = train(toy_cfg(tmp_path, [stores[0]], name="b1", batch_size=1, epochs=1), model=toy())
    assert not np.allclose(c.losses[:3], a.losses, rtol=1e-3)


def test_nan_stops_with_step_and_ids_and_leaves_checkpoint_untouched(tmp_path):
    rng = np.random.default_rng(0)
    n, s = 4, 32
    images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    masks = rng.integers(0, 256, (n, s, s), dtype=np.uint8)
    depths = {k: rng.random((n, s, s)).astype(np.float16) for k in DEPTHS}
    order = [i for _, i in iter(EpochSampler(n, shuffle=True, seed=0))]
    bad = order[2]  # the third sample of epoch 0: steps 1 and 2 are fine
    for k in DEPTHS:
        depths[k][bad, 12:20, 12:20] = np.nan  # central: survives any crop
    path = write_store(tmp_path / "nan.zarr", images, masks, depths, [f"id{i}" for i in range(n)])
    train(toy_cfg(tmp_path, [path], max_steps=2), model=toy())
    ckdir = tmp_path / "run" / "checkpoints"
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckdir.rglob("*") if p.is_file()}
    with pytest.raises(NonFiniteError, match=rf"step 3 .*\['id{bad}'\]"):
        train(toy_cfg(tmp_path, [path], resume=True), model=toy())
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckdir.rglob("*") if p.is_file()}
    assert after == before


def test_stage_toml_defaults_are_the_paper_recipe_and_smoke_is_tiny():
    paper = cfgmod.from_dict(Config, cfgmod.load_stage_dict("train", "paper"))
    assert (paper.optim.lr, paper.optim.weight_decay, paper.optim.schedule) == (1e-5, 1e-4, "constant")
    assert (paper.batch_size, paper.epochs, paper.model.drop_path, paper.model.preset) == (1, 100, 0.1, "reference")
    assert paper.model.backbone_weights == "swin_base_patch4_window12_384.ms_in22k_ft_in1k"
    smoke = cfgmod.from_dict(Config, cfgmod.load_stage_dict("train", "smoke"))
    assert (smoke.model.preset, smoke.model.backbone_weights, smoke.device) == ("tiny", "random", "cpu")
    with pytest.raises(cfgmod.ConfigError):
        cfgmod.from_dict(Config, cfgmod.load_stage_dict("train", "smoke", ["optim.lrr=1"]))


def test_bf16_autocast_path_trains_on_cpu(tmp_path, stores):
    f32 = train(toy_cfg(tmp_path, [stores[0]], name="f32", epochs=1), model=toy())
    b16 = train(toy_cfg(tmp_path, [stores[0]], name="b16", epochs=1, precision="bf16"), model=toy())
    assert all(np.isfinite(b16.losses)) and b16.losses != f32.losses  # autocast really ran in bf16
    np.testing.assert_allclose(b16.losses, f32.losses, rtol=0.05)


class GradBomb(ToyNet):
    """ToyNet whose loss stays finite but whose gradients are NaN for a sample with an all-zero depth
    input: + 0.01 * sqrt(sigmoid(bias) * flag) is 0 there, sqrt's derivative at 0 is inf, x 0 = NaN."""

    def forward(self, image, depth, mask=None, depth_target=None):
        out = super().forward(image, depth, mask, depth_target)
        flag = (depth.flatten(1).amax(1) > 0).float().view(-1, 1)
        bomb = torch.sqrt(torch.sigmoid(self.conv2.bias).view(1, -1) * flag).mean()
        return ToyOutput({"total": out.losses["total"] + 0.01 * bomb})


@pytest.mark.parametrize("accum", [1, 2])
def test_nonfinite_gradients_with_finite_loss_stop_naming_step_and_samples(tmp_path, accum):
    rng = np.random.default_rng(0)
    n, s = 4, 32
    images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    masks = rng.integers(0, 256, (n, s, s), dtype=np.uint8)
    depths = {k: (0.1 + rng.random((n, s, s))).astype(np.float16) for k in DEPTHS}
    order = [i for _, i in iter(EpochSampler(n, shuffle=True, seed=0))]
    bad = order[2]  # the third sample of epoch 0
    for k in ("small", "base", "large"):
        depths[k][bad] = 0.0  # stays 0 under any warp; the loss stays finite
    path = write_store(tmp_path / "g.zarr", images, masks, depths, [f"id{i}" for i in range(n)])
    good_steps = 2 // accum  # steps before the window holding `bad`
    first = train(toy_cfg(tmp_path, [path], max_steps=good_steps, accum_steps=accum), model=GradBomb())
    assert len(first.losses) == good_steps and all(np.isfinite(first.losses))
    ckdir = tmp_path / "run" / "checkpoints"
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckdir.rglob("*") if p.is_file()}
    window = [f"id{i}" for i in order[2 // accum * accum : 2 // accum * accum + accum]]
    assert f"id{bad}" in window
    with pytest.raises(NonFiniteError) as err:
        train(toy_cfg(tmp_path, [path], resume=True, accum_steps=accum), model=GradBomb())
    msg = str(err.value)
    assert f"non-finite gradients at optimizer step {good_steps + 1} (epoch 0)" in msg, msg
    assert f"samples {window}" in msg, msg
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckdir.rglob("*") if p.is_file()}
    assert after == before and len(before) == 5  # latest.json + model / optimizer / rng / state
    assert json.loads((ckdir / "latest.json").read_text())["step"] == good_steps
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, good_steps + 1))  # no line for the refused step


def test_max_steps_at_an_epochs_end_then_resume_matches_the_uninterrupted_log(tmp_path, stores):
    """Stopping on an epoch's last step closes that epoch (train_loss, validation, save) first, so the
    resumed run's metrics.jsonl equals the uninterrupted one apart from timings."""
    full = train(toy_cfg(tmp_path, *[[s] for s in stores], name="full"), model=toy(0.3))
    part = train(toy_cfg(tmp_path, *[[s] for s in stores], name="cut", max_steps=5), model=toy(0.3))
    assert (part.state.step, part.state.epoch, part.state.position) == (5, 1, 0) and len(part.val) == 1
    rest = train(toy_cfg(tmp_path, *[[s] for s in stores], name="cut", resume=True), model=toy(0.3, seed=9))
    assert part.losses + rest.losses == full.losses and part.val + rest.val == full.val

    def records(run):
        timing = {"time", "seconds", "samples_per_s"}
        return [
            {k: v for k, v in json.loads(x).items() if k not in timing}
            for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]

    assert records("cut") == records("full") and len(records("full")) == 12  # 2 x (5 steps + epoch)
    assert "train_loss" in records("cut")[5] and "val_max_f" in records("cut")[5]
