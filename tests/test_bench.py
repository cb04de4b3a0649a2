"""Each benchmark runs end to end on a tiny config and prints its table: every row there, every
figure a finite positive number. Keeps `pdfnet-pipeline bench NAME` from rotting; the figures
themselves are the benches' business (no timing is asserted). bench metrics has its own
smoke test in tests/test_bench_metrics.py.
"""

import math
import re

import pytest

from pdfnet_pipeline.bench import data, depth, depth_official, model, train


def positive(text: str) -> float:
    value = float(text.rstrip("x").removesuffix("/s"))
    assert math.isfinite(value) and value > 0, text
    return value


def rows(out: str, pattern: str) -> list[re.Match]:
    return [m for line in out.splitlines() if (m := re.fullmatch(pattern, line.strip()))]


def test_official_resize_rule():
    """The official Resize (keep aspect, lower bound, multiple of 14) by hand: 2592x1944 at 518 ->
    scale 518/1944, 690.7 -> 686 (nearest multiple of 14), 518; at 1024 the short side rounds to
    1022 < 1024, so it goes up to 1036; 1365.3 -> 1372."""
    from pdfnet_pipeline.bench.depth_official import official_shape
    from pdfnet_pipeline.depth import dam

    assert official_shape(2592, 1944, 518) == (518, 686)
    assert official_shape(2592, 1944, 1024) == (1036, 1372)
    assert official_shape(1944, 2592, 518) == (686, 518)
    for w, h in ((3000, 2000), (1836, 3264), (640, 480), (518, 518)):  # the stage's own rule agrees
        for t in (518, 1024):
            assert official_shape(w, h, t) == dam.input_shape(w, h, t, "keep")


@pytest.mark.slow
def test_bench_depth_official_rows(capsys, tmp_path):
    """Three configurations, each whole run timed in fresh processes; the official loop writes
    one JPEG per photo and map at the photo's size."""
    cfg = depth.Config(
        images=2, size=64, input_size=56, supervision_size=84, device="cpu", workers=0, write_threads=1,
        repeats=1, parts=["official"], aspect_sizes=[[96, 64], [64, 112]],
    )  # fmt: skip
    out = depth_official.rows(tmp_path, cfg, {"small": "tiny", "base": "tiny", "large": "tiny"})
    assert list(out) == ["official loop", "stage keep", "stage square"]
    for v in out.values():
        assert len(v["whole"]) == 1 and v["whole"][0] > 0 and v["mb"] > 0
    printed = capsys.readouterr().out
    row = next(ln for ln in printed.splitlines() if ln.startswith("official loop ") and "vs stage" not in ln).split()
    assert len(row) == 8 and row[5] == "1.00" and row[6] in ("1.00", "n/a")  # the baseline against itself
    jpegs = sorted((tmp_path / "run0_official_loop_2").rglob("*.jpg"))
    assert [p.parent.name for p in jpegs] == [
        "base",
        "base",
        "large",
        "large",
        "large_1024",
        "large_1024",
        "small",
        "small",
    ]
    from PIL import Image

    assert {Image.open(p).size for p in jpegs} == {(96, 64), (64, 112)}  # the photos' own sizes


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


@pytest.mark.slow
def test_bench_growth_rows(capsys):
    from pdfnet_pipeline.bench import growth

    cfg = growth.Config(counts=[1, 2], count_mp=0.05, megapixels=[0.05], photos=1, sizes=[256], repeats=1, workers=0)
    times = growth.run(cfg)
    assert list(times) == [
        ("depth", "photos", "1 x 0.05 MP"),
        ("depth", "photos", "2 x 0.05 MP"),
        ("depth", "megapixels", "1 x 0.05 MP"),
        ("depth", "store side", "1 x 0.05 MP, 256²"),
        ("train", "resolution", "1 step 256²"),
        ("eval", "resolution", "predict 256²"),
        ("eval", "megapixels", "metrics 0.05 MP"),
    ]
    assert all(len(ts) == 1 and ts[0] > 0 for ts in times.values())
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| stage") and len(table) == 1 + len(times)  # the header, one row each
