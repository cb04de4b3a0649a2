"""DIS metrics against pysodmetrics 1.6.2 (independent reference) and hand-computed values."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import py_sod_metrics as psm
import pytest
from skimage import morphology

from pdfnet_pipeline.eval.metrics import MetricsConfig, Results, evaluate_pairs, measure
from pdfnet_pipeline.eval.metrics_hce import SkeletonCache, skeletonize

FIXTURE = Path(__file__).parent / "data" / "pysodmetrics_fixture"
NAMES = sorted(p.name for p in (FIXTURE / "masks").iterdir())
TOL = 1e-12


def fixture_pairs():
    return [(FIXTURE / "preds" / n, FIXTURE / "masks" / n, n) for n in NAMES]


def reference(pred: np.ndarray, gt: np.ndarray, hce_binarize: str = "dis") -> dict:
    """pysodmetrics as documented: one step per metric class on uint8 pred / GT."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice, empty-slice means
        fm, em, sm = psm.Fmeasure(), psm.Emeasure(), psm.Smeasure()
        wfm, mae, hce = psm.WeightedFmeasure(), psm.MAE(), psm.HumanCorrectionEffortMeasure()
        for m in (fm, em, sm, wfm, mae):
            m.step(pred=pred, gt=gt)
        if hce_binarize == "pysodmetrics":
            hce.step(pred=pred, gt=gt)
            hce_value = hce.hces[0]
        else:  # the DIS definition: raw prediction > 128, through pysodmetrics' HCE
            hce_value = hce.cal_hce(pred > 128, gt > 128)
    return {
        "f_curve": fm.changeable_fms[0][::-1], "precision": fm.precisions[0][::-1],
        "recall": fm.recalls[0][::-1], "e_curve": em.changeable_ems[0][::-1],
        "s": sm.sms[0], "wf": wfm.weighted_fms[0], "mae": mae.maes[0], "hce": hce_value,
    }  # fmt: skip


def assert_same(pred: np.ndarray, gt: np.ndarray, hce_binarize: str = "dis") -> None:
    got = measure(pred, gt, "x", SkeletonCache(), hce_binarize)
    ref = reference(pred, gt, hce_binarize)
    for key in ("f_curve", "precision", "recall", "e_curve"):
        np.testing.assert_allclose(getattr(got, key), ref[key], rtol=0, atol=TOL, err_msg=key)
    assert got.max_f == pytest.approx(ref["f_curve"].max(), abs=TOL)
    assert got.mean_e == pytest.approx(ref["e_curve"][::-1].mean(), abs=TOL)
    for mine, key in ((got.s_measure, "s"), (got.weighted_f, "wf"), (got.mae, "mae")):
        if np.isnan(ref[key]):
            assert np.isnan(mine), key
        else:
            assert mine == pytest.approx(ref[key], abs=TOL), key
    assert got.hce == ref["hce"]


def synth_pair(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blobs and thin lines (DIS-like) and a blurred, noisy, shifted prediction of them."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), np.uint8)
    for _ in range(3):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(gt, centre, int(rng.integers(3, max(4, min(h, w) // 5))), 255, -1)
    for _ in range(8):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(gt, p1, p2, 255, int(rng.integers(1, 4)))
    pred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 1.5) + rng.normal(0, 25, (h, w))
    pred = np.clip(np.roll(pred, int(rng.integers(-3, 4)), axis=1), 0, 255).astype(np.uint8)
    return pred, gt


# ---- the upstream fixture ----


def expected_values() -> dict:
    versions = json.loads((FIXTURE / "version_performance.json").read_text())
    latest = {}
    for values in versions.values():  # later versions override earlier ones
        latest.update(values)
    return latest


def test_fixture_matches_upstream_expected_values():
    exp = expected_values()
    res = evaluate_pairs(fixture_pairs(), workers=1)
    assert res.sa == pytest.approx(exp["Smeasure"], abs=TOL)
    assert res.fw == pytest.approx(exp["wFmeasure"], abs=TOL)
    assert res.mae == pytest.approx(exp["MAE"], abs=TOL)
    assert res.em == pytest.approx(exp["meanEm"], abs=TOL)
    assert res.fmax == pytest.approx(exp["maxFm"], abs=TOL)
    assert exp["HCE"] == pytest.approx(73.6667, abs=1e-4)
    assert res.hce == pytest.approx(exp["HCE"], abs=1e-12)  # 221 / 3 with OpenCV 4.12
    # aerial's GT is stored as RGB; read as grayscale it is all background.
    assert [im.height for im in res.images] == [400, 375, 340]
    assert [im.hce for im in res.images] == [37, 184, 0]


def test_fixture_hce_pysodmetrics_binarisation():
    cfg = MetricsConfig(hce_binarize="pysodmetrics")
    res = evaluate_pairs(fixture_pairs(), workers=1, config=cfg)
    # HumanCorrectionEffortMeasure.step thresholds the min-max normalised map at 0.5: the
    # aerial prediction (max 171) then has pixels at "> 0.5" that the raw > 128 rule drops.
    assert [im.hce for im in res.images] == [36, 184, 1]
    assert res.hce == pytest.approx(73.66666666666667, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_each_image_matches_pysodmetrics(name):
    pred = cv2.imread(str(FIXTURE / "preds" / name), cv2.IMREAD_GRAYSCALE)
    gt = cv2.imread(str(FIXTURE / "masks" / name), cv2.IMREAD_GRAYSCALE)
    assert_same(pred, gt)
    assert_same(pred, gt, "pysodmetrics")


def test_process_pool_equals_in_process():
    one = evaluate_pairs(fixture_pairs(), workers=1)
    two = evaluate_pairs(fixture_pairs(), workers=2)
    assert one.summary() == two.summary()
    assert [im.values() for im in one.images] == [im.values() for im in two.images]
    np.testing.assert_array_equal(one.f_curve, two.f_curve)


# ---- random DIS-like pairs and edge cases, each against pysodmetrics ----


@pytest.mark.parametrize("seed", range(8))
def test_random_pairs_match_pysodmetrics(seed):
    rng = np.random.default_rng(100 + seed)
    pred, gt = synth_pair(int(rng.integers(30, 200)), int(rng.integers(30, 200)), seed)
    if seed % 2:
        pred = (pred // 50 * 50).astype(np.uint8)  # few levels: many ties in the histograms
    assert_same(pred, gt)
    assert_same(pred, gt, "pysodmetrics")


def test_empty_gt():
    pred, _ = synth_pair(64, 80, 1)
    gt = np.zeros_like(pred)
    assert_same(pred, gt)
    got = measure(pred, gt, "e", SkeletonCache())
    norm = (pred / 255 - pred.min() / 255) / (pred.max() / 255 - pred.min() / 255)
    assert got.s_measure == pytest.approx(1 - norm.mean(), abs=TOL)  # S = 1 - mean(pred)
    assert got.weighted_f == 0.0 and got.max_f == 0.0
    assert got.mae == pytest.approx(norm.mean(), abs=TOL)


def test_empty_gt_zero_prediction_by_hand():
    n = 40 * 50
    got = measure(np.zeros((40, 50), np.uint8), np.zeros((40, 50), np.uint8), "z", SkeletonCache())
    # every pixel is >= threshold 0 only: E = N / (N - 1) at thresholds 1..255, 0 at 0.
    assert got.mean_e == pytest.approx(255 / 256 * n / (n - 1), abs=TOL)
    assert (got.mae, got.s_measure, got.max_f, got.weighted_f, got.hce) == (0, 1, 0, 0, 0)


def test_full_gt_perfect_prediction_by_hand():
    full = np.full((30, 40), 255, np.uint8)
    assert_same(full, full)
    got = measure(full, full, "f", SkeletonCache())
    n = full.size
    assert got.max_f == pytest.approx(1.0, abs=TOL)
    assert got.mean_e == pytest.approx(n / (n - 1), abs=TOL)
    assert (got.mae, got.s_measure, got.hce) == (0, 1, 0)
    assert got.weighted_f == pytest.approx(1.0, abs=TOL)


@pytest.mark.parametrize("value", [0, 128, 129, 255])
def test_constant_prediction(value):
    _, gt = synth_pair(70, 90, 3)
    pred = np.full_like(gt, value)
    assert_same(pred, gt)
    got = measure(pred, gt, "c", SkeletonCache())
    v = value / 255  # a constant map is not min-max normalised
    fg = np.count_nonzero(gt > 128)
    assert got.mae == pytest.approx((fg * (1 - v) + (gt.size - fg) * v) / gt.size, abs=TOL)


def test_single_pixel_gt_in_corner():
    # centroid on the last row and column: three empty S-measure quadrants (nan upstream too)
    pred, _ = synth_pair(20, 30, 4)
    gt = np.zeros_like(pred)
    gt[-1, -1] = 255
    assert_same(pred, gt)


def test_size_mismatch_resizes_prediction_bilinear():
    pred, gt = synth_pair(90, 120, 5)
    small = cv2.resize(pred, (60, 45), interpolation=cv2.INTER_AREA)
    got = measure(small, gt, "s", SkeletonCache())
    assert got.resized and (got.height, got.width) == (90, 120)
    same = measure(cv2.resize(small, (120, 90), interpolation=cv2.INTER_LINEAR), gt, "s", SkeletonCache())
    assert not same.resized
    assert got.values() | {"resized": False} == same.values()
    assert_same(cv2.resize(small, (120, 90), interpolation=cv2.INTER_LINEAR), gt)


def test_rejects_non_uint8_input():
    gt = np.zeros((8, 8), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        evaluate_pairs([(gt.astype(np.float32), gt, "f")], workers=1)


# ---- aggregation and the skeleton cache ----


def test_results_merge_equals_joint_evaluation():
    pairs = [(*synth_pair(50, 60, s), f"s{s}") for s in range(4)]
    joint = evaluate_pairs(pairs, workers=1)
    parts = [evaluate_pairs(pairs[:1], workers=1), evaluate_pairs(pairs[1:], workers=1)]
    merged = Results.from_images(parts[0].images + parts[1].images)
    assert merged.summary() == joint.summary()
    np.testing.assert_array_equal(merged.precision, joint.precision)
    # and the aggregates are pysodmetrics' own accumulators over the same images
    fm, em = psm.Fmeasure(), psm.Emeasure()
    for pred, gt, _ in pairs:
        fm.step(pred, gt)
        em.step(pred, gt)
    assert joint.fmax == pytest.approx(fm.get_results()["fm"]["curve"].max(), abs=TOL)
    assert joint.em == pytest.approx(em.get_results()["em"]["curve"].mean(), abs=TOL)
    np.testing.assert_allclose(joint.recall, fm.get_results()["pr"]["r"][::-1], atol=TOL, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_cropped_skeleton_equals_skimage(seed):
    _, gt = synth_pair(80, 100, seed)
    mask = gt > 128
    np.testing.assert_array_equal(skeletonize(mask), morphology.skeletonize(mask))


def test_skeleton_disk_cache_is_reused(tmp_path):
    pairs = fixture_pairs()[:2]
    first = SkeletonCache(tmp_path)
    r1 = evaluate_pairs(pairs, workers=1, config=MetricsConfig(skeleton_cache=tmp_path), cache=first)
    assert (first.misses, first.hits) == (2, 0) and len(list(tmp_path.glob("*.npy"))) == 2
    second = SkeletonCache(tmp_path)
    r2 = evaluate_pairs(pairs, workers=1, cache=second)
    assert (second.misses, second.hits) == (0, 2)
    assert [im.hce for im in r1.images] == [im.hce for im in r2.images] == [37, 184]
    r2b = evaluate_pairs(pairs, workers=1, cache=second)  # in-memory hits on reuse
    assert second.hits == 4 and r2b.hce == r2.hce


# ---- randomized: varied GT and prediction kinds, each image against pysodmetrics ----


def varied_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random (pred, gt) of one of the shapes DIS data and broken models produce."""
    h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
    gt_kind = rng.choice(["empty", "full", "thin", "dis", "noise"])
    gt = np.zeros((h, w), np.uint8)
    if gt_kind == "full":
        gt[:] = 255
    elif gt_kind == "thin":  # 1 px wires, diagonals and lone pixels: skeleton == mask
        for _ in range(int(rng.integers(1, 6))):
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(gt, p1, p2, 255, 1)
        gt[rng.random((h, w)) < 0.01] = 255
    elif gt_kind == "dis":
        _, gt = synth_pair(h, w, int(rng.integers(1 << 30)))
    elif gt_kind == "noise":
        gt[rng.random((h, w)) < rng.uniform(0.1, 0.9)] = 255
    pred_kind = rng.choice(["constant", "binary", "soft", "levels", "offset", "equal"])
    if pred_kind == "constant":
        pred = np.full((h, w), rng.choice([0, 1, 127, 128, 129, 254, 255]), np.uint8)
    elif pred_kind == "binary":
        pred = np.where(rng.random((h, w)) < 0.1, 255 - gt, gt).astype(np.uint8)
    elif pred_kind == "equal":
        pred = gt.copy()
    else:
        soft = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 1.2) + rng.normal(0, 30, (h, w))
        pred = np.clip(soft, 0, 255).astype(np.uint8)
        if pred_kind == "levels":
            pred = (pred // 64 * 64).astype(np.uint8)
        elif pred_kind == "offset":  # min > 0 and max < 255: the min-max normalisation matters
            pred = (50 + pred // 2).astype(np.uint8)
    return pred, gt


@pytest.mark.parametrize("seed", range(6))
def test_varied_random_cases_match_pysodmetrics(seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(25):
        pred, gt = varied_case(rng)
        assert_same(pred, gt)
        assert_same(pred, gt, "pysodmetrics")
