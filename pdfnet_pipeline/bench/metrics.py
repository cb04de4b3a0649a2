"""The six DIS metrics: `pdfnet-pipeline metrics` against the pysodmetrics script a user runs today.

    pdfnet-pipeline bench metrics [--set pairs=20 --set megapixels=[2.0,8.0] --set repeats=3]
    pdfnet-pipeline bench metrics --set tiny=true      # a seconds-long smoke run

Baseline (what a user evaluates DIS predictions with today, written from pysodmetrics 1.6.2's
documented use): one Python process that, for each GT PNG in sorted order, reads the prediction
and the GT with `cv2.imread(..., cv2.IMREAD_GRAYSCALE)` and calls `step(pred=..., gt=...)` on
pysodmetrics' Fmeasure, WeightedFmeasure, Smeasure, Emeasure, MAE and
HumanCorrectionEffortMeasure (which skeletonises each GT with scikit-image, every run), then
prints max F, weighted F, mean E, S, MAE and HCE. pysodmetrics has no worker pool: one core.

Ours: `python -m pdfnet_pipeline.cli metrics --pred DIR --gt DIR --hce-binarize pysodmetrics`
(HCE binarised as HumanCorrectionEffortMeasure.step does, so the values compare), with 1 worker
and with every core, a cold GT skeleton cache (an empty folder: a dataset's first evaluation)
and a warm one (filled by an earlier run: every later evaluation).

Inputs: generated DIS-like pairs (a few large parts, dozens of 1-4 px wires, holes; the
prediction with soft edges, missed wires, false blobs and low-confidence haze) written as PNGs
to a temporary folder, sizes spread evenly over `megapixels`. Two tables:
- whole run: each configuration as a separate process, start-up included; every repeat runs all
  configurations in a fresh random order (seeded) so drift on a shared machine spreads evenly;
- steady state: seconds per image inside one process (imports done, one thread for OpenCV),
  baseline and ours (cold and warm skeleton) in a fresh random order per repeat, median over
  repeats, wall and CPU time (CPU time is the steadier on a shared machine).
The last column of the whole-run table is the largest difference of the six aggregates to the
baseline's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BASELINE_SCRIPT = '''\
"""pysodmetrics 1.6.2 over a folder, as its README shows: six metric classes, cv2 grayscale reads."""
import json
import sys
import warnings
from pathlib import Path

import cv2
import py_sod_metrics as psm

warnings.simplefilter("ignore")
pred_dir, gt_dir = Path(sys.argv[1]), Path(sys.argv[2])
fm, wfm, sm = psm.Fmeasure(), psm.WeightedFmeasure(), psm.Smeasure()
em, mae, hce = psm.Emeasure(), psm.MAE(), psm.HumanCorrectionEffortMeasure()
for gt_path in sorted(gt_dir.glob("*.png")):
    pred = cv2.imread(str(pred_dir / gt_path.name), cv2.IMREAD_GRAYSCALE)
    gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
    for metric in (fm, wfm, sm, em, mae, hce):
        metric.step(pred=pred, gt=gt)
print(json.dumps({
    "Fmax": float(fm.get_results()["fm"]["curve"].max()),
    "Fw": float(wfm.get_results()["wfm"]),
    "Em": float(em.get_results()["em"]["curve"].mean()),
    "Sa": float(sm.get_results()["sm"]),
    "MAE": float(mae.get_results()["mae"]),
    "HCE": float(hce.get_results()["hce"]),
}))
'''


@dataclass
class Config:
    pairs: int = 20  # generated prediction / GT pairs
    megapixels: list[float] = field(default_factory=lambda: [2.0, 8.0])  # size range, spread evenly
    repeats: int = 3
    workers: int = 0  # the "all cores" configuration; 0 = every core this process may use
    steady_pairs: int = 4  # pairs timed per image in-process (the baseline takes seconds each)
    seed: int = 0
    tiny: bool = False  # 2 pairs of 0.05 MP, 1 repeat: a smoke run in seconds


def synth_pair(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A DIS-like (prediction, GT) pair of uint8 images."""
    import cv2

    rng = np.random.default_rng(seed)
    side = min(h, w)

    def point() -> tuple[int, int]:
        return int(rng.integers(0, w)), int(rng.integers(0, h))

    gt = np.zeros((h, w), np.uint8)
    for _ in range(4):  # the object's body
        axes = (int(rng.integers(side // 12, side // 4)), int(rng.integers(side // 12, side // 4)))
        cv2.ellipse(gt, point(), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    for _ in range(60):  # wires, legs, mesh: DIS's thin structures
        cv2.line(gt, point(), point(), 255, int(rng.integers(1, 5)))
    for _ in range(4):  # holes
        cv2.circle(gt, point(), int(rng.integers(side // 60 + 1, side // 15 + 2)), 0, -1)
    pred = gt.astype(np.float32)
    for _ in range(15):  # missed thin parts
        cv2.line(pred, point(), point(), 0, int(rng.integers(2, 6)))
    for _ in range(3):  # false positives
        cv2.circle(pred, point(), int(rng.integers(side // 80 + 1, side // 20 + 2)), 255, -1)
    pred = cv2.GaussianBlur(pred, (0, 0), 1.5)  # soft edges
    haze = cv2.resize(rng.random((6, 8), dtype=np.float32), (w, h)) ** 16 * 60  # low confidence
    return np.clip(pred + haze, 0, 255).astype(np.uint8), gt


def write_pairs(folder: Path, cfg: Config) -> list[tuple[Path, Path]]:
    import cv2

    (folder / "pred").mkdir(parents=True)
    (folder / "gt").mkdir()
    lo, hi = cfg.megapixels[0], cfg.megapixels[-1]
    paths = []
    for i, mp in enumerate(np.linspace(lo, hi, cfg.pairs)):
        w = int(round(np.sqrt(mp * 1e6 * 4 / 3)))
        h = int(round(mp * 1e6 / w))
        pred, gt = synth_pair(h, w, cfg.seed + i)
        pair = (folder / "pred" / f"{i:04d}.png", folder / "gt" / f"{i:04d}.png")
        cv2.imwrite(str(pair[0]), pred)
        cv2.imwrite(str(pair[1]), gt)
        paths.append(pair)
    return paths


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return seconds, done.stdout


def whole_runs(root: Path, cfg: Config, procs: int) -> dict[str, dict]:
    """Each configuration as its own process, interleaved in a fresh random order per repeat.
    Returns per configuration: processes, seconds of each repeat, max |aggregate - script's|."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    script = root / "pysodmetrics_eval.py"
    script.write_text(BASELINE_SCRIPT)
    pred, gt = str(root / "pred"), str(root / "gt")
    warm = root / "warm-cache"

    def command(workers: int, cache: str | None) -> list[str]:
        if cache is None:
            return [sys.executable, str(script), pred, gt]
        folder = warm if cache == "warm" else Path(tempfile.mkdtemp(dir=root, prefix="cold-"))
        return [sys.executable, "-m", "pdfnet_pipeline.cli", "metrics", "--pred", pred, "--gt", gt,
                "--workers", str(workers), "--hce-binarize", "pysodmetrics",
                "--skeleton-cache", str(folder), "--json", str(root / "ours.json")]  # fmt: skip

    # (label, processes, skeleton cache); None: the pysodmetrics script
    configs = [("pysodmetrics script", 1, None)]
    for workers in sorted({1, procs}):
        configs += [("ours, cold skeleton cache", workers, "cold"), ("ours, warm skeleton cache", workers, "warm")]
    _timed(command(procs, "warm"), env)  # fills the warm cache, outside the timings
    rows = {f"{label}, {n} proc": {"label": label, "procs": n, "seconds": []} for label, n, _ in configs}
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.repeats):
        for k in rng.permutation(len(configs)):
            label, n, cache = configs[k]
            seconds, out = _timed(command(n, cache), env)
            row = rows[f"{label}, {n} proc"]
            row["seconds"].append(seconds)
            row["values"] = (
                json.loads(out) if cache is None else json.loads((root / "ours.json").read_text())["metrics"]
            )
    ref = rows["pysodmetrics script, 1 proc"]["values"]
    base = statistics.median(rows["pysodmetrics script, 1 proc"]["seconds"])
    print(f"whole run, {cfg.pairs} pairs, start-up included ({cfg.repeats} repeats, interleaved)")
    print(f"| {'configuration':<27} | procs | min s  | median s | x script | max abs diff |")
    print(f"|{'-' * 29}|-------|--------|----------|----------|--------------|")
    for row in rows.values():
        ts = row["seconds"]
        row["diff"] = max(abs(row["values"][k] - ref[k]) for k in ref)
        print(f"| {row['label']:<27} | {row['procs']:>5} | {min(ts):6.2f} | {statistics.median(ts):8.2f} | "
              f"{base / statistics.median(ts):8.2f} | {row['diff']:12.1e} |")  # fmt: skip
    return rows


def steady_state(pairs: list[tuple[Path, Path]], cfg: Config) -> dict[str, dict[str, list[float]]]:
    """Seconds per image inside one process, one OpenCV thread, alternating implementations.
    Returns each implementation's median wall and CPU seconds per timed pair; the ratio
    columns are medians over pairs of baseline / ours."""
    import cv2
    import py_sod_metrics as psm

    from pdfnet_pipeline.eval.metrics import measure, read_gray
    from pdfnet_pipeline.eval.metrics_hce import SkeletonCache

    cv2.setNumThreads(1)

    def baseline(pred_path: Path, gt_path: Path) -> None:
        pred = cv2.imread(str(pred_path), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for m in (psm.Fmeasure(), psm.WeightedFmeasure(), psm.Smeasure(), psm.Emeasure(), psm.MAE(),
                      psm.HumanCorrectionEffortMeasure()):  # fmt: skip
                m.step(pred=pred, gt=gt)

    warm = SkeletonCache()

    def ours(pred_path: Path, gt_path: Path, cache: SkeletonCache) -> None:
        measure(read_gray(pred_path), read_gray(gt_path), gt_path.stem, cache, "pysodmetrics")

    runs = {"pysodmetrics": baseline, "ours, cold skeleton cache": lambda p, g: ours(p, g, SkeletonCache()),
            "ours, warm skeleton cache": lambda p, g: ours(p, g, warm)}  # fmt: skip
    chosen = pairs[:: max(1, len(pairs) // cfg.steady_pairs)][: cfg.steady_pairs]
    for p, g in chosen:
        ours(p, g, warm)  # warm-up (and fills the warm cache) outside the timings
    rng = np.random.default_rng(cfg.seed + 1)
    # Wall and CPU seconds: on a shared machine CPU time of this single-threaded work is the
    # steadier of the two.
    per_image = {name: {"wall": [], "cpu": []} for name in runs}
    for p, g in chosen:
        times = {name: {"wall": [], "cpu": []} for name in runs}
        for _ in range(cfg.repeats):
            for k in rng.permutation(len(runs)):
                name = list(runs)[k]
                wall, cpu = time.perf_counter(), time.process_time()
                runs[name](p, g)
                times[name]["wall"].append(time.perf_counter() - wall)
                times[name]["cpu"].append(time.process_time() - cpu)
        for name in runs:
            for kind in ("wall", "cpu"):
                per_image[name][kind].append(statistics.median(times[name][kind]))
    mp = [cv2.imread(str(g), cv2.IMREAD_GRAYSCALE).size / 1e6 for _, g in chosen]
    print(f"\nsteady state, one process, 1 OpenCV thread: {len(chosen)} pairs of "
          f"{min(mp):.1f}-{max(mp):.1f} MP, median of {cfg.repeats} per image, then mean over images")  # fmt: skip
    print(f"| {'implementation':<27} | wall s/image | CPU s/image | x pysodmetrics (wall) | x pysodmetrics (CPU) |")
    print(f"|{'-' * 29}|--------------|-------------|-----------------------|----------------------|")
    base = per_image["pysodmetrics"]
    for name, row in per_image.items():
        x = {kind: statistics.median([b / t for b, t in zip(base[kind], row[kind])]) for kind in ("wall", "cpu")}
        print(f"| {name:<27} | {np.mean(row['wall']):12.3f} | {np.mean(row['cpu']):11.3f} | "
              f"{x['wall']:21.2f} | {x['cpu']:20.2f} |")  # fmt: skip
    return per_image


def run(cfg: Config) -> dict:
    from pdfnet_pipeline.workers import default_workers

    if cfg.tiny:
        cfg = Config(pairs=2, megapixels=[0.05, 0.05], repeats=1, workers=cfg.workers, steady_pairs=1, seed=cfg.seed)
    procs = cfg.workers or default_workers()
    print(f"metrics bench: cores this process may use = {default_workers()}, all-cores configuration = "
          f"{procs} processes; {cfg.pairs} generated pairs of {cfg.megapixels[0]}-{cfg.megapixels[-1]} MP")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pdfnet-bench-metrics-") as tmp:
        root = Path(tmp)
        pairs = write_pairs(root, cfg)
        return {"whole": whole_runs(root, cfg, procs), "steady": steady_state(pairs, cfg)}
