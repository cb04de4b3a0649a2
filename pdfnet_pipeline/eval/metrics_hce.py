"""Human Correction Effort (HCE, DIS ECCV 2022) identical to pysodmetrics 1.6.2, made fast.

pysodmetrics' `HumanCorrectionEffortMeasure.cal_hce` (a port of the official DIS code) spends
its time in two places: skimage's skeleton of the GT (here the same skeleton visiting only the
thinning front, metrics_skeleton.py, and cached by GT content in memory and optionally on disk)
and a Python loop over every contour point in `filter_conditional_boundary` (vectorised here).
The morphology runs on the bounding box of GT | prediction plus a margin wider than any
operation reaches, which leaves every contour, its point order and its coordinates unchanged.

The result depends on OpenCV's contour tracing and `approxPolyDP` (73.6667 on the pysodmetrics
fixture with OpenCV <= 4.12, 74.333 with 4.13+), hence the pinned opencv-python-headless.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from pdfnet_pipeline.eval.metrics_core import bbox
from pdfnet_pipeline.eval.metrics_skeleton import skeletonize

RELAX = 5
EPSILON = 2.0
_KERNEL = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # skimage disk(1), pysodmetrics' element
_MARGIN = RELAX + 3  # > the 5 dilations + 1 condition dilation that reach outside the union


def gt_key(gt: np.ndarray) -> str:
    """Content key of a binary GT: the same mask gets the same skeleton wherever it lives."""
    digest = hashlib.blake2b(np.packbits(gt).tobytes(), digest_size=20)
    digest.update(np.asarray(gt.shape, np.int64).tobytes())
    return digest.hexdigest()


class SkeletonCache:
    """GT skeletons by content key: a dict for this process plus, if `folder` is set, one packed
    .npy per GT shared by worker processes and later runs (written atomically)."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else None
        self._memory: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def get(self, gt: np.ndarray) -> np.ndarray:
        key = gt_key(gt)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        skel = self._load(key, gt.shape)
        if skel is None:
            self.misses += 1
            skel = skeletonize(gt)
            self._save(key, skel)
        else:
            self.hits += 1
        self._memory[key] = skel
        return skel

    def _path(self, key: str) -> Path | None:
        return self.folder / f"{key}.npy" if self.folder else None

    def _load(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            packed = np.load(path, allow_pickle=False)
            return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed and rewritten

    def _save(self, key: str, skel: np.ndarray) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.packbits(skel))
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file


def _boundary_effort(contours: tuple, mask: np.ndarray, condition: np.ndarray, offset) -> int:
    """Polygon points + independent regions: pysodmetrics `filter_conditional_boundary` followed
    by `count_polygon_control_points`, without the per-point Python loop.

    A contour point is kept when the dilated condition holds there and no earlier kept point sat
    on the same pixel; as the condition is per pixel this is "condition and first occurrence".
    Kept points form runs inside each contour; a contour's last run absorbs its first (reversed)
    when their ends are 8-neighbours, exactly as the reference does.
    """
    n_labels, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    n_regions = n_labels - 1
    if not contours:
        return n_regions
    condition = cv2.dilate(condition.astype(np.uint8), _KERNEL)
    pts = np.concatenate(contours)[:, 0, :]  # (x, y) = (col, row)
    lengths = np.fromiter((len(c) for c in contours), dtype=np.intp, count=len(contours))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    cols, rows = pts[:, 0], pts[:, 1]
    lin = rows.astype(np.intp) * mask.shape[1] + cols
    first = np.zeros(len(lin), dtype=bool)
    first[np.unique(lin, return_index=True)[1]] = True
    kept = first & (condition[rows, cols] != 0)
    touched = np.unique(labels[rows[kept], cols[kept]]).size
    # Runs of kept points that do not cross a contour start.
    cont_start = np.zeros(len(lin), dtype=bool)
    cont_start[starts] = True
    prev_kept = np.concatenate(([False], kept[:-1])) & ~cont_start
    next_kept = np.concatenate((kept[1:], [False])) & ~np.concatenate((cont_start[1:], [True]))
    run_start = np.flatnonzero(kept & ~prev_kept)
    run_end = np.flatnonzero(kept & ~next_kept) + 1
    run_contour = np.searchsorted(starts, run_start, side="right") - 1
    # Original coordinates as int64 [col, row] rows, the array the reference builds.
    xy = np.stack((cols + offset[1], rows + offset[0]), axis=1).astype(np.int64)
    points = 0
    bounds = np.flatnonzero(np.diff(np.concatenate(([-1], run_contour, [-1]))))  # group edges
    for g0, g1 in zip(bounds[:-1], bounds[1:]):
        segs = [xy[a:b] for a, b in zip(run_start[g0:g1], run_end[g0:g1])]
        if len(segs) > 1 and np.abs(segs[0][0] - segs[-1][-1]).max() == 1:
            segs[-1] = np.concatenate((segs[-1], segs[0][::-1]))
            del segs[0]
        for seg in segs:
            points += len(cv2.approxPolyDP(seg[:, None, :], EPSILON, False))
    return points + n_regions - touched


def hce(pred: np.ndarray, gt: np.ndarray, gt_skeleton: np.ndarray) -> int:
    """HCE of binary `pred` against binary `gt` (relax 5, epsilon 2); both bool HxW."""
    box = bbox(gt | pred, _MARGIN)
    if box is None:
        return 0
    offset = (box[0].start, box[1].start)
    gt, pred, skel = gt[box], pred[box], gt_skeleton[box]
    union = gt | pred
    tp = gt & pred
    fp = pred & ~tp
    fn = gt & ~tp
    eroded_union = cv2.erode(union.astype(np.uint8), _KERNEL, iterations=RELAX).astype(bool)
    fp_ = fp & eroded_union
    for _ in range(RELAX):
        fp_ = cv2.dilate(fp_.astype(np.uint8), _KERNEL).astype(bool) & ~gt
    fp_ &= fp
    fn_ = fn & eroded_union
    for _ in range(RELAX):
        fn_ = cv2.dilate(fn_.astype(np.uint8), _KERNEL).astype(bool) & ~pred
    fn_ &= fn
    fn_ |= skel & ~tp  # skeleton pixels the prediction misses stay as structural FN
    contours_fp, _ = cv2.findContours(fp_.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    contours_fn, _ = cv2.findContours(fn_.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    effort = _boundary_effort(contours_fp, fp_, tp | fn_, offset)
    effort += _boundary_effort(contours_fn, fn_, ~(tp | fp_ | fn_), offset)
    return int(effort)
