"""Inference at the network size, with the reference's optional test-time augmentation.

TTA (reference): horizontal flip x scales 0.75 / 1 / 1.25. Each view is predicted, brought back
to the base size and orientation (de-augmented), and the **logits** are averaged before sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

PredictFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (image, depth) -> logits

TTA_SCALES = (0.75, 1.0, 1.25)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def scaled_size(size: tuple[int, int], scale: float, multiple: int = 256) -> tuple[int, int]:
    """The view size for `scale`, rounded to the network's multiple (1024 -> 768 / 1024 / 1280):
    PDFNet cuts stride-32 maps into 8 x 8 tiles, so sides must be multiples of 256."""
    if scale == 1.0:
        return size
    return tuple(max(multiple, int(round(s * scale / multiple)) * multiple) for s in size)  # type: ignore[return-value]


def predict_logits(
    predict: PredictFn,
    image: torch.Tensor,
    depth: torch.Tensor,
    *,
    tta: bool = False,
    scales: Sequence[float] = TTA_SCALES,
    flips: Sequence[bool] = (False, True),
) -> torch.Tensor:
    """B x 1 x H x W logits at the input's size; with `tta`, the mean over flips x scales."""
    if not tta:
        return predict(image, depth)
    size = tuple(image.shape[-2:])
    total = None
    for scale in scales:
        view = scaled_size(size, scale)
        im, d = _resize(image, view), _resize(depth, view)
        for flip in flips:
            a, b = (im.flip(-1), d.flip(-1)) if flip else (im, d)
            out = predict(a, b)
            out = out.flip(-1) if flip else out
            out = _resize(out.float(), size)
            total = out if total is None else total + out
    return total / (len(scales) * len(flips))


def to_native_uint8(logits: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """sigmoid, float resize to the GT's native H x W, x255 -> uint8 (the DIS evaluation rule;
    truncating like numpy's astype(uint8) in the reference scripts)."""
    prob = torch.sigmoid(logits.float())
    prob = F.interpolate(prob, size=size_hw, mode="bilinear", align_corners=False)
    return (prob * 255).clamp(0, 255).to(torch.uint8)
