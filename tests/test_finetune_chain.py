"""Fine-tuning on one's own folder of pairs, the whole chain as a user runs it (the CLI, in-process):
a generated folder with no DIS names (mixed extensions, sub-folders, one RGBA cut-out mask) ->
`data manifest` (seeded train / val / test) -> `stage run depth` -> `stage run train` from a
released-layout .pth (converted on the fly) -> `stage run eval`, whose before / after table sets
the INIT model beside the fine-tuned best checkpoint on the held-out test split.

Also the chain's errors a user meets: stores from another manifest, an INIT of another
architecture (named keys), and the published rows quoted only beside official DIS-5K splits.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from pdfnet_pipeline.cli import app
from pdfnet_pipeline.data.manifest import Manifest, ManifestEntry, official_names
from pdfnet_pipeline.model import PDFNetConfig
from pdfnet_pipeline.model.checkpoint import convert_reference

runner = CliRunner()


def cli(*args: str):
    res = runner.invoke(app, [str(a) for a in args])
    return res


def ok(*args: str) -> str:
    res = cli(*args)
    assert res.exit_code == 0, res.output
    return res.output


def reference_pth(path: Path, seed: int = 0) -> Path:
    """A tiny PDFNet in the released checkpoint's key layout (as PDFNet_Best.pth is), wrapped."""
    from test_train_finetune import _reference_layout_state

    ref, _ = _reference_layout_state(seed)
    torch.save({"model": ref}, path)
    return path


# Shapes scenes (one solid object each: learnt in a few dozen steps) at the tiny preset's 256².
FOLDER = ["--layout", "folder", "--style", "shapes", "--train", "6", "--per-split", "2"]  # 16 pairs
SPLIT = ["--val-fraction", "0.125", "--test-fraction", "0.25", "--workers", "1"]  # 10 / 2 / 4
TRAIN = ["epochs=6", "batch_size=2", "optim.warmup_steps=3", "data.workers=0", "progress=false", "val_images=0"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    ok("data", "sample", root / "my_photos", *FOLDER)
    manifest_out = ok("data", "manifest", root / "my_photos", "-o", root / "m.jsonl", *SPLIT)
    init = reference_pth(root / "PDFNet_Best.pth")
    stores, run = root / "stores", root / "run"
    common = [f'manifest="{root / "m.jsonl"}"', f'stores="{stores}"']
    ok("stage", "run", "depth", "--profile", "demo", *[x for s in [*common, "workers=0"] for x in ("--set", s)])
    sets = [
        f'run_dir="{run}"',
        f'init_from="{init}"',
        f'data.train_stores=["{stores / "train.zarr"}"]',
        f'data.val_stores=["{stores / "val.zarr"}"]',
        *TRAIN,
    ]
    train_out = ok("stage", "run", "train", "--profile", "demo", *[x for s in sets for x in ("--set", s)])
    eval_sets = [*common, f'run_dir="{run}"', "metric_workers=1", "workers=0"]
    ok("stage", "run", "eval", "--profile", "demo", *[x for s in eval_sets for x in ("--set", s)])
    return root, manifest_out, train_out, init


@pytest.mark.slow
def test_finetune_chain_on_a_folder_of_pairs_gives_a_before_after_table(chain):
    root, manifest_out, train_out, init = chain
    assert "16 samples (train 10, val 2, test 4)" in manifest_out
    run = root / "run"
    # The run started from the .pth's very weights (converted in memory, strictly).
    convert_reference(init, root / "converted.safetensors", PDFNetConfig(preset="tiny"))
    converted, initial = load_file(str(root / "converted.safetensors")), load_file(str(run / "initial.safetensors"))
    assert converted.keys() == initial.keys() and all(torch.equal(converted[k], initial[k]) for k in converted)
    data = json.loads((run / "eval" / "results.json").read_text())
    assert list(data["splits"]) == ["val", "test"]  # the held-out splits by role, no DIS names
    assert data["splits"]["test"]["count"] == 4 and data["splits"]["val"]["count"] == 2
    ba = data["before_after"]
    assert ba["splits"] == ["test"] and "quoted" not in ba  # not DIS-5K: nothing quoted
    assert ba["before"]["checkpoint"] == str(run / "initial.safetensors")
    assert ba["before"]["name"] == "before (initial weights = init_from PDFNet_Best.pth, initial.safetensors)"
    # The after row is the run's best checkpoint: the epoch with the highest validation F_max.
    assert ba["after"]["checkpoint"] == str(run / "best.safetensors")
    epochs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    best = max(epochs, key=lambda r: r["val_max_f"])
    best_file = load_file(str(run / "best.safetensors"))
    step_file = load_file(str(run / "checkpoints" / f"step_{best['step']:08d}" / "model.safetensors"))
    assert all(torch.equal(best_file[k], step_file[k]) for k in best_file)
    # It learnt the scenes: the fine-tuned model is far better than where it started.
    before, after = data["before"]["test"], data["splits"]["test"]
    # (F_max flatters a random model on big solid shapes; F_w and MAE do not)
    assert after["Fmax"] >= 0.9 and after["Fw"] > before["Fw"] + 0.3 and after["MAE"] < before["MAE"] / 2, (
        before,
        after,
    )
    md = (run / "eval" / "results.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| before (") or ln.startswith("| after (")]
    assert [r.split(" | ")[1] for r in rows] == ["test", "test"]
    assert f"| {after['Fmax']:.3f} |" in rows[1] and f"| {before['Fmax']:.3f} |" in rows[0]
    html = (run / "eval" / "index.html").read_text()
    assert 'id="before-after"' in html and "before: before (initial weights = init_from PDFNet_Best.pth" in html
    assert len(list((run / "eval" / "preds_before" / "test").glob("*.png"))) == 4  # the gallery's before column


@pytest.mark.slow
def test_stores_of_another_manifest_are_refused(chain):
    root = chain[0]
    ok("data", "manifest", root / "my_photos", "-o", root / "m2.jsonl", *SPLIT, "--split-seed", "1")
    sets = [f'manifest="{root / "m2.jsonl"}"', f'stores="{root / "stores"}"', "workers=0"]
    res = cli("stage", "run", "depth", "--profile", "demo", *[x for s in sets for x in ("--set", s)])
    assert res.exit_code != 0  # the CLI's main() prints a UserError as one `error:` line
    assert "train.zarr was built from other inputs (another manifest: this split's entries" in str(res.exception)
    eval_sets = [*sets[:2], f'run_dir="{root / "run"}"']
    res = cli("stage", "run", "eval", "--profile", "demo", *[x for s in eval_sets for x in ("--set", s)])
    assert res.exit_code != 0 and "val.zarr was built from another manifest than" in str(res.exception)


def _fake_manifest(split_ids: dict[str, list[str]]) -> Manifest:
    entries = [
        ManifestEntry(s, i, f"{s}/{i}.jpg", f"{s}/{i}.png", 8, 8, "", "") for s, ids in split_ids.items() for i in ids
    ]
    return Manifest(Path("/nowhere"), entries)


def test_published_rows_are_quoted_only_beside_official_dis5k_splits():
    from pdfnet_pipeline.eval.stage import ALL_TE, TEST_SPLITS, official_split, quoted_rows

    official = {s: sorted(official_names(s))[:3] for s in (*TEST_SPLITS, "DIS-VD")}
    real = _fake_manifest(official)
    assert official_split(real, "DIS-VD") and official_split(real, ALL_TE)
    rows = quoted_rows(real, [ALL_TE])
    assert rows == {ALL_TE: {"Fmax": 0.915, "Fw": 0.874, "Em": 0.943, "Sa": 0.915, "MAE": 0.031}}  # Table 1
    assert quoted_rows(real, ["DIS-VD"])["DIS-VD"]["Fmax"] == 0.913
    # The generated demo borrows the names, not the samples: nothing quoted
    demo = _fake_manifest({s: ["gen-DIS-TE1-000-lattice"] for s in (*TEST_SPLITS, "DIS-VD")})
    assert quoted_rows(demo, [ALL_TE, "DIS-VD"]) == {}
    # A folder's own splits have no published numbers
    assert quoted_rows(_fake_manifest({"test": ["a", "b"]}), ["test"]) == {}


def test_the_quoted_row_sits_under_before_and_after_in_every_table(tmp_path):
    from pdfnet_pipeline.eval.published import quoted_name
    from pdfnet_pipeline.eval.report import BeforeAfter, write_tables

    row = {"Fmax": 0.5, "Fw": 0.4, "Em": 0.6, "Sa": 0.55, "MAE": 0.1, "HCE": 300.0, "count": 2}
    after = {"DIS-TE (all)": dict(row, Fmax=0.9)}
    quoted = {"DIS-TE (all)": {"Fmax": 0.915, "Fw": 0.874, "Em": 0.943, "Sa": 0.915, "MAE": 0.031}}
    ba = BeforeAfter(
        "before (x)", "after (y)", "x", "y", {"DIS-TE (all)": row}, ["DIS-TE (all)"], quoted_name(), quoted
    )
    write_tables(after, tmp_path, None, ba)
    md = (tmp_path / "results.md").read_text().splitlines()
    rows = [ln for ln in md if ln.startswith("| before (") or ln.startswith("| after (") or "published" in ln]
    assert rows[2] == (
        "| PDFNet as published (paper Table 1, quoted) | DIS-TE (all) | 0.915 | 0.874 | 0.943 | 0.915 | 0.031 | – |  |"
    )
    assert [r.split(" | ")[2] for r in rows] == ["0.500", "0.900", "0.915"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["before_after"]["quoted"] == {"name": quoted_name(), "splits": quoted}
    last = list(csv.reader((tmp_path / "results.csv").read_text().splitlines()))[-1]
    assert last == [quoted_name(), "", "DIS-TE (all)", "0.915", "0.874", "0.943", "0.915", "0.031", "", ""]
