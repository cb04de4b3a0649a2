"""Per-epoch validation scores on tensors: max F (beta² 0.3) and MAE as pysodmetrics computes them.

Same rules as py_sod_metrics 1.6.2 `Fmeasure` / `MAE` with normalize=True: GT > 128; prediction
/255 then min-max stretched per image when not constant; thresholds on uint8(pred * 255) from 255
down to 0; per-image F curves averaged over images, then the max. Done with one bincount per batch
on the prediction's device, so validation never leaves the GPU. The full metric suite lives in
eval/metrics.py; this is the small in-loop version.
"""

from __future__ import annotations

import torch

BETA2 = 0.3


def fmeasure_mae(pred_u8: torch.Tensor, gt_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B x H x W uint8 prediction and GT -> (B x 256 F curves, B MAEs), float64."""
    b = pred_u8.shape[0]
    p = pred_u8.reshape(b, -1).double() / 255.0
    gt = gt_u8.reshape(b, -1) > 128
    lo, hi = p.min(dim=1, keepdim=True).values, p.max(dim=1, keepdim=True).values
    p = torch.where(hi > lo, (p - lo) / (hi - lo).where(hi > lo, torch.ones_like(hi)), p)
    mae = (p - gt.double()).abs().mean(dim=1)
    q = (p * 255).to(torch.int64)  # truncation, as numpy's astype(uint8)
    offsets = torch.arange(b, device=q.device).view(b, 1) * 512
    hist = torch.bincount((q + 256 * gt + offsets).flatten(), minlength=512 * b).view(b, 2, 256).double()
    fg = hist[:, 1].flip(1).cumsum(1)  # GT pixels with pred >= threshold, threshold 255 .. 0
    bg = hist[:, 0].flip(1).cumsum(1)
    tp, pos = fg, fg + bg
    pos = torch.where(pos == 0, torch.ones_like(pos), pos)
    t = gt.sum(dim=1, keepdim=True).clamp_min(1).double()
    precision, recall = tp / pos, tp / t
    num = (1 + BETA2) * precision * recall
    den = torch.where(num == 0, torch.ones_like(num), BETA2 * precision + recall)
    return num / den, mae


class ValScores:
    """Running sums of F curves and MAE; `result` after an all-reduce of `packed` across ranks."""

    def __init__(self, device: torch.device) -> None:
        self.curves = torch.zeros(256, dtype=torch.float64, device=device)
        self.mae = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, pred_u8: torch.Tensor, gt_u8: torch.Tensor) -> None:
        curves, mae = fmeasure_mae(pred_u8, gt_u8)
        self.curves += curves.sum(0)
        self.mae += mae.sum()
        self.count += curves.shape[0]

    def packed(self) -> torch.Tensor:
        return torch.cat([self.curves, self.mae.view(1), self.count.view(1)])

    @staticmethod
    def result(packed: torch.Tensor) -> dict[str, float]:
        n = max(packed[-1].item(), 1.0)
        return {
            "max_f": (packed[:256] / n).max().item(),
            "mae": packed[256].item() / n,
            "count": int(packed[-1].item()),
        }


def to_u8(logits: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W logits -> B x H x W uint8 as the eval stage writes PNGs (sigmoid, x255, cast)."""
    return (torch.sigmoid(logits.float()) * 255).to(torch.uint8)[:, 0]
