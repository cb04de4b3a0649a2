"""The eval stage end to end on generated data: real depth stage (tiny random DAM), a tiny
random PDFNet checkpoint, metrics checked against pysodmetrics run on the written PNGs."""

import json
import re

import numpy as np
import py_sod_metrics as psm
import pytest
import torch
from PIL import Image

from pdfnet_pipeline.config import from_dict, load_stage_dict
from pdfnet_pipeline.data.manifest import scan, write_manifest
from pdfnet_pipeline.data.sample import generate_sample

SPLITS = ["DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from pdfnet_pipeline.depth import stage as depth_stage
    from pdfnet_pipeline.model.checkpoint import save_model
    from pdfnet_pipeline.model.pdfnet import PDFNetConfig, build_pdfnet

    root = tmp_path_factory.mktemp("evalstage")
    generate_sample(root / "data", per_split=1, train=0, seed=1)
    manifest = root / "m.jsonl"
    write_manifest(scan(root / "data", SPLITS, workers=1, progress=False).manifest, manifest)
    raw = load_stage_dict("depth", "smoke", [f'manifest="{manifest}"', f'stores="{root / "stores"}"', "workers=0"])
    depth_stage.run(from_dict(depth_stage.Config, raw))
    torch.manual_seed(0)
    ckpt = root / "run" / "model.safetensors"
    save_model(build_pdfnet(PDFNetConfig(preset="tiny")), ckpt)
    return root, manifest, ckpt


def _eval_cfg(root, manifest, ckpt, splits=SPLITS, **extra):
    from pdfnet_pipeline.eval import stage

    sets = [
        f'stores="{root / "stores"}"',
        f'manifest="{manifest}"',
        f'run_dir="{root / "run"}"',
        f'checkpoint="{ckpt}"',
        f"splits={json.dumps(splits)}",
        "metric_workers=1",
    ]
    sets += [f"{k}={json.dumps(v)}" for k, v in extra.items()]
    return stage, from_dict(stage.Config, load_stage_dict("eval", "smoke", sets))


@pytest.mark.slow
def test_eval_stage_outputs_and_metrics_match_pysodmetrics(built):
    root, manifest, ckpt = built
    stage, cfg = _eval_cfg(root, manifest, ckpt)
    results = stage.run(cfg)
    out = root / "run" / "eval"
    data = json.loads((out / "results.json").read_text())
    assert data["random_weights"] is True and "RANDOM-WEIGHT" in (out / "results.md").read_text()
    assert set(data["splits"]) == {*SPLITS, "DIS-TE (all)"}
    for name in ("results.csv", "curves.png", "contact_sheet.png"):
        assert (out / name).stat().st_size > 0
    # Independent check: pysodmetrics over the written PNGs and the native GT files.
    for split, group in (("DIS-VD", ["DIS-VD"]), ("DIS-TE (all)", SPLITS[1:])):
        fm, sm, mae = psm.Fmeasure(), psm.Smeasure(), psm.MAE()
        count = 0
        for s in group:
            for gt_path in sorted((root / "data" / s / "gt").iterdir()):
                pred = np.asarray(Image.open(out / "preds" / s / gt_path.name))
                gt = np.asarray(Image.open(gt_path))
                assert pred.shape == gt.shape and pred.dtype == np.uint8  # native size
                for m in (fm, sm, mae):
                    m.step(pred=pred, gt=gt)
                count += 1
        assert results[split]["count"] == count
        assert results[split]["Fmax"] == pytest.approx(fm.get_results()["fm"]["curve"].max(), abs=1e-12)
        assert results[split]["Sa"] == pytest.approx(sm.get_results()["sm"], abs=1e-12)
        assert results[split]["MAE"] == pytest.approx(mae.get_results()["mae"], abs=1e-12)
    # index.html: one gallery row per evaluated image, worst MAE first, each row's MAE pysodmetrics'.
    page = (out / "index.html").read_text()
    assert "<title>RANDOM WEIGHTS: PDFNet evaluation</title>" in page
    rows = re.findall(r'<tr data-split="([^"]*)" data-id="([^"]*)"[^>]* data-mae="([^"]*)"', page)
    assert sorted((s, i) for s, i, _ in rows) == sorted(
        (s, p.stem) for s in SPLITS for p in (root / "data" / s / "gt").iterdir()
    )
    maes = [float(m) for _, _, m in rows]
    assert maes == sorted(maes, reverse=True)
    for split, name, value in rows:
        one = psm.MAE()
        gt = np.asarray(Image.open(root / "data" / split / "gt" / f"{name}.png"))
        one.step(pred=np.asarray(Image.open(out / "preds" / split / f"{name}.png")), gt=gt)
        assert float(value) == pytest.approx(one.get_results()["mae"], abs=1e-12)
    assert len(list((out / "thumbs").iterdir())) == 5 * len(rows)


@pytest.mark.slow
def test_all_te_column_needs_all_four_test_splits(built, tmp_path):
    root, manifest, ckpt = built
    stage, cfg = _eval_cfg(root, manifest, ckpt, splits=["DIS-VD", "DIS-TE1"], out=str(tmp_path / "ev"))
    assert set(stage.run(cfg)) == {"DIS-VD", "DIS-TE1"}


@pytest.mark.slow
def test_default_splits_are_the_manifests_but_training_and_a_named_missing_one_is_an_error(built, tmp_path):
    """Custom data with only DIS-TR and DIS-VD (the documented fine-tuning layout) evaluates DIS-VD
    with no --set splits=...; naming a split without a store still fails by name."""
    from pdfnet_pipeline.store import StoreError

    root, manifest, ckpt = built
    custom = tmp_path / "custom.jsonl"
    lines = manifest.read_text().splitlines()
    vd = [ln for ln in lines[1:] if json.loads(ln)["split"] == "DIS-VD"]
    tr = [json.dumps({**json.loads(ln), "split": "DIS-TR"}) for ln in vd]  # a training split, no store needed
    custom.write_text("\n".join([lines[0], *tr, *vd]) + "\n")
    stage, cfg = _eval_cfg(root, custom, ckpt, splits=[], out=str(tmp_path / "ev"))
    assert set(stage.run(cfg)) == {"DIS-VD"}
    stage, cfg = _eval_cfg(root, custom, ckpt, splits=["DIS-VD", "DIS-TE9"], out=str(tmp_path / "ev2"))
    with pytest.raises(StoreError, match=r"DIS-TE9.zarr: no such store"):
        stage.run(cfg)


@pytest.mark.slow
def test_eval_refuses_a_store_from_another_manifest(built, tmp_path):
    root, manifest, ckpt = built
    other = tmp_path / "other.jsonl"
    lines = manifest.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["mask_sha256"] = "0" * 64  # a changed GT file
    other.write_text("\n".join([lines[0], json.dumps(entry), *lines[2:]]) + "\n")
    stage, cfg = _eval_cfg(root, other, ckpt)
    from pdfnet_pipeline.store import StoreError

    with pytest.raises(StoreError, match="built from another manifest"):
        stage.run(cfg)


def test_find_checkpoint_prefers_best_then_latest_model(tmp_path):
    from pdfnet_pipeline.eval.stage import find_checkpoint
    from pdfnet_pipeline.model.checkpoint import CheckpointError

    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000005"
    step.mkdir(parents=True)
    for name in ("model.safetensors", "rng.safetensors", "optimizer.safetensors"):
        (step / name).write_bytes(b"x")
    (step / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_checkpoint(run)
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"dir": step.name, "step": 5}))
    assert find_checkpoint(run) == step / "model.safetensors"  # never rng/optimizer files
    (run / "best.safetensors").write_bytes(b"x")
    assert find_checkpoint(run) == run / "best.safetensors"
