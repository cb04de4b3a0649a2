"""The six DIS metrics, identical to pysodmetrics 1.6.2 (the reference in tests and the bench).

    results = evaluate_pairs([(pred, gt, "name"), ...], workers=None)
    results.fmax, results.fw, results.sa, results.em, results.mae, results.hce
    results.images[i]          # per-image values
    results.f_curve, results.precision, results.recall   # mean curves, index = threshold 0..255

Predictions and GTs are uint8 HxW arrays or image paths (read as cv2 grayscale, as pysodmetrics'
examples do). GT is foreground where > 128. Metric definitions (pysodmetrics defaults): max F with
beta^2 0.3 over per-image 256-threshold curves averaged, then max; weighted F (beta 1); S-measure
(alpha 0.5); mean E-measure (256-threshold curves averaged, then mean); MAE; HCE (relax 5,
epsilon 2). HCE binarises the prediction at raw value > 128 (the DIS definition, `hce_binarize=
"dis"`) or, with "pysodmetrics", at > 0.5 after pysodmetrics' min-max normalisation, which is
what `HumanCorrectionEffortMeasure.step` does; both give 73.6667 on the pysodmetrics fixture.
A prediction whose size differs from its GT is resized to it (bilinear) and flagged `resized`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pdfnet_pipeline.eval import metrics_core as core
from pdfnet_pipeline.eval.metrics_hce import SkeletonCache, hce
from pdfnet_pipeline.workers import context as workers_context
from pdfnet_pipeline.workers import default_workers, keep_freed_memory

ImageLike = np.ndarray | str | Path
Pair = tuple[ImageLike, ImageLike, str]
METRIC_NAMES = ("Fmax", "Fw", "Em", "Sa", "MAE", "HCE")  # the paper's column order


@dataclass(frozen=True)
class MetricsConfig:
    hce_binarize: Literal["dis", "pysodmetrics"] = "dis"
    skeleton_cache: Path | None = None  # folder for GT skeletons shared across runs; None: memory


@dataclass
class ImageMetrics:
    """One image's values. Curves are indexed by threshold t = 0..255 (prediction level >= t)."""

    name: str
    max_f: float
    weighted_f: float
    s_measure: float
    mean_e: float
    mae: float
    hce: int
    height: int
    width: int
    resized: bool  # the prediction had another size and was resized to the GT's
    precision: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)
    f_curve: np.ndarray = field(repr=False)
    e_curve: np.ndarray = field(repr=False)

    def values(self) -> dict:
        return {"name": self.name, "Fmax": self.max_f, "Fw": self.weighted_f, "Em": self.mean_e,
                "Sa": self.s_measure, "MAE": self.mae, "HCE": self.hce, "height": self.height,
                "width": self.width, "resized": self.resized}  # fmt: skip


@dataclass
class Results:
    """Aggregates computed as pysodmetrics does (means over images in the given order)."""

    images: list[ImageMetrics]
    fmax: float
    fw: float
    em: float
    sa: float
    mae: float
    hce: float
    f_curve: np.ndarray  # (256,) mean F over images per threshold 0..255
    precision: np.ndarray
    recall: np.ndarray
    e_curve: np.ndarray

    @classmethod
    def from_images(cls, images: Sequence[ImageMetrics]) -> Results:
        """Aggregate per-image results, e.g. DIS-TE from the TE1..4 images without recomputing."""
        if not images:
            raise ValueError("no images to aggregate")

        def mean(xs) -> float:
            return float(np.mean(np.array(xs, dtype=np.float64)))

        def mean_curve(attr: str) -> np.ndarray:
            # pysodmetrics stores curves from threshold 255 down; average in that layout, flip back.
            stacked = np.array([getattr(im, attr)[::-1] for im in images], dtype=np.float64)
            return np.mean(stacked, axis=0)[::-1].copy()

        f_curve, e_curve = mean_curve("f_curve"), mean_curve("e_curve")
        return cls(
            images=list(images),
            fmax=float(f_curve.max()),
            fw=mean([im.weighted_f for im in images]),
            em=float(e_curve[::-1].mean()),
            sa=mean([im.s_measure for im in images]),
            mae=mean([im.mae for im in images]),
            hce=mean([im.hce for im in images]),
            f_curve=f_curve,
            precision=mean_curve("precision"),
            recall=mean_curve("recall"),
            e_curve=e_curve,
        )

    def summary(self) -> dict[str, float]:
        return {"Fmax": self.fmax, "Fw": self.fw, "Em": self.em, "Sa": self.sa, "MAE": self.mae,
                "HCE": self.hce}  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "count": len(self.images),
            "metrics": self.summary(),
            "curves": {
                "threshold": list(range(256)),
                "f": self.f_curve.tolist(),
                "precision": self.precision.tolist(),
                "recall": self.recall.tolist(),
                "e": self.e_curve.tolist(),
            },  # fmt: skip
            "images": [im.values() for im in self.images],
        }


def read_gray(path: str | Path) -> np.ndarray:
    """An image file as uint8 HxW, the way pysodmetrics' examples read (cv2 grayscale)."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return img


def _as_gray(x: ImageLike, what: str, name: str) -> np.ndarray:
    img = read_gray(x) if isinstance(x, (str, Path)) else np.asarray(x)
    if img.dtype != np.uint8 or img.ndim != 2:
        raise TypeError(f"{name}: {what} must be uint8 HxW, got {img.dtype} {img.shape}")
    return img


def measure(pred: np.ndarray, gt: np.ndarray, name: str, cache: SkeletonCache,
            hce_binarize: str = "dis") -> ImageMetrics:  # fmt: skip
    """All six metrics of one pair (uint8 HxW each; `pred` resized to `gt` if needed)."""
    resized = pred.shape != gt.shape
    if resized:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    gt_bin = gt > 128
    lv = core.levels(pred)
    codes = pred.astype(np.int32) | (gt_bin.astype(np.int32) << 8)  # joint (level, GT bit) code
    cyx = core.centroid(gt_bin)
    quads = core.quadrant_hists(codes, *cyx)
    hist = sum(quads)
    qhist = core.quantised(hist, lv)
    precision, recall, f_curve = core.f_curves(qhist)
    e_curve = core.e_curve(qhist)
    pred_bin = pred > 128 if hce_binarize == "dis" else (lv.value > 0.5)[pred]
    return ImageMetrics(
        name=name,
        max_f=float(f_curve.max()),
        weighted_f=core.weighted_f(pred, gt_bin, lv),
        s_measure=core.s_measure(pred, gt_bin, quads, cyx, lv),
        mean_e=float(e_curve.mean()),
        mae=core.mae(hist, lv),
        hce=hce(pred_bin, gt_bin, cache.get(gt_bin)),
        height=gt.shape[0],
        width=gt.shape[1],
        resized=resized,
        # stored from threshold 0 up (pysodmetrics' arrays run from 255 down)
        precision=precision[::-1].copy(),
        recall=recall[::-1].copy(),
        f_curve=f_curve[::-1].copy(),
        e_curve=e_curve[::-1].copy(),
    )


def _measure_pair(pair: Pair, config: MetricsConfig, cache: SkeletonCache | None = None) -> ImageMetrics:
    pred_x, gt_x, name = pair
    pred, gt = _as_gray(pred_x, "prediction", name), _as_gray(gt_x, "GT", name)
    cache = cache if cache is not None else SkeletonCache(config.skeleton_cache)
    return measure(pred, gt, name, cache, config.hce_binarize)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one image per process already fills the cores
    keep_freed_memory()  # an image's arrays reuse the last image's pages


def _size(x: ImageLike) -> int:
    return os.path.getsize(x) if isinstance(x, (str, Path)) else np.asarray(x).size


def evaluate_pairs(
    pairs: Sequence[Pair],
    workers: int | None = None,
    config: MetricsConfig | None = None,
    cache: SkeletonCache | None = None,
) -> Results:
    """Metrics of every (pred, gt, name) pair and their aggregates, in the order given.

    `workers`: processes (None: all cores); 1 runs in this process, where `cache` (a
    SkeletonCache) may carry GT skeletons across calls. With a pool, skeletons are shared
    through `config.skeleton_cache` on disk.
    """
    config = config or MetricsConfig()
    if not pairs:
        raise ValueError("no prediction / GT pairs to evaluate")
    n = min(workers or default_workers(), len(pairs))
    if n <= 1:
        cache = cache if cache is not None else SkeletonCache(config.skeleton_cache)
        return Results.from_images([_measure_pair(p, config, cache) for p in pairs])
    # Workers fork from a server that imported the metrics modules once (no torch), and take
    # the biggest pairs first so no worker is left with a large one at the end.
    ctx = workers_context(preload=(__name__,))
    order = sorted(range(len(pairs)), key=lambda i: -(_size(pairs[i][0]) + _size(pairs[i][1])))
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {i: pool.submit(_measure_pair, pairs[i], config) for i in order}
        images = [futures[i].result() for i in range(len(pairs))]
    return Results.from_images(images)
