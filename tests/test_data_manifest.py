"""Manifests: scanning, hashing, the official-list check and the CLI's stop/skip policy."""

import hashlib
import json
import shutil

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pdfnet_pipeline.cli import app
from pdfnet_pipeline.data.manifest import (
    ManifestError,
    check_official,
    official_names,
    read_manifest,
    scan,
    write_manifest,
)

runner = CliRunner()


def test_scan_roundtrip(sample_root, tmp_path):
    result = scan(sample_root, workers=1, progress=False)
    assert result.problems == []
    m = result.manifest
    assert m.splits() == ["DIS-TR", "DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4"]
    assert [len(m.split(s)) for s in m.splits()] == [3, 1, 1, 1, 1, 1]
    e = m.split("DIS-TR")[0]
    im = Image.open(e.image_path(m.root))
    assert (e.width, e.height) == im.size
    assert e.image_sha256 == hashlib.sha256(e.image_path(m.root).read_bytes()).hexdigest()
    path = tmp_path / "m.jsonl"
    write_manifest(m, path)
    header = json.loads(path.read_text().splitlines()[0])
    assert header == {"format": "pdfnet-manifest", "version": 1, "root": str(sample_root.resolve())}
    back = read_manifest(path)
    assert back.entries == m.entries and back.root == m.root
    assert back.split_hash("DIS-VD") == m.split_hash("DIS-VD") != m.split_hash("DIS-TE1")


def test_images_masks_naming_is_accepted(sample_root, tmp_path):
    root = tmp_path / "ref_layout"
    shutil.copytree(sample_root / "DIS-VD" / "im", root / "custom" / "images")
    shutil.copytree(sample_root / "DIS-VD" / "gt", root / "custom" / "masks")
    m = scan(root, workers=1, progress=False).manifest
    assert m.splits() == ["custom"] and m.entries[0].image.startswith("custom/images/")


def test_official_list_check():
    names = official_names("DIS-VD")
    assert len(names) == 470 and len(official_names("DIS-TE3")) == 500
    some = sorted(names)[:468] + ["my-extra"]
    report = check_official("DIS-VD", set(some))
    missing = [r for r in report if "missing" in r]
    assert len(missing) == 2 and sorted(names)[468] in missing[0]
    assert report[-1] == "DIS-VD: extra sample my-extra (not in the official list)"
    assert check_official("DIS-TR", {"anything"}) == []  # no official list for the train split


def _copy(sample_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(sample_root, root)
    return root


def test_cli_custom_split_passes_but_a_partial_dis5k_copy_stops(sample_root, tmp_path):
    out = tmp_path / "m.jsonl"
    # The generated sample holds none of the official names: a custom dataset, accepted.
    res = runner.invoke(app, ["data", "manifest", str(sample_root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "DIS-VD: none of the 470 official names: checked as a custom split" in res.output
    assert len(read_manifest(out).entries) == 8
    # One official name present: it looks like a DIS-5K copy with 469 files missing -> stop.
    root = _copy(sample_root, tmp_path)
    official = sorted(official_names("DIS-VD"))[0]
    for sub, ext in (("im", ".jpg"), ("gt", ".png")):
        src = next((root / "DIS-VD" / sub).glob(f"*{ext}"))
        src.rename(root / "DIS-VD" / sub / f"{official}{ext}")
    out2 = tmp_path / "m2.jsonl"
    res = runner.invoke(app, ["data", "manifest", str(root), "--out", str(out2)])
    assert res.exit_code == 1 and not out2.exists()
    assert "DIS-VD: 469 missing, 0 extra" in res.output
    assert f"DIS-VD: missing official sample {sorted(official_names('DIS-VD'))[1]}" in res.output
    full = (tmp_path / "m2.jsonl.mismatches.txt").read_text().splitlines()
    assert len(full) == 469
    res = runner.invoke(app, ["data", "manifest", str(root), "--out", str(out2), "--allow-mismatch"])
    assert res.exit_code == 0 and len(read_manifest(out2).entries) == 8


def test_cli_corrupt_image_named_and_nothing_lost(sample_root, tmp_path):
    root = _copy(sample_root, tmp_path)
    out = tmp_path / "m.jsonl"
    assert runner.invoke(app, ["data", "manifest", str(root), "-o", str(out), "--allow-mismatch"]).exit_code == 0
    before = out.read_bytes()
    victim = sorted((root / "DIS-TR" / "im").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:5000])  # truncated JPEG
    res = runner.invoke(app, ["data", "manifest", str(root), "-o", str(out), "--allow-mismatch"])
    assert res.exit_code == 1
    assert f"bad input: {victim}" in res.output
    assert out.read_bytes() == before  # the earlier manifest is untouched
    res = runner.invoke(app, ["data", "manifest", str(root), "-o", str(out), "--allow-mismatch", "--skip-bad"])
    assert res.exit_code == 0 and victim.name in res.output
    ids = {e.id for e in read_manifest(out).entries}
    assert victim.stem not in ids and len(ids) == 7


def test_missing_mask_and_size_mismatch_reported(sample_root, tmp_path):
    root = _copy(sample_root, tmp_path)
    masks = sorted((root / "DIS-TR" / "gt").iterdir())
    masks[0].unlink()
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(masks[1])
    result = scan(root, ["DIS-TR"], workers=1, progress=False)
    reasons = sorted(str(p) for p in result.problems)
    assert len(reasons) == 2
    assert any("mask missing" in r and masks[0].stem in r for r in reasons)
    assert any(str(masks[1]) in r and "mask is 60x50" in r for r in reasons)
    assert len(result.manifest.entries) == 1


def test_read_manifest_errors(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"hello": 1}\n')
    try:
        read_manifest(bad)
    except ManifestError as err:
        assert "not a pdfnet-pipeline manifest" in str(err)
    else:
        raise AssertionError("expected ManifestError")


def test_split_roles_by_name():
    from pdfnet_pipeline.data.manifest import split_role

    assert [split_role(s) for s in ("DIS-TR", "train", "Training", "DIS-VD", "val", "Validation", "dev")] == [
        "train",
        "train",
        "train",
        "val",
        "val",
        "val",
        "val",
    ]
    assert [split_role(s) for s in ("DIS-TE1", "test", "holdout", "DIS-TE (all)")] == ["test"] * 4
