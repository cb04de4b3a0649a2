"""The front-only Zhang-Suen skeleton equals scikit-image's `skeletonize` pixel for pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.morphology import skeletonize as skimage_skeletonize

from pdfnet_pipeline.eval.metrics_skeleton import skeletonize


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_equal_skimage(seed):
    # Dense random pixels hit every one of the 256 neighbourhood codes in both sub-passes.
    rng = np.random.default_rng(seed)
    for _ in range(60):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        mask = rng.random(shape) < rng.uniform(0.2, 0.97)
        np.testing.assert_array_equal(skeletonize(mask), skimage_skeletonize(mask))


@pytest.mark.parametrize("seed", range(3))
def test_dis_like_masks_equal_skimage(seed):
    # Thick blobs (many sub-passes), thin wires and holes, touching the image border.
    rng = np.random.default_rng(seed)
    h, w = 240, 320
    mask = np.zeros((h, w), np.uint8)
    for _ in range(3):
        cv2.circle(mask, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(20, 90)), 1, -1)
    for _ in range(15):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(mask, p1, p2, 1, int(rng.integers(1, 4)))
    cv2.circle(mask, (int(rng.integers(0, w)), int(rng.integers(0, h))), 12, 0, -1)
    mask = mask.astype(bool)
    np.testing.assert_array_equal(skeletonize(mask), skimage_skeletonize(mask))


def test_edge_cases_by_hand():
    assert not skeletonize(np.zeros((5, 7), bool)).any()
    line = np.zeros((5, 8), bool)
    line[2, 1:7] = True  # already one pixel wide: kept whole
    np.testing.assert_array_equal(skeletonize(line), line)
    block = np.ones((2, 2), bool)  # skimage keeps the top row of a 2x2 block
    np.testing.assert_array_equal(skeletonize(block), [[True, True], [False, False]])
    full = np.ones((9, 9), bool)
    np.testing.assert_array_equal(skeletonize(full), skimage_skeletonize(full))
