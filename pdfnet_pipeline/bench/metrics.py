"""Images/s of the six DIS metrics: this package vs pysodmetrics 1.6.2 as-is.

    pdfnet-pipeline bench metrics [--set images=8 --set megapixels=[1.0,5.0] --set workers=0]

Synthetic DIS-like pairs (blobs and 1-3 px wires, prediction = blurred, noisy, shifted GT) at
each size, held in memory so only the metrics are timed (pool start-up included). Rows: the
reference (the six pysodmetrics classes' `step`, HCE's own binarisation), ours with a cold GT
skeleton cache (first evaluation of a dataset) and warm (every later one), each with 1 process
and all cores. The last column checks ours against the reference's aggregates.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Config:
    megapixels: list[float] = field(default_factory=lambda: [1.0, 5.0])
    images: int = 4  # pairs per size
    workers: int = 0  # "all cores" row; 0 = every core this process may use
    seed: int = 0


def synth_pair(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), np.uint8)
    side = min(h, w)
    for _ in range(6):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(gt, centre, int(rng.integers(side // 20, side // 6)), 255, -1)
    for _ in range(40):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(gt, p1, p2, 255, int(rng.integers(1, 4)))
    pred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 2.0)
    pred += rng.normal(0, 20, size=pred.shape).astype(np.float32)
    pred = np.clip(0.7 * pred + 0.3 * np.roll(pred, 3, axis=1), 0, 255).astype(np.uint8)
    return pred, gt


def reference_pair(pair) -> dict:
    """pysodmetrics as its README uses it: one step of each metric class."""
    import py_sod_metrics as psm

    pred, gt = pair[0], pair[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ms = {"f": psm.Fmeasure(), "e": psm.Emeasure(), "s": psm.Smeasure(),
              "w": psm.WeightedFmeasure(), "m": psm.MAE(), "h": psm.HumanCorrectionEffortMeasure()}  # fmt: skip
        for m in ms.values():
            m.step(pred=pred, gt=gt)
    return {"f": ms["f"].changeable_fms[0], "e": ms["e"].changeable_ems[0], "s": ms["s"].sms[0],
            "w": ms["w"].weighted_fms[0], "m": ms["m"].maes[0], "h": ms["h"].hces[0]}  # fmt: skip


def reference_summary(values: list[dict]) -> dict[str, float]:
    return {"Fmax": float(np.mean([v["f"] for v in values], axis=0).max()),
            "Fw": float(np.mean([v["w"] for v in values])),
            "Em": float(np.mean([v["e"] for v in values], axis=0).mean()),
            "Sa": float(np.mean([v["s"] for v in values])),
            "MAE": float(np.mean([v["m"] for v in values])),
            "HCE": float(np.mean([v["h"] for v in values]))}  # fmt: skip


def run_reference(pairs, workers: int) -> tuple[float, dict]:
    import multiprocessing

    start = time.perf_counter()
    if workers == 1:
        values = [reference_pair(p) for p in pairs]
    else:
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            values = list(pool.map(reference_pair, pairs))
    return time.perf_counter() - start, reference_summary(values)


def run_ours(pairs, workers: int, cache_dir: Path | None, cache=None) -> tuple[float, dict]:
    from pdfnet_pipeline.eval.metrics import MetricsConfig, evaluate_pairs

    cfg = MetricsConfig(hce_binarize="pysodmetrics", skeleton_cache=cache_dir)
    start = time.perf_counter()
    res = evaluate_pairs(pairs, workers=workers, config=cfg, cache=cache)
    return time.perf_counter() - start, res.summary()


def max_diff(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def run(cfg: Config) -> None:
    from pdfnet_pipeline.eval.metrics import default_workers
    from pdfnet_pipeline.eval.metrics_hce import SkeletonCache

    all_cores = cfg.workers or default_workers()
    print(f"metrics bench: {cfg.images} synthetic pairs per size, all cores = {all_cores} processes")
    print(f"{'size':>9} {'implementation':<30} {'procs':>5} {'images/s':>9} {'x ref':>6} {'max |diff|':>11}")
    for mp in cfg.megapixels:
        w = int(round(np.sqrt(mp * 1e6 * 4 / 3)))
        h = int(round(mp * 1e6 / w))
        pairs = [(*synth_pair(h, w, cfg.seed + i), f"p{i}") for i in range(cfg.images)]
        for procs in sorted({1, all_cores}):
            t_ref, ref = run_reference(pairs, procs)
            rows = [("pysodmetrics 1.6.2 as-is", t_ref, ref)]
            with tempfile.TemporaryDirectory() as tmp:
                if procs == 1:
                    mem = SkeletonCache()
                    rows.append(("ours, cold skeleton cache", *run_ours(pairs, 1, None, mem)))
                    rows.append(("ours, warm skeleton cache", *run_ours(pairs, 1, None, mem)))
                else:
                    rows.append(("ours, cold skeleton cache", *run_ours(pairs, procs, Path(tmp))))
                    rows.append(("ours, warm skeleton cache", *run_ours(pairs, procs, Path(tmp))))
            for label, seconds, summary in rows:
                print(f"{f'{w}x{h}':>9} {label:<30} {procs:>5} {len(pairs) / seconds:>9.2f} "
                      f"{t_ref / seconds:>6.2f} {max_diff(summary, ref):>11.1e}")  # fmt: skip
