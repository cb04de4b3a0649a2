"""Tests that fail when learning breaks (values, never timings).

1. The trainer adds nothing to a step: through `stage run train`'s code path (augmentation off)
   its first losses equal a plain, hand-written AdamW loop over the same model and batches.
2. Training learns: the demo recipe on a handful of generated scenes reaches validation
   F_max >= 0.95, and the eval stage, run on that run's best checkpoint, reports it.
A run whose masks are flipped against their images, or whose lr is 0, stays far below test 2's bar
(shown once in the issue's note: see the README's "The demo").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import write_store

from pdfnet_pipeline.config import from_dict, load_stage_dict
from pdfnet_pipeline.data.manifest import scan, write_manifest
from pdfnet_pipeline.data.sample import generate_sample
from pdfnet_pipeline.data.scenes import make_scene

SIZE = 256  # the tiny preset's smallest input (8 x 8 tiles of a stride-32 map)
HELD_OUT = ["DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4"]


def scenes_store(path: Path, n: int) -> Path:
    """n generated shapes scenes at SIZE², with a smooth depth ramp (any map does for test 1)."""
    images, masks = [], []
    for i in range(n):
        image, mask, _ = make_scene("shapes", 0, "DIS-TR", i)
        images.append(np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR)))
        masks.append(np.asarray(Image.fromarray(mask).resize((SIZE, SIZE), Image.BILINEAR)))
    ramp = np.linspace(0.1, 0.9, SIZE, dtype=np.float32)[None, :, None] * np.ones((n, 1, SIZE), np.float32)
    depths = {
        name: (ramp + 0.02 * k).astype(np.float16) for k, name in enumerate(("small", "base", "large", "large_1024"))
    }
    return write_store(path, np.stack(images), np.stack(masks), depths, [f"s{i}" for i in range(n)])


def _train_cfg(run_dir: Path, train_stores, val_stores, sets: list[str]):
    from pdfnet_pipeline.train import stage

    base = [
        f'run_dir="{run_dir}"',
        f"data.train_stores={json.dumps([str(p) for p in train_stores])}",
        f"data.val_stores={json.dumps([str(p) for p in val_stores])}",
        "progress=false",
    ]
    return from_dict(stage.Config, load_stage_dict("train", "demo", base + sets))


def _plain_adamw_losses(cfg, store_path: Path, steps: int) -> list[float]:
    """What a newcomer would write: seed, build, AdamW (no decay on 1-D params), the sampler's
    order, ImageNet-normalised images, `out.losses["total"]`, backward, step."""
    from torch.utils.data import DistributedSampler

    from pdfnet_pipeline import store
    from pdfnet_pipeline.model import build_pdfnet

    torch.manual_seed(cfg.seed)
    model = build_pdfnet(cfg.model)
    torch.manual_seed(cfg.seed)
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.endswith(".bias"))]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    st = store.open_read(store_path)
    n = len(st.ids)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    total = cfg.epochs * math.ceil(n / cfg.batch_size)
    losses, step = [], 0
    for epoch in range(cfg.epochs):
        order = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=cfg.seed)
        order.set_epoch(epoch)
        order = list(order)
        for b in range(0, n, cfg.batch_size):
            samples = [st.sample(i, ("large", "large_1024")) for i in order[b : b + cfg.batch_size]]
            image = torch.stack([torch.from_numpy(np.array(s.image)) for s in samples]).permute(0, 3, 1, 2)
            image = (image.float() / 255 - mean) / std
            depth = torch.stack([torch.from_numpy(np.array(s.depth["large"], np.float32)) for s in samples])[:, None]
            target = torch.stack([torch.from_numpy(np.array(s.depth["large_1024"], np.float32)) for s in samples])
            mask = torch.stack([torch.from_numpy(np.array(s.mask)) for s in samples])[:, None].float() / 255
            # Linear warm-up, then cosine to min_lr over the run's steps.
            if step < o.warmup_steps:
                lr = o.lr * (step + 1) / o.warmup_steps
            else:
                progress = (step - o.warmup_steps) / max(total - o.warmup_steps, 1)
                lr = o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))
            for g in opt.param_groups:
                g["lr"] = lr
            out = model(image, depth, mask=mask, depth_target=target[:, None])
            loss = out.losses["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step == steps:
                return losses
    return losses


def test_learn_trainer_steps_equal_a_plain_adamw_loop(tmp_path):
    from pdfnet_pipeline.train.loop import train

    path = scenes_store(tmp_path / "tr.zarr", 4)
    off = ["hflip=0.0", "rotate=0.0", "enhance=0.0", "grayscale=0.0", "crop=0.0"]
    sets = [f"data.augment.{a}" for a in off] + [
        'data.depth_inputs=["large"]',
        "data.workers=0",
        "epochs=2",
        "val_every=0",
        "optim.warmup_steps=2",
    ]
    cfg = _train_cfg(tmp_path / "run", [path], [], sets)
    assert cfg.batch_size == 2 and cfg.optim.schedule == "cosine"  # the demo recipe, augmentation off
    result = train(cfg)
    want = _plain_adamw_losses(cfg, path, steps=4)
    assert len(result.losses) == 4
    # The same arithmetic but for the image's memory layout (channels-last here): float rounding.
    np.testing.assert_allclose(result.losses, want, rtol=2e-5)
    assert want[0] != pytest.approx(want[-1], rel=1e-3)  # the loop did move


# The demo recipe, shortened to the suite's budget: 6 scenes, 5 epochs of 3 steps.
LEARN_SETS = ["epochs=5", "data.workers=0", "optim.warmup_steps=3"]


def learn_run(root: Path, extra_sets: tuple[str, ...] = (), flip_masks: bool = False):
    """shapes scenes -> manifest -> depth stage (tiny random DAM) -> train (the demo recipe,
    shortened). `extra_sets` / `flip_masks` break it on purpose (what test 2 must catch)."""
    from pdfnet_pipeline.depth import stage as depth_stage
    from pdfnet_pipeline.train.loop import train

    generate_sample(root / "data", per_split=2, train=6, seed=0, style="shapes")
    if flip_masks:  # training masks inverted against their images: learning the wrong thing
        for gt in (root / "data" / "DIS-TR" / "gt").glob("*.png"):
            Image.fromarray(255 - np.asarray(Image.open(gt))).save(gt)
    manifest = root / "m.jsonl"
    write_manifest(scan(root / "data", ["DIS-TR", *HELD_OUT], workers=1, progress=False).manifest, manifest)
    sets = [f'manifest="{manifest}"', f'stores="{root / "stores"}"', "workers=0"]
    depth_stage.run(from_dict(depth_stage.Config, load_stage_dict("depth", "demo", sets)))
    stores = root / "stores"
    cfg = _train_cfg(root / "run", [stores / "DIS-TR.zarr"], [stores / "DIS-VD.zarr"], LEARN_SETS + list(extra_sets))
    return root, manifest, train(cfg)


def check_learnt(root: Path, manifest: Path, result) -> None:
    """Test 2's bar: validation F_max >= 0.95, learnt during the run, and the eval stage (the best
    checkpoint, native-size GT) reports it on the same images."""
    from pdfnet_pipeline.eval import stage

    curve = [v["max_f"] for v in result.val]
    assert max(curve) >= 0.95, f"validation F_max per epoch {curve}: the model did not learn the scenes"
    sets = [f'stores="{root / "stores"}"', f'manifest="{manifest}"', f'run_dir="{root / "run"}"', "metric_workers=1"]
    stage.run(from_dict(stage.Config, load_stage_dict("eval", "demo", sets)))
    data = json.loads((root / "run" / "eval" / "results.json").read_text())
    vd = data["splits"]["DIS-VD"]
    assert vd["Fmax"] >= 0.93 and abs(vd["Fmax"] - max(curve)) < 0.03, (vd, curve)
    before = data["before"]["DIS-VD"]["Fmax"]
    assert before < 0.9, before  # it learnt during the run: the initial weights score far lower


@pytest.fixture(scope="module")
def learnt(tmp_path_factory):
    return learn_run(tmp_path_factory.mktemp("learn"))


@pytest.mark.slow
def test_learn_generated_scenes_reach_f_095_and_eval_reports_it(learnt):
    check_learnt(*learnt)
