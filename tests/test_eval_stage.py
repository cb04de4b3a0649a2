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


def test_sheet_rows_are_the_highest_and_lowest_f_not_the_lowest_mae():
    from pdfnet_pipeline.eval.stage import sheet_choice

    def s(split, name, f, mae):
        return {"split": split, "id": name, "max_f": f, "mae": mae}

    empty = s("DIS-TE1", "near-empty", 0.05, 0.001)  # thin structure predicted empty: lowest MAE, poorest F
    good, ok = s("DIS-TE1", "good", 0.95, 0.02), s("DIS-TE2", "ok", 0.70, 0.05)
    tie_b, tie_a = s("DIS-TE2", "tie", 0.50, 0.20), s("DIS-TE1", "tie", 0.50, 0.30)  # ties: by split, then id
    samples = [empty, tie_b, good, tie_a, ok]
    assert sheet_choice(samples, 2) == [("best", 1, good), ("best", 2, ok), ("worst", 1, empty), ("worst", 2, tie_a)]
    assert sheet_choice(samples, 3) == [
        ("best", 1, good), ("best", 2, ok), ("best", 3, tie_a), ("worst", 1, empty), ("worst", 2, tie_b),
    ]  # fmt: skip
    every = sheet_choice(samples, 10)  # fewer samples than rows: each shown once
    assert [(k, r["id"]) for k, _, r in every] == [("best", "good"), ("best", "ok"), ("best", "tie"),
                                                   ("best", "tie"), ("best", "near-empty")]  # fmt: skip
    assert sheet_choice([], 3) == []


def test_before_checkpoint_and_model_names(tmp_path):
    import os

    from pdfnet_pipeline.eval.stage import Config, before_checkpoint, model_name

    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000004"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"x")
    best = run / "best.safetensors"
    os.link(step / "model.safetensors", best)  # as train.checkpoint.mark_best makes it
    cfg = Config(run_dir=run)
    assert cfg.before == "initial" and before_checkpoint(cfg, best) is None  # no initial.safetensors: nothing
    (run / "initial.safetensors").write_bytes(b"y")
    assert before_checkpoint(cfg, best) == run / "initial.safetensors"
    assert before_checkpoint(Config(run_dir=run, before=""), best) is None
    assert before_checkpoint(Config(run_dir=run, before=str(step / "model.safetensors")), best) is None  # itself
    other = tmp_path / "release.safetensors"
    assert before_checkpoint(Config(run_dir=run, before=str(other)), best) == other
    assert before_checkpoint(cfg, run / "initial.safetensors") is None
    assert model_name("before", run / "initial.safetensors", run) == "before (initial weights, initial.safetensors)"
    assert (
        model_name("before", run / "initial.safetensors", run, "/x/release.safetensors")
        == "before (initial weights = init_from release.safetensors, initial.safetensors)"
    )
    assert model_name("after", best, run) == "after (best checkpoint, best.safetensors)"
    assert model_name("after", step / "model.safetensors", run) == "after (checkpoint step_00000004)"
    assert model_name("before", other, run) == "before (release.safetensors)"


def test_before_after_compares_dis_te_all_else_the_test_splits_else_every_split():
    from pdfnet_pipeline.eval.stage import compared_splits

    assert compared_splits({s: {} for s in [*SPLITS, "DIS-TE (all)"]}) == ["DIS-TE (all)"]
    assert compared_splits({"DIS-VD": {}, "DIS-TE1": {}, "DIS-TE3": {}}) == ["DIS-TE1", "DIS-TE3"]
    assert compared_splits({"val": {}, "test": {}}) == ["test"]  # a folder of pairs: its held-out split
    assert compared_splits({"DIS-VD": {}}) == ["DIS-VD"]  # only a validation split: that one


@pytest.mark.slow
def test_before_after_equals_evaluating_each_checkpoint_alone(built, tmp_path):
    """A run directory with initial.safetensors, best.safetensors and curve.png: the before / after
    rows are the metrics of evaluating each checkpoint on its own, and the report shows both."""
    import csv

    from pdfnet_pipeline.eval import stage
    from pdfnet_pipeline.model.checkpoint import save_model
    from pdfnet_pipeline.model.pdfnet import PDFNetConfig, build_pdfnet
    from pdfnet_pipeline.train.curve import plot_training_curve

    root, manifest, _ = built
    run, splits = tmp_path / "run", ["DIS-TE1", "DIS-TE2"]  # no DIS-TE (all): both test splits are compared
    for seed, name in ((1, "initial.safetensors"), (2, "best.safetensors")):
        torch.manual_seed(seed)
        save_model(build_pdfnet(PDFNetConfig(preset="tiny")), run / name)
    plot_training_curve([{"kind": "step", "step": 1, "loss": 1.0}], run / "curve.png")

    def evaluate(out, **extra):
        sets = [f'stores="{root / "stores"}"', f'manifest="{manifest}"', f'run_dir="{run}"', f'out="{out}"',
                f"splits={json.dumps(splits)}", "metric_workers=1"]  # fmt: skip
        sets += [f"{k}={json.dumps(v)}" for k, v in extra.items()]
        stage.run(from_dict(stage.Config, load_stage_dict("eval", "smoke", sets)))
        return json.loads((out / "results.json").read_text())

    both = evaluate(tmp_path / "both")  # defaults: best.safetensors, before = "initial"
    initial = evaluate(tmp_path / "initial", checkpoint=str(run / "initial.safetensors"), before="")
    best = evaluate(tmp_path / "best", before="")
    assert "before" not in initial and "before" not in best and not (tmp_path / "best" / "preds_before").exists()
    assert both["splits"] == best["splits"] and both["before"] == initial["splits"]
    assert both["before"] != both["splits"]  # two different models
    ba = both["before_after"]
    names = ("before (initial weights, initial.safetensors)", "after (best checkpoint, best.safetensors)")
    assert ba == {
        "splits": splits,
        "before": {"name": names[0], "checkpoint": str(run / "initial.safetensors")},
        "after": {"name": names[1], "checkpoint": str(run / "best.safetensors")},
    }
    for split in splits:  # the before-predictions are the initial model's, PNG for PNG
        alone = sorted((tmp_path / "initial" / "preds" / split).iterdir())
        beside = sorted((tmp_path / "both" / "preds_before" / split).iterdir())
        assert [p.name for p in alone] == [p.name for p in beside] and alone
        assert [p.read_bytes() for p in alone] == [p.read_bytes() for p in beside]
    # results.md / .csv: today's table as it is, then one row per model and split
    md = (tmp_path / "both" / "results.md").read_text()
    assert md.startswith((tmp_path / "best" / "results.md").read_text() + "\n**Before / after**\n")
    for name, metrics in zip(names, (both["before"], both["splits"])):
        for split in splits:
            m = metrics[split]
            assert f"| {name} | {split} | {m['Fmax']:.3f} | {m['Fw']:.3f} | {m['Em']:.3f} | {m['Sa']:.3f} |" in md
    rows = list(csv.reader(open(tmp_path / "both" / "results.csv")))
    assert rows[: len(splits) + 2] == list(csv.reader(open(tmp_path / "best" / "results.csv")))
    assert rows[len(splits) + 2 : len(splits) + 4] == [[], ["# before / after"]]
    table = [dict(zip(rows[len(splits) + 4], r)) for r in rows[len(splits) + 5 :]]
    assert [(r["model"], r["checkpoint"], r["split"]) for r in table] == [
        (names[0], str(run / "initial.safetensors"), "DIS-TE1"), (names[1], str(run / "best.safetensors"), "DIS-TE1"),
        (names[0], str(run / "initial.safetensors"), "DIS-TE2"), (names[1], str(run / "best.safetensors"), "DIS-TE2"),
    ]  # fmt: skip
    assert float(table[0]["Fmax"]) == both["before"]["DIS-TE1"]["Fmax"]
    # index.html: a before column (6 thumbnails per row), the table and the training curve beside it
    out = tmp_path / "both"
    page = (out / "index.html").read_text()
    assert len(list((out / "thumbs").iterdir())) == 6 * 2 and "_before.png" in page
    assert 'id="before-after"' in page and 'src="training_curve.png"' in page
    assert (out / "training_curve.png").read_bytes() == (run / "curve.png").read_bytes()
    assert Image.open(out / "contact_sheet.png").width == 5 * 224  # image, depth, GT, before, prediction
    assert Image.open(tmp_path / "best" / "contact_sheet.png").width == 4 * 224
