"""Device and autocast choice, one rule for every stage (train, eval, predict, depth, benches)."""

from __future__ import annotations

import torch

# Spellings the stage configs accept for the same three choices.
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "fp32": "float32"}


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """ "auto": this rank's GPU when there is one, else the CPU; "cuda" gets the rank's index."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def precision(device: torch.device, requested: str = "auto") -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for float32, whether training needs a GradScaler).

    auto: bf16 on GPUs that have it, fp16 on older ones, float32 on the CPU."""
    requested = _ALIASES.get(requested, requested)
    if requested == "auto":
        if device.type != "cuda":
            return None, False
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "float32":
        return None, False
    if requested == "bf16":
        return torch.bfloat16, False
    if requested != "fp16":
        raise ValueError(f"unknown precision {requested!r} (auto, bf16, fp16, float32)")
    if device.type != "cuda":
        raise ValueError("precision fp16 needs CUDA (GradScaler); use bf16 or float32 on the CPU")
    return torch.float16, True
