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


def _smooth_logits(h, seed=0):
    """A smooth logit field in about [-8, 8], like a side output."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, h // 8, h // 8, generator=g) * 6
    return torch.nn.functional.interpolate(coarse, size=(h, h), mode="bilinear", align_corners=True)


def test_fse_separates_bf16_logits_in_float32(monkeypatch):
    """Under bf16 autocast the side output reaching the FSE is bf16; BIS must still run in float32.

    Reference: the float32 integrity map of the unrounded logits. Inside the FSE the map now
    differs from it only through the bf16 rounding of the logits themselves (measured 0.0027 max
    at 128²; tolerance 5e-3), where BIS computed in bf16 is off by 0.04 (the issue-14 figure).
    """
    from pdfnet_pipeline.model import fse as fse_mod
    from pdfnet_pipeline.model.fse import FSE

    seen = []

    def recording(pred, variant="paper"):
        seen.append(pred.dtype)
        out = boundary_integrity(pred, variant)
        seen.append(out)
        return out

    monkeypatch.setattr(fse_mod, "boundary_integrity", recording)
    logits = _smooth_logits(128)
    _, s_ref = boundary_integrity(logits, "paper")
    torch.manual_seed(0)
    fse = FSE(16, 8, 2).eval()
    img, dep, patch = torch.randn(1, 16, 128, 128), torch.randn(1, 16, 128, 128), torch.randn(1, 16, 256, 256)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = fse(img, dep, patch, logits.bfloat16())
    assert all(torch.isfinite(o).all() for o in out)
    dtype, (_, s_fse) = seen
    assert dtype == torch.float32 and s_fse.dtype == torch.float32
    assert (s_fse - s_ref).abs().max().item() < 5e-3
    # what the FSE computed before: BIS on the bf16 logits, far outside that tolerance
    _, s_bf16 = boundary_integrity(logits.bfloat16(), "paper")
    assert (s_bf16.float() - s_ref).abs().max().item() > 0.02


def test_fse_float32_path_unchanged_by_the_cast():
    """In float32 the entry cast is a no-op: the FSE equals the spec's steps written out, bit for bit."""
    from pdfnet_pipeline.model.blocks import tokens, untokens, up_like
    from pdfnet_pipeline.model.fse import FSE

    torch.manual_seed(0)
    fse = FSE(16, 8, 1).eval()  # pool ratio 1: pooled tokens are the tokens
    img, dep, patch = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8), torch.randn(1, 16, 16, 16)
    pred = _smooth_logits(16)
    with torch.no_grad():
        got = fse(img, dep, patch, pred)
        b, s = boundary_integrity(pred)
        g = pred.sigmoid()
        i, d, p = img * up_like(g, img), dep * up_like(g, dep), patch * up_like(g, patch)
        ic = fse.I_channelswich(i)
        dc = fse.D_channelswich(d * (up_like(pred, d).sigmoid() + up_like(s, d)))
        pc = fse.P_channelswich(select_patches(p, patch_weights(b)))
        p_att = fse.PI(tokens(pc), torch.cat([tokens(ic), tokens(dc)], 1))
        d_att = fse.DI(tokens(dc), torch.cat([tokens(ic), tokens(pc)], 1))
        i_att = fse.ID(fse.IP(tokens(ic), p_att), d_att)
        want = (untokens(i_att, 8, 8) + ic, untokens(d_att, 8, 8) + dc, untokens(p_att, 16, 16) + pc)
    for a, w in zip(got, want):
        assert torch.equal(a, w)
