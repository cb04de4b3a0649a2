"""The console entry point: user errors are one line on stderr with exit code 1, no traceback."""

import subprocess
import sys


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pdfnet_pipeline", *args], cwd=cwd, capture_output=True, text=True)


def test_user_errors_are_one_line(tmp_path):
    res = run("stage", "run", "depth", "--set", 'manifest="missing.jsonl"', cwd=tmp_path)
    assert res.returncode == 1
    assert (
        res.stderr.strip() == "error: missing.jsonl: manifest not found (make one with `pdfnet-pipeline data manifest`)"
    )
    res = run("stage", "run", "train", "--set", "epochs=x", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == "error: stages/train.toml: epochs: expected int, got 'x'"
    res = run("stage", "run", "nope", cwd=tmp_path)
    assert res.returncode == 2 and "no stage 'nope'" in res.stderr


def test_help_lists_every_command(tmp_path):
    out = run("--help", cwd=tmp_path).stdout
    for command in ("stage", "data", "model", "store", "metrics", "predict", "bench"):
        assert f" {command} " in out
