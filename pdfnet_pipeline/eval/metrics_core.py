"""Single-pass kernels for max F, mean E, MAE, S-measure and weighted F.

Every formula follows pysodmetrics 1.6.2 (`py_sod_metrics.sod_metrics`) term by term; what changes
is how the pixels are visited. A uint8 prediction has only 256 values, so after pysodmetrics'
normalisation (`pred / 255`, then min-max) each statistic that sums over pixels (histograms,
means, variances, MAE) is a sum over 256 levels weighted by a joint (prediction level, GT bit)
histogram. One histogram per S-measure quadrant gives everything: F / E curves, MAE, and both
S-measure terms. The weighted F keeps scipy's exact Euclidean feature transform (its tie-breaking
decides which foreground error a background pixel copies) but skips the work pysodmetrics does
on pixels that cannot change the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

EPS = float(np.spacing(1))  # pysodmetrics' EPS (MATLAB's eps)
F_BETA2 = 0.3  # max F weight (pysodmetrics Fmeasure default)
S_ALPHA = 0.5  # S-measure object / region balance
WF_BETA = 1.0  # weighted F (pysodmetrics WeightedFmeasure default)


@dataclass(frozen=True)
class Levels:
    """The 256 possible prediction values after pysodmetrics' normalisation."""

    value: np.ndarray  # float64[256]: normalised value of each raw uint8 level
    quant: np.ndarray  # uint8[256]: `(value * 255).astype(uint8)`, the F/E histogram bin


def levels(pred: np.ndarray) -> Levels:
    """Same float operations as pysodmetrics `prepare_data`, done once per level, not per pixel."""
    value = np.arange(256, dtype=np.uint8) / 255
    lo, hi = int(pred.min()), int(pred.max())
    if lo != hi:
        vmin, vmax = value[lo], value[hi]
        value = (value - vmin) / (vmax - vmin)
    return Levels(value=value, quant=(value * 255).astype(np.uint8))


def joint_hist(codes: np.ndarray) -> np.ndarray:
    """(2, 256) pixel counts: row 0 GT background, row 1 GT foreground, by raw prediction level."""
    counts = np.bincount(codes.ravel(), minlength=512)
    return counts.reshape(2, 256)


def bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """Bounding box of a mask grown by `margin`, clipped to the image; None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)))  # fmt: skip


def centroid(gt: np.ndarray) -> tuple[int, int]:
    """pysodmetrics' 1-based foreground centroid (image centre when there is no foreground)."""
    h, w = gt.shape
    n = int(np.count_nonzero(gt))
    if n == 0:
        cy, cx = np.round(h / 2), np.round(w / 2)
    else:
        # Integer sums are exact, so sum / n equals numpy's mean of argwhere to the last bit.
        rows = np.count_nonzero(gt, axis=1)
        cols = np.count_nonzero(gt, axis=0)
        cy = np.round(int(rows @ np.arange(h, dtype=np.int64)) / n)
        cx = np.round(int(cols @ np.arange(w, dtype=np.int64)) / n)
    return int(cy) + 1, int(cx) + 1


def quadrant_hists(codes: np.ndarray, cy: int, cx: int) -> list[np.ndarray]:
    """Joint histograms of the four S-measure quadrants (lt, rt, lb, rb)."""
    parts = (codes[:cy, :cx], codes[:cy, cx:], codes[cy:, :cx], codes[cy:, cx:])
    return [joint_hist(p) if p.size else np.zeros((2, 256), np.int64) for p in parts]


# ---- F-measure and E-measure curves (index i <-> threshold 255 - i, as in pysodmetrics) ----


def f_curves(qhist: np.ndarray, beta2: float = F_BETA2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F over the 256 thresholds, pysodmetrics `Fmeasure.cal_pr`."""
    tps = np.cumsum(np.flip(qhist[1]), axis=0)
    ps = tps + np.cumsum(np.flip(qhist[0]), axis=0)
    ps[ps == 0] = 1
    t = max(int(qhist[1].sum()), 1)
    precision = tps / ps
    recall = tps / t
    numerator = (1 + beta2) * precision * recall
    denominator = np.where(numerator == 0, 1, beta2 * precision + recall)
    return precision, recall, numerator / denominator


def e_curve(qhist: np.ndarray) -> np.ndarray:
    """E-measure over the 256 thresholds, pysodmetrics `Emeasure.cal_em_with_cumsumhistogram`."""
    gt_fg = int(qhist[1].sum())
    size = gt_fg + int(qhist[0].sum())
    fg_fg = np.cumsum(np.flip(qhist[1]), axis=0)
    fg_bg = np.cumsum(np.flip(qhist[0]), axis=0)
    pred_fg = fg_fg + fg_bg
    pred_bg = size - pred_fg
    if gt_fg == 0:
        total = pred_bg
    elif gt_fg == size:
        total = pred_fg
    else:
        bg_fg = gt_fg - fg_fg
        bg_bg = pred_bg - bg_fg
        mean_pred = pred_fg / size
        mean_gt = gt_fg / size
        parts = (fg_fg, fg_bg, bg_fg, bg_bg)
        pairs = (
            (1 - mean_pred, 1 - mean_gt),
            (1 - mean_pred, 0 - mean_gt),
            (0 - mean_pred, 1 - mean_gt),
            (0 - mean_pred, 0 - mean_gt),
        )
        results = np.empty((4, 256), dtype=np.float64)
        for i, (numel, (a, b)) in enumerate(zip(parts, pairs)):
            align = 2 * (a * b) / (a**2 + b**2 + EPS)
            results[i] = (align + 1) ** 2 / 4 * numel
        total = results.sum(axis=0)
    return total / (size - 1 + EPS)


def quantised(hist: np.ndarray, lv: Levels) -> np.ndarray:
    """Re-bin a raw-level histogram onto pysodmetrics' `(pred * 255).astype(uint8)` bins."""
    out = np.zeros((2, 256), dtype=np.int64)
    np.add.at(out[0], lv.quant, hist[0])
    np.add.at(out[1], lv.quant, hist[1])
    return out


# ---- MAE and S-measure from histograms ----


def mae(hist: np.ndarray, lv: Levels) -> float:
    n = int(hist.sum())
    return float((hist[0] @ lv.value + hist[1] @ (1 - lv.value)) / n)


def _s_object(counts: np.ndarray, vals: np.ndarray) -> float:
    n = int(counts.sum())
    mean = float(counts @ vals) / n
    std = float(np.sqrt(counts @ (vals - mean) ** 2 / (n - 1))) if n > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim_hist(h: np.ndarray, vals: np.ndarray) -> float:
    """pysodmetrics `Smeasure.ssim` of one quadrant from its joint histogram."""
    n = int(h.sum())
    if n == 0:
        return float("nan")  # pysodmetrics takes the mean of an empty slice: nan
    both = h[0] + h[1]
    n1 = int(h[1].sum())
    x = float(both @ vals) / n
    y = n1 / n
    dx = vals - x
    sigma_x = float(both @ dx**2) / (n - 1 + EPS)
    sigma_y = ((n - n1) * y**2 + n1 * (1 - y) ** 2) / (n - 1 + EPS)
    sigma_xy = float(h[0] @ dx * (0 - y) + h[1] @ dx * (1 - y)) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _ssim_pixels(pred: np.ndarray, gt: np.ndarray) -> float:
    """pysodmetrics `Smeasure.ssim` on the pixels: used where the exact zero tests decide."""
    n = pred.size
    x, y = np.mean(pred), np.mean(gt)
    sigma_x = np.sum((pred - x) ** 2) / (n - 1 + EPS)
    sigma_y = np.sum((gt - y) ** 2) / (n - 1 + EPS)
    sigma_xy = np.sum((pred - x) * (gt - y)) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return float(alpha / (beta + EPS))
    return 1.0 if beta == 0 else 0.0


def s_measure(pred: np.ndarray, gt: np.ndarray, quads: list[np.ndarray], cyx: tuple[int, int], lv: Levels) -> float:
    """pysodmetrics `Smeasure.cal_sm` (alpha 0.5); `pred` raw uint8, `gt` bool."""
    hist = sum(quads)
    n, n1 = int(hist.sum()), int(hist[1].sum())
    vals = lv.value
    if n1 == 0:
        return float(1 - (hist[0] @ vals) / n)
    if n1 == n:
        return float((hist[1] @ vals) / n)
    gt_mean = n1 / n
    obj = _s_object(hist[1], vals) * gt_mean + _s_object(hist[0], 1 - vals) * (1 - gt_mean)
    h, w = gt.shape
    cy, cx = cyx
    area = h * w
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    weights = (w_lt, w_rt, w_lb, 1 - w_lt - w_rt - w_lb)
    slices = ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, w)),
              (slice(cy, h), slice(0, cx)), (slice(cy, h), slice(cx, w)))  # fmt: skip
    region = 0.0
    for qh, wt, sl in zip(quads, weights, slices):
        if np.count_nonzero(qh[0] + qh[1]) == 1:
            # Constant prediction: pysodmetrics' float mean may leave a tiny nonzero variance
            # that flips its `alpha != 0` / `beta == 0` tests, so replay it on the pixels.
            score = _ssim_pixels(vals[pred[sl]], gt[sl])
        else:
            score = _ssim_hist(qh, vals)
        region += score * wt
    return float(np.maximum(0, obj * S_ALPHA + region * (1 - S_ALPHA)))


# ---- weighted F ----


def _gauss_1d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """1-D factor of MATLAB's fspecial('gaussian', [7 7], 5), which is separable."""
    m = (size - 1) / 2
    x = np.arange(-m, m + 1)
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def weighted_f(pred: np.ndarray, gt: np.ndarray, lv: Levels) -> float:
    """pysodmetrics `WeightedFmeasure` (beta 1); `pred` raw uint8, `gt` bool.

    pysodmetrics builds every term on every pixel; only two sets of pixels matter:
    - GT pixels: Ew = min(E, EA), EA the 7x7 Gaussian of Et, where Et copies E from the nearest
      GT pixel (scipy's feature transform; its tie-breaking picks which). The filter reads Et only
      within 3 px of GT, so Et is built there alone.
    - background pixels with a nonzero prediction: Ew = pred * (2 - exp(log(0.5) / 5 * dist)).
    """
    box = bbox(gt, 3)
    if box is None:
        return 0.0
    ft = distance_transform_edt(~gt, return_distances=False, return_indices=True)
    err = 1 - lv.value  # E = |pred - 1| on GT, per raw level
    gt_b, pred_b = gt[box], pred[box]
    et = err[pred_b]  # E itself on GT pixels
    ring = cv2.dilate(gt_b.view(np.uint8), np.ones((7, 7), np.uint8)).view(bool) & ~gt_b
    et[ring] = err[pred[ft[0][box][ring], ft[1][box][ring]]]
    g = _gauss_1d()
    ea = cv2.sepFilter2D(et, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT)
    ew_fg = np.minimum(ea[gt_b], et[gt_b])
    # Background weights from scipy's distance: sqrt of the exact integer squared offset.
    nonzero = (lv.value != 0)[pred]
    nonzero &= ~gt
    idx = np.flatnonzero(nonzero)
    w = gt.shape[1]
    dy = ft[0].ravel()[idx] - idx // w
    dx = ft[1].ravel()[idx] - idx % w
    weight = 2 - np.exp(np.log(0.5) / 5 * np.sqrt((dy * dy + dx * dx).astype(np.float64)))
    fpw = float(lv.value[pred.ravel()[idx]] @ weight)
    tpw = float(np.count_nonzero(gt)) - float(np.sum(ew_fg))
    recall = 1 - float(np.mean(ew_fg))
    precision = tpw / (tpw + fpw + EPS)
    return (1 + WF_BETA) * recall * precision / (recall + WF_BETA * precision + EPS)
