"""Boundary map, integrity map, patch weights and tile order on constructed inputs."""

import math

import pytest
import torch

from pdfnet_pipeline.model.blocks import merge_tiles, split_tiles
from pdfnet_pipeline.model.fse import boundary_integrity, patch_weights, select_patches


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _step_logits(h=16, w=16, hi=4.0, lo=-4.0):
    """Left half foreground (logit hi), right half background (logit lo)."""
    p = torch.full((1, 1, h, w), lo)
    p[..., : w // 2] = hi
    return p


def test_boundary_paper_matches_hand_values():
    p = _step_logits()
    b, s = boundary_integrity(p, "paper")
    # H = 16: k = 2 (even) -> 3x3 average, zero padded with count_include_pad
    qa, qb = _sig(_sig(4.0)), _sig(_sig(-4.0))
    # interior pixel left of the edge (row 5, col 7): 3 columns, two of qa and one of qb
    assert b[0, 0, 5, 7].item() == pytest.approx(2 * abs(qa - (2 * qa + qb) / 3), rel=1e-5)
    # far from the edge and borders: q equals its local mean -> no boundary
    assert b[0, 0, 5, 3].item() == pytest.approx(0.0, abs=1e-6)
    # corner: zero padding counts, mean = 4 qb / 9
    assert b[0, 0, 0, 15].item() == pytest.approx(2 * abs(qb - 4 * qb / 9), rel=1e-5)
    # integrity = relu(sigmoid(p) - 5 B)
    assert s[0, 0, 5, 3].item() == pytest.approx(_sig(4.0), rel=1e-5)
    assert s[0, 0, 5, 7].item() == pytest.approx(max(0.0, _sig(4.0) - 5 * b[0, 0, 5, 7].item()), abs=1e-6)


def test_boundary_kernel_for_odd_k():
    # H = 24: k = 3 (odd) -> 3x3 window; H = 32: k = 4 (even) -> 5x5 window
    for h, kernel in ((24, 3), (32, 5)):
        p = torch.full((1, 1, h, h), -4.0)
        p[..., h // 2, h // 2] = 4.0
        b, _ = boundary_integrity(p, "paper")
        # interior only: the zero padding makes the border a "boundary" too
        assert (b[0, 0, 3:-3, 3:-3] > 1e-4).sum().item() == kernel * kernel


def test_boundary_v2_is_thresholded():
    p = _step_logits()
    b, s = boundary_integrity(p, "v2")
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    qa, qb = _sig(_sig(4.0)), _sig(_sig(-4.0))
    assert b[0, 0, 5, 7].item() == float(abs(qa - (2 * qa + qb) / 3) > 0.1)
    assert torch.allclose(s, torch.relu(p.sigmoid() - b))


def test_patch_weights_from_boundary_tiles():
    b = torch.zeros(1, 1, 16, 16)  # 8x8 tiles of 2x2 pixels
    b[0, 0, 0, 0] = 0.8  # tile (0, 0): mean 0.2
    b[0, 0, 6:8, 10:12] = 0.5  # tile (3, 5): mean 0.5
    w = patch_weights(b, "paper")
    assert w.shape == (1, 1, 8, 8)
    expected = torch.ones(8, 8)
    expected[0, 0] = 1 + 5 * 0.2
    expected[3, 5] = 1 + 5 * 0.5
    torch.testing.assert_close(w[0, 0], expected)
    w2 = patch_weights(b, "v2")
    assert w2[0, 0, 0, 0].item() == 2.0 and w2[0, 0, 3, 5].item() == 2.0 and w2.sum().item() == 64 + 2


def test_select_patches_scales_each_tile():
    patch = torch.ones(1, 2, 32, 32)
    w = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    out = select_patches(patch, w)
    assert out[0, 1, 4 * 3 + 1, 4 * 5 + 2].item() == 3 * 8 + 5


def test_tile_order_is_row_major_and_tile_major():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    t = split_tiles(x)
    assert t.shape == (128, 1, 2, 2)
    # batch index = tile * B + sample; tile = row * 8 + col
    tile, sample = 8 * 2 + 5, 1
    torch.testing.assert_close(t[tile * 2 + sample, 0], x[sample, 0, 4:6, 10:12])
    torch.testing.assert_close(merge_tiles(t, 2), x)
