"""Each benchmark runs end to end on a tiny config and prints its table: every row there, every
figure a finite positive number. Keeps `pdfnet-pipeline bench NAME` from rotting; the figures
themselves are the benches' business (no timing is asserted). bench metrics has its own
smoke test in tests/test_bench_metrics.py.
"""

import math
import re

import pytest

from pdfnet_pipeline.bench import data, depth, model, train


def positive(text: str) -> float:
    value = float(text.rstrip("x").removesuffix("/s"))
    assert math.isfinite(value) and value > 0, text
    return value


def rows(out: str, pattern: str) -> list[re.Match]:
    return [m for line in out.splitlines() if (m := re.fullmatch(pattern, line.strip()))]


def test_bench_depth(capsys):
    depth.run(
        depth.Config(images=2, batch_sizes=[1, 2], size=64, input_size=56, device="cpu", workers=0, write_threads=1)
    )
    out = capsys.readouterr().out
    table = rows(
        out, r"(reference-style per-image loop|stage depth \(store: image\+mask\+map\))\s+(\d+)\s+(\S+)\s+(\S+)"
    )
    assert [(m[1].split()[0], int(m[2])) for m in table] == [("reference-style", 1), ("stage", 1), ("stage", 2)]
    for m in table:
        assert all(positive(v) for v in (m[3], m[4]))  # img/s, ratio to the loop
    assert float(table[0][4]) == 1.0  # the loop is the baseline of the "vs loop" column
    store_mb, map_mb, png_mb = re.search(
        r"store (\S+) MB .* adds ~(\S+) MB\); reference 8-bit PNG (\S+) MB", out
    ).groups()
    assert positive(store_mb) >= positive(map_mb)
    assert math.isfinite(float(png_mb))  # 64² 8-bit PNGs are < 5 kB: printed as 0.00 MB


@pytest.mark.slow  # two tiny-model passes at 256² with each attention: ~1 min on 2 shared cores
def test_bench_model_in_process(capsys):
    """Every configuration gets a row; ratios are to the first row of its size and pass."""
    cfg = model.Config(sizes=[256], preset="tiny", device="cpu", isolate=False, repeats=1, checkpointing=[False, True])
    rows = model.run(cfg)
    got = [(r["case"].mode, r["case"].attention, r["case"].checkpointing) for r in rows]
    assert got == [
        ("forward", "materialized", False),
        ("forward", "sdpa", False),
        ("train", "materialized", False),
        ("train", "sdpa", False),
        ("train", "materialized", True),
        ("train", "sdpa", True),
    ]
    for r in rows:
        assert r["runs"] == 1 and r["steady_min"] > 0 and "peak_med" not in r  # no CPU memory in process
    assert rows[0]["time_ratio"] == rows[2]["time_ratio"] == 1.0
    assert rows[1]["time_ratio"] == pytest.approx(rows[1]["steady_med"] / rows[0]["steady_med"])
    assert "256 train   sdpa         on" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_model_fresh_processes_report_peak_memory():
    """One process per measurement: its ru_maxrss is the peak, above what the built model held."""
    cfg = model.Config(sizes=[256], preset="tiny", device="cpu", attention=["sdpa"], passes=["train"], repeats=1)
    (row,) = model.run(cfg)
    assert row["runs"] == 1 and row["errors"] == []
    assert 0.2 < row["peak_med"] < 8 and 0 < row["act_med"] < row["peak_med"]  # GiB: torch alone is ~0.3


def test_bench_data(capsys):
    cfg = data.Config(size=64, samples=3, distinct=2, sizes=[[96, 64], [64, 96]], workers=[0, 1], repeats=1)
    results = data.run(cfg)
    out = capsys.readouterr().out
    assert sorted(results) == [0, 1]
    for w in (0, 1):
        table = rows(out, rf"{w} (ours|official)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")
        assert sorted(m[1] for m in table) == ["official", "ours"]
        for m in table:
            assert all(positive(m[i]) for i in range(2, 6))  # whole min/median, steady min/median
        for path in ("ours", "official"):
            r = results[w][path]
            assert r["whole_min"] == r["whole_median"] > 0  # one repeat: the min is the median
        (ratio,) = rows(out, rf"{w} ratio\s+(\S+)x\s+(\S+)x.*")
        want = results[w]["ours"]["whole_median"] / results[w]["official"]["whole_median"]
        assert float(ratio[1]) == pytest.approx(want, abs=0.006)  # printed with 2 decimals


@pytest.mark.slow  # two tiny-model training steps at 256² (AdamW): ~1 min on 2 shared cores
def test_bench_train(capsys):
    train.run(train.Config(size=256, preset="tiny", device="cpu", steps=1))
    (m,) = rows(capsys.readouterr().out, r"batch\s+1: (\S+) steps/s, (\S+) samples/s, peak (\S+) GiB")
    assert math.isclose(positive(m[1]), positive(m[2]), abs_tol=0.005)  # batch 1: a sample per step
    assert positive(m[3])  # the process's peak RSS, model and optimizer included
