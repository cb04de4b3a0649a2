"""`pdfnet-pipeline metrics`: matching by stem, missing / extra / resized files, JSON output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from pdfnet_pipeline.cli import app
from pdfnet_pipeline.eval.metrics import evaluate_pairs
from pdfnet_pipeline.eval.metrics_io import match_dirs

FIXTURE = Path(__file__).parent / "data" / "pysodmetrics_fixture"


def test_metrics_command_reports_and_matches_api(tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    shutil.copy(FIXTURE / "preds" / "0001.png", preds / "0001.png")
    shutil.copy(FIXTURE / "preds" / "19.png", preds / "stray.png")  # no GT of that name
    aerial = cv2.imread(str(FIXTURE / "preds" / "aerial-1867541__340.png"), cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(aerial, (300, 170), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(preds / "aerial-1867541__340.png"), small)
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["metrics", "--pred", str(preds), "--gt", str(FIXTURE / "masks"),
                                      "--json", str(out), "--workers", "1",
                                      "--skeleton-cache", str(tmp_path / "skel")])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.output
    assert "have no prediction: 19" in text
    assert "have no GT mask: stray" in text
    assert "resized to their GT's size: aerial-1867541__340" in text
    assert "2 of 3 GT masks evaluated" in text
    data = json.loads(out.read_text())
    assert data["missing"] == ["19"] and data["extra"] == ["stray"]
    names = [im["name"] for im in data["images"]]
    assert names == ["0001", "aerial-1867541__340"]
    pairs = [(preds / "0001.png", FIXTURE / "masks" / "0001.png", "0001"),
             (cv2.resize(small, (605, 340), interpolation=cv2.INTER_LINEAR),
              FIXTURE / "masks" / "aerial-1867541__340.png", "aerial-1867541__340")]  # fmt: skip
    expected = evaluate_pairs(pairs, workers=1).summary()
    assert data["metrics"] == expected
    assert f"{expected['Fmax']:.3f}" in text and len(data["curves"]["f"]) == 256


def test_metrics_command_fails_without_pairs(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["metrics", "--pred", str(tmp_path / "empty"),
                                      "--gt", str(FIXTURE / "masks"), "--no-skeleton-cache"])  # fmt: skip
    assert result.exit_code == 1
    assert "no prediction matches" in result.output


def test_match_dirs_rejects_duplicate_stems(tmp_path):
    shutil.copy(FIXTURE / "preds" / "0001.png", tmp_path / "a.png")
    shutil.copy(FIXTURE / "preds" / "0001.png", tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="share the stem 'a'"):
        match_dirs(tmp_path, FIXTURE / "masks")


def test_module_run_with_a_pool_prints_no_runpy_warning(tmp_path):
    """`python -m pdfnet_pipeline.cli metrics --workers 2`: each worker re-runs the main module,
    which its forkserver has already imported; runpy's warning about that is noise, not news."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pdfnet_pipeline.cli", "metrics", "--pred", str(FIXTURE / "preds")]
    cmd += ["--gt", str(FIXTURE / "masks"), "--workers", "2", "--no-skeleton-cache"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "GT masks evaluated" in out.stdout
    assert "found in sys.modules" not in out.stderr, out.stderr
