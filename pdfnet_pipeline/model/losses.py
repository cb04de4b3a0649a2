"""PDFNet losses (paper eqs. 11-20, reference `forward`; spec/model.md "Losses").

Each is a plain function on tensors (B x 1 x H x W) so it can be tested on its own; `pdfnet_losses`
combines them with deep supervision into the named terms the trainer logs.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def structure_weight(mask: torch.Tensor) -> torch.Tensor:
    """The structure loss's pixel weights `1 + 5 |avgpool31(mask) - mask|` (boundaries count more)."""
    return 1 + 5 * (F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask).abs()


def structure_loss(
    logits: torch.Tensor, mask: torch.Tensor, iou_smooth: float = 1.0, weit: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted BCE + weighted IoU, weights `structure_weight(mask)`, mean over the batch.

    `iou_smooth` is c in `1 - (inter + c) / (union - inter + c)`: 1 for the paper, 1e-6 for v2.
    `weit`: the mask's weights when the caller already has them (the same mask for every output).
    """
    weit = structure_weight(mask) if weit is None else weit
    wbce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    pred = logits.sigmoid()
    inter = (pred * mask * weit).sum(dim=(2, 3))
    union = ((pred + mask) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + iou_smooth) / (union - inter + iou_smooth)
    return (wbce + wiou).mean()


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """1 x 1 x size x size Gaussian window (sums to 1), shared: never modify it in place."""
    return _gaussian_window(size, sigma, torch.device(device or "cpu"), dtype)


# Constants are made once per (device, dtype), not copied host -> device at every loss call (a
# blocking copy on CUDA). Process-wide caches of tensors nobody modifies.
@functools.cache
def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # float32 like the reference, so the window matches it to the last bit
    g = torch.tensor([math.exp(-((x - size // 2) ** 2) / (2 * sigma**2)) for x in range(size)], dtype=torch.float32)
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).to(device=device, dtype=dtype)[None, None]


class _Blur(torch.autograd.Function):
    """Correlation with a square window, zero padding, same size out; its backward is the
    correlation of the gradient with the flipped window, which is the exact adjoint. The forward
    is F.conv2d's, bit for bit; the backward agrees with autograd's convolution backward to float
    rounding (~1e-6 relative) and runs ~3x faster on the CPU, where oneDNN's backward for these
    one-channel 11x11 kernels took ~23% of a 256² training step."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(win)
        return F.conv2d(t, win, padding=win.shape[-1] // 2, groups=t.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (win,) = ctx.saved_tensors
        return F.conv2d(grad, win.flip((-2, -1)), padding=win.shape[-1] // 2, groups=grad.shape[1]), None


def _blur(t: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    c = t.shape[1]
    win = gaussian_window(size, sigma, t.device, t.dtype).expand(c, 1, size, size)
    return _Blur.apply(t, win)


def ssim_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The local mean and mean square of `y` that SSIM needs (11x11 Gaussian, sigma 1.5)."""
    return _blur(y), _blur(y * y)


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, y_stats: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Per-pixel SSIM with an 11x11 Gaussian window (sigma 1.5, zero padding), C1 = 0.01², C2 = 0.03².

    `y_stats`: `ssim_stats(y)` when the caller already has them (the same mask for every output)."""
    mu1 = _blur(x)
    mu2, yy = ssim_stats(y) if y_stats is None else y_stats
    s11 = _blur(x * x) - mu1 * mu1
    s22 = yy - mu2 * mu2
    s12 = _blur(x * y) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu1 * mu2 + c1) * (2 * s12 + c2)
    den = (mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2)
    return num / den


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the map (the reference's size_average=True)."""
    return ssim_map(x, y).mean()


def ssim_loss(
    prob: torch.Tensor, mask: torch.Tensor, mask_stats: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """`1 - (1 + SSIM(prob, mask)) / 2` on probabilities."""
    return 1 - (1 + ssim_map(prob, mask, mask_stats).mean()) / 2


_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel gradients (x, y) of B x 1 x H x W with zero padding (cross-correlation, as conv2d)."""
    kx, ky = _sobel_kernels(d.device, d.dtype)
    return F.conv2d(d, kx, padding=1), F.conv2d(d, ky, padding=1)


@functools.cache
def _sobel_kernels(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor(_SOBEL_X, device=device, dtype=dtype)[None, None]
    return kx, kx.transpose(-1, -2)


def integrity_prior_loss(
    prob: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Depth integrity-prior loss on probabilities `prob`, normalised depth and GT mask.

    `Py = s M + (1-s)(1-M)`, `FP = (1-Py) s`, `FN = (1-Py) M`, `L = -log(Py + eps)`,
    `mu` = mean depth inside the mask **per sample** (the reference takes it over the whole batch;
    identical at batch size 1), `diff = (d - mu)²`,
    `lv = mean(L (diff FP + (1 - diff) FN) Py)` (the reference multiplies by Py once more than
    eq. 12; kept), `lg = mean(L (|Gx| + |Gy|))` with Sobel on d; returns `lv + lg`.
    """
    py = prob * mask + (1 - prob) * (1 - mask)
    fp = (1 - py) * prob
    fn = (1 - py) * mask
    log_p = -torch.log(py + eps)
    mu = (depth * mask).sum(dim=(1, 2, 3), keepdim=True) / (mask.sum(dim=(1, 2, 3), keepdim=True) + eps)
    diff = (depth - mu) ** 2
    lv = (log_p * (diff * fp + (1 - diff) * fn) * py).mean()
    gx, gy = sobel(depth)
    lg = (log_p * (gx.abs() + gy.abs())).mean()
    return lv + lg


def silog_loss(pred: torch.Tensor, target: torch.Tensor, lambd: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """Scale-invariant log loss on probabilities, in float32: `sqrt(mean(g²) - λ mean(g)² + eps)`."""
    g = torch.log(target.float() + eps) - torch.log(pred.float() + eps)
    return torch.sqrt((g**2).mean() - lambd * g.mean() ** 2 + eps)


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Side outputs are brought to the target size with bilinear, align_corners=False."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def pdfnet_losses(
    preds: list[torch.Tensor],
    depth_preds: list[torch.Tensor],
    mask: torch.Tensor,
    depth_target: torch.Tensor,
    iou_smooth: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Named, weighted loss terms; they sum to "total".

    Final output weight 1, each side output 0.5: `structure + SSIM/2` and `l_inte/2`;
    depth: `0.1 SILog(final) + 0.05 SILog(side)` for the 4 depth sides. `depth_target` in [0,1].
    Computed in float32 with autocast off (SSIM and log terms are fragile in bf16/fp16).
    """
    with torch.autocast(mask.device.type, enabled=False):
        return _pdfnet_losses(
            [p.float() for p in preds], [p.float() for p in depth_preds], mask.float(), depth_target.float(), iou_smooth
        )


def _pdfnet_losses(preds, depth_preds, mask, depth_target, iou_smooth):
    structure = ssim_term = integrity = depth = mask.new_zeros(())
    # What depends on the mask alone is the same for all six outputs: made once, the same values
    # (on a CPU at 256² these pooling and blur passes were ~20% of a training step).
    weit, mask_stats = structure_weight(mask), ssim_stats(mask)
    for i, logits in enumerate(preds):
        w = 1.0 if i == 0 else 0.5
        x = resize_to(logits, mask)
        prob = x.sigmoid()
        structure = structure + w * structure_loss(x, mask, iou_smooth, weit)
        ssim_term = ssim_term + w * 0.5 * ssim_loss(prob, mask, mask_stats)
        integrity = integrity + w * 0.5 * integrity_prior_loss(
            resize_to(logits, depth_target).sigmoid(), depth_target, mask
        )
    for i, logits in enumerate(depth_preds):
        w = 0.1 if i == 0 else 0.05
        depth = depth + w * silog_loss(resize_to(logits, depth_target).sigmoid(), depth_target)
    terms = {"structure": structure, "ssim": ssim_term, "integrity": integrity, "depth": depth}
    terms["total"] = structure + ssim_term + integrity + depth
    return terms
