"""`bench metrics` smoke run: every configuration runs and agrees with the pysodmetrics script."""

from __future__ import annotations

from pdfnet_pipeline.bench.metrics import Config, run


def test_tiny_bench_agrees_with_pysodmetrics_script(capsys):
    result = run(Config(tiny=True))
    whole = result["whole"]
    assert "pysodmetrics script, 1 proc" in whole and "ours, cold skeleton cache, 1 proc" in whole
    assert "ours, warm skeleton cache, 1 proc" in whole
    for name, row in whole.items():
        assert len(row["seconds"]) == 1 and row["seconds"][0] > 0, name
        assert row["diff"] <= 1e-12, name  # the CLI's six aggregates equal the script's
    assert set(result["steady"]) == {"pysodmetrics", "ours, cold skeleton cache", "ours, warm skeleton cache"}
    for row in result["steady"].values():
        assert len(row["wall"]) == len(row["cpu"]) == 1 and row["wall"][0] > 0 and row["cpu"][0] > 0
    out = capsys.readouterr().out
    assert "whole run, 2 pairs" in out and "x pysodmetrics" in out
