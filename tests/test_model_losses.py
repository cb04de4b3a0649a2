"""Losses against hand-computed values (plain Python math) and an independent SSIM (scikit-image)."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pdfnet_pipeline.model.losses import (
    integrity_prior_loss,
    pdfnet_losses,
    silog_loss,
    ssim,
    ssim_loss,
    structure_loss,
)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _structure_by_hand(logits, mask, c):
    # 2x2 map: the 31x31 average pool (zero padded, count_include_pad) covers every pixel
    flat_l, flat_m = sum(logits, []), sum(mask, [])
    avg = sum(flat_m) / 961
    w = [1 + 5 * abs(avg - m) for m in flat_m]
    bce = [math.log(1 + math.exp(x)) - x * m for x, m in zip(flat_l, flat_m)]
    wbce = sum(wi * b for wi, b in zip(w, bce)) / sum(w)
    s = [_sig(x) for x in flat_l]
    inter = sum(si * m * wi for si, m, wi in zip(s, flat_m, w))
    union = sum((si + m) * wi for si, m, wi in zip(s, flat_m, w))
    return wbce + 1 - (inter + c) / (union - inter + c)


@pytest.mark.parametrize("c", [1.0, 1e-6])
def test_structure_loss_matches_hand_computation(c):
    logits = [[2.0, -1.0], [0.0, 1.5]]
    mask = [[1.0, 0.0], [0.0, 1.0]]
    got = structure_loss(torch.tensor([[logits]]), torch.tensor([[mask]]), iou_smooth=c)
    assert got.item() == pytest.approx(_structure_by_hand(logits, mask, c), rel=1e-6)


def test_structure_loss_is_batch_mean_and_c_matters():
    a = ([[2.0, -1.0], [0.0, 1.5]], [[1.0, 0.0], [0.0, 1.0]])
    b = ([[-3.0, 0.5], [4.0, -2.0]], [[0.0, 0.0], [1.0, 0.0]])
    x = torch.tensor([[a[0]], [b[0]]])
    m = torch.tensor([[a[1]], [b[1]]])
    expected = (_structure_by_hand(*a, 1.0) + _structure_by_hand(*b, 1.0)) / 2
    assert structure_loss(x, m).item() == pytest.approx(expected, rel=1e-6)
    # c = 1 (paper) and c = 1e-6 (v2) differ visibly on a 2x2 map
    assert abs(structure_loss(x, m, 1.0).item() - structure_loss(x, m, 1e-6).item()) > 0.01


def test_ssim_interior_matches_scikit_image():
    rng = np.random.default_rng(0)
    x = rng.random((40, 40)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.standard_normal((40, 40)).astype(np.float32), 0, 1)
    _, ref = structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True
    )
    from pdfnet_pipeline.model.losses import ssim_map

    ours = ssim_map(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])[0, 0].numpy()
    # zero padding (ours, the reference) vs reflection (skimage) only differ within 5 px of the border
    np.testing.assert_allclose(ours[5:-5, 5:-5], ref[5:-5, 5:-5], atol=2e-5)
    assert ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]).item() == pytest.approx(
        float(ours.mean()), rel=1e-6
    )


def test_ssim_loss_zero_for_identical_and_half_for_uncorrelated():
    x = torch.rand(1, 1, 32, 32)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    # a constant map against a zero map: SSIM = C1 / (mu1² + C1) in the interior
    assert 0.45 < ssim_loss(torch.ones(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)).item() < 0.5


def _integrity_by_hand(s, d, m, eps=1e-8):
    h, w = len(d), len(d[0])
    mu = sum(d[i][j] * m[i][j] for i in range(h) for j in range(w)) / (sum(map(sum, m)) + eps)

    def at(i, j):
        return d[i][j] if 0 <= i < h and 0 <= j < w else 0.0

    lv = lg = 0.0
    for i in range(h):
        for j in range(w):
            py = s[i][j] * m[i][j] + (1 - s[i][j]) * (1 - m[i][j])
            fp, fn = (1 - py) * s[i][j], (1 - py) * m[i][j]
            log_p = -math.log(py + eps)
            diff = (d[i][j] - mu) ** 2
            lv += log_p * (diff * fp + (1 - diff) * fn) * py  # the reference's extra Py factor
            gx = (at(i - 1, j + 1) + 2 * at(i, j + 1) + at(i + 1, j + 1)) - (
                at(i - 1, j - 1) + 2 * at(i, j - 1) + at(i + 1, j - 1)
            )
            gy = (at(i + 1, j - 1) + 2 * at(i + 1, j) + at(i + 1, j + 1)) - (
                at(i - 1, j - 1) + 2 * at(i - 1, j) + at(i - 1, j + 1)
            )
            lg += log_p * (abs(gx) + abs(gy))
    return (lv + lg) / (h * w)


S1 = [[0.9, 0.2, 0.6], [0.4, 0.8, 0.1], [0.7, 0.3, 0.5]]
D1 = [[0.1, 0.5, 0.9], [0.3, 0.7, 0.2], [0.8, 0.0, 0.4]]
M1 = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
S2 = [[0.2, 0.6, 0.3], [0.9, 0.1, 0.7], [0.5, 0.4, 0.8]]
D2 = [[1.0, 0.6, 0.2], [0.9, 0.3, 0.0], [0.5, 0.7, 0.1]]
M2 = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]


def test_integrity_prior_loss_matches_hand_computation():
    t = lambda a: torch.tensor([[a]], dtype=torch.float64)  # noqa: E731
    got = integrity_prior_loss(t(S1), t(D1), t(M1)).item()
    assert got == pytest.approx(_integrity_by_hand(S1, D1, M1), rel=1e-9)


def test_integrity_prior_mean_is_per_sample():
    t = lambda *a: torch.tensor([[x] for x in a], dtype=torch.float64)  # noqa: E731
    got = integrity_prior_loss(t(S1, S2), t(D1, D2), t(M1, M2)).item()
    expected = (_integrity_by_hand(S1, D1, M1) + _integrity_by_hand(S2, D2, M2)) / 2
    assert got == pytest.approx(expected, rel=1e-9)


def test_silog_matches_hand_computation():
    p = [0.2, 0.5, 0.9, 0.4]
    t = [0.25, 0.4, 1.0, 0.0]
    g = [math.log(b + 1e-6) - math.log(a + 1e-6) for a, b in zip(p, t)]
    mean_g2 = sum(x * x for x in g) / 4
    mean_g = sum(g) / 4
    expected = math.sqrt(mean_g2 - 0.5 * mean_g**2 + 1e-6)
    got = silog_loss(torch.tensor(p).view(1, 1, 2, 2), torch.tensor(t).view(1, 1, 2, 2))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_total_weights_deep_supervision():
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 16, 16)
    mask = (torch.rand(1, 1, 16, 16) > 0.5).float()
    depth = torch.rand(1, 1, 16, 16)
    dlog = torch.randn(1, 1, 16, 16)
    # six identical segmentation outputs (1 + 5 x 0.5 = 3.5) and five depth outputs (0.1 + 4 x 0.05)
    terms = pdfnet_losses([logits] * 6, [dlog] * 5, mask, depth)
    s = logits.sigmoid()
    assert terms["structure"].item() == pytest.approx(3.5 * structure_loss(logits, mask).item(), rel=1e-5)
    assert terms["ssim"].item() == pytest.approx(3.5 * 0.5 * ssim_loss(s, mask).item(), rel=1e-5)
    assert terms["integrity"].item() == pytest.approx(3.5 * 0.5 * integrity_prior_loss(s, depth, mask).item(), rel=1e-5)
    assert terms["depth"].item() == pytest.approx(0.3 * silog_loss(dlog.sigmoid(), depth).item(), rel=1e-5)
    parts = sum(v for k, v in terms.items() if k != "total")
    assert terms["total"].item() == pytest.approx(parts.item(), rel=1e-6)


def test_side_outputs_are_resized_bilinear_without_align_corners():
    torch.manual_seed(1)
    small = torch.randn(1, 1, 4, 4)
    mask = (torch.rand(1, 1, 8, 8) > 0.5).float()
    up = torch.nn.functional.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    terms = pdfnet_losses([up] + [small] * 5, [], mask, torch.rand(1, 1, 8, 8))
    assert terms["structure"].item() == pytest.approx(3.5 * structure_loss(up, mask).item(), rel=1e-5)


def test_loss_constants_are_made_once_per_device_and_dtype_with_unchanged_values():
    """The SSIM window and Sobel kernels are cached (no host->device copy per call) and equal,
    bit for bit, what each call used to build: the window in float32 from Python's exp, the
    Sobel x kernel and its transpose."""
    from pdfnet_pipeline.model import losses

    g = torch.tensor([math.exp(-((x - 5) ** 2) / (2 * 1.5**2)) for x in range(11)], dtype=torch.float32)
    g = g / g.sum()
    before = (g[:, None] @ g[None, :])[None, None]
    win = losses.gaussian_window(11, 1.5, torch.device("cpu"), torch.float32)
    assert torch.equal(win, before)
    assert losses.gaussian_window(11, 1.5, torch.device("cpu"), torch.float32) is win
    assert losses.gaussian_window(11, 1.5, None) is win  # None means the CPU
    as64 = losses.gaussian_window(11, 1.5, torch.device("cpu"), torch.float64)
    assert as64.dtype == torch.float64 and torch.equal(as64, before.double())
    assert losses.gaussian_window(11, 1.5, torch.device("meta")).device.type == "meta"

    kx, ky = losses._sobel_kernels(torch.device("cpu"), torch.float32)
    assert losses._sobel_kernels(torch.device("cpu"), torch.float32)[0] is kx
    assert kx.tolist() == [[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]]
    assert torch.equal(ky, kx.transpose(-1, -2))
    # a ramp d = column index: Gx = 8 inside (weights 1 + 2 + 1 times a step of 2), Gy = 0
    ramp = torch.arange(5.0).expand(1, 1, 5, 5)
    gx, gy = losses.sobel(ramp)
    assert gx[0, 0, 1:-1, 1:-1].unique().tolist() == [8.0] and gy[0, 0, 1:-1, 1:-1].unique().tolist() == [0.0]

    # SSIM with the cached window equals a conv with a freshly built one
    torch.manual_seed(0)
    x, y = torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24)
    mu = torch.nn.functional.conv2d(x, before, padding=5)
    s11 = torch.nn.functional.conv2d(x * x, before, padding=5) - mu * mu
    mu2 = torch.nn.functional.conv2d(y, before, padding=5)
    s22 = torch.nn.functional.conv2d(y * y, before, padding=5) - mu2 * mu2
    s12 = torch.nn.functional.conv2d(x * y, before, padding=5) - mu * mu2
    c1, c2 = 0.01**2, 0.03**2
    want = ((2 * mu * mu2 + c1) * (2 * s12 + c2)) / ((mu * mu + mu2 * mu2 + c1) * (s11 + s22 + c2))
    assert torch.equal(losses.ssim_map(x, y), want)


def test_blur_backward_is_the_adjoint_of_its_forward():
    """SSIM's blur runs its own backward (the correlation's adjoint, ~3x faster on the CPU):
    the forward is F.conv2d's bit for bit, the gradient autograd's to float rounding."""
    from pdfnet_pipeline.model import losses
    from pdfnet_pipeline.model.losses import _Blur

    torch.manual_seed(0)
    win = losses.gaussian_window(11, 1.5).expand(2, 1, 11, 11)
    x = torch.rand(3, 2, 48, 40, requires_grad=True)
    grad = torch.randn(3, 2, 48, 40)
    ours = _Blur.apply(x, win)
    want = torch.nn.functional.conv2d(x, win, padding=5, groups=2)
    assert torch.equal(ours, want)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_want,) = torch.autograd.grad(want, x, grad)
    torch.testing.assert_close(g_ours, g_want, rtol=1e-5, atol=1e-6)
    x64 = torch.rand(1, 1, 20, 17, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: _Blur.apply(t, losses.gaussian_window(11, 1.5, dtype=torch.float64)), (x64,)
    )
