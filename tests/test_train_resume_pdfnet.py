"""Exact resume on the real tiny PDFNet (drop path, CoA dropout, depth decoder, Swin): 3 steps
uninterrupted vs 1 step + resume to 3, at 256² on 2 samples (the resumed part crosses an epoch end
with validation). Losses equal to the last bit, weights and Adam moments identical."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from train_fixtures import sample_store

from pdfnet_pipeline.data.dataset import DataConfig
from pdfnet_pipeline.model import PDFNetConfig
from pdfnet_pipeline.train.loop import train
from pdfnet_pipeline.train.optim import OptimConfig
from pdfnet_pipeline.train.stage import Config


def test_tiny_pdfnet_resume_is_bit_exact(tmp_path):
    tr = sample_store(tmp_path / "tr.zarr", "DIS-TR", 2, 256)
    vd = sample_store(tmp_path / "vd.zarr", "DIS-VD", 1, 256)

    def cfg(name: str, **kw) -> Config:
        kw = {"max_steps": 3, **kw}
        return Config(
            run_dir=tmp_path / name,
            epochs=2,
            device="cpu",
            precision="fp32",
            log_every=1,
            progress=False,
            val_every=1,
            val_images=0,
            data=DataConfig(train_stores=[tr], val_stores=[vd], workers=0),
            optim=OptimConfig(lr=1e-3),
            model=PDFNetConfig(preset="tiny", backbone_weights="random", drop_path=0.1),
            **kw,
        )

    full = train(cfg("full"))
    part = train(cfg("cut", max_steps=1))
    assert (part.state.step, part.state.epoch, part.state.position) == (1, 0, 1)
    rest = train(cfg("cut", resume=True))
    assert len(full.losses) == 3 and len(set(full.losses)) == 3
    assert part.losses + rest.losses == full.losses  # bit-exact floats
    assert rest.val == full.val and len(full.val) == 1  # validation after epoch 0
    ck_full, ck_cut = (tmp_path / r / "checkpoints" / "step_00000003" for r in ("full", "cut"))
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(ck_full / name)), load_file(str(ck_cut / name))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = (json.loads((c / "state.json").read_text())["train"] for c in (ck_full, ck_cut))
    assert sa == sb and sa["step"] == 3 and sa["epoch"] == 1 and sa["position"] == 1
