"""Samples -> PDFNet inputs: the one conversion train, validation, eval and predict share.

A sample travels as uint8 image / mask and float16 depth up to the device (4x less to copy than
float32); here, on the device, the image is ImageNet-normalised into B x 3 x H x W (the permute
gives a channels-last tensor without a copy), the depth maps become B x 1 x H x W float32 and the
mask B x 1 x H x W in [0, 1].
"""

from __future__ import annotations

import torch

from pdfnet_pipeline.data.augment import normalize_image


def model_inputs(
    image: torch.Tensor,
    depth: torch.Tensor,
    device: torch.device,
    *,
    mask: torch.Tensor | None = None,
    depth_target: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """image B x H x W x 3 uint8, depth B x H x W in [0, 1] (any float), optional mask B x H x W
    uint8 and depth_target B x H x W -> the keyword arguments of `PDFNet.forward` / `predict`."""
    nb = device.type == "cuda"  # pinned host batches copy asynchronously
    out = {
        "image": normalize_image(image.to(device, non_blocking=nb)),
        "depth": depth.to(device, non_blocking=nb).unsqueeze(1).float(),
    }
    if mask is not None:
        out["mask"] = mask.to(device, non_blocking=nb).unsqueeze(1).float() / 255.0
    if depth_target is not None:
        out["depth_target"] = depth_target.to(device, non_blocking=nb).unsqueeze(1).float()
    return out


def batch_inputs(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """A collated dataset batch (StoreDataset items) -> model inputs; keys it lacks stay absent."""
    return model_inputs(
        batch["image"], batch["depth"], device, mask=batch.get("mask"), depth_target=batch.get("depth_target")
    )
