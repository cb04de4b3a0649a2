"""AdamW with the paper's parameter groups, and the learning rate as a pure function of the step.

A pure `lr_at(step)` (nanoGPT style) instead of a stateful scheduler: resuming needs only the step
number, and the schedule can be tested and plotted without building an optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class OptimConfig:
    lr: float = 1e-5  # paper: constant 1e-5 (the reference's cosine has lr = warmup_lr = min_lr)
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps, for either schedule
    min_lr: float = 0.0  # cosine floor
    clip_grad: float = 0.0  # max global grad norm; 0 = no clipping (the norm is still checked)
    # The Swin backbone's lr as a fraction of lr (fine-tuning a small set: keep the pretrained
    # features, adapt the rest); 0 freezes it (no gradients, not in the optimizer).
    backbone_lr_scale: float = 1.0


BACKBONE = "encoder."  # the Swin encoder's parameter names (model.pdfnet.PDFNet.encoder)


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) in a run of `total_steps` steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay on matrices and kernels only: none on biases and other 1-D parameters
    (norm weights), as in the paper's recipe. With a backbone lr scale other than 1 the backbone's
    parameters form two more groups carrying `lr_scale` (read by `set_lr`)."""
    groups = {(b, d): [] for b in (False, True) for d in (True, False)}
    split = backbone_lr_scale != 1.0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups[split and name.startswith(BACKBONE), not (p.ndim <= 1 or name.endswith(".bias"))].append(p)
    out = [{"params": groups[False, d], "weight_decay": weight_decay if d else 0.0} for d in (True, False)]
    if split:
        out += [
            {"params": groups[True, d], "weight_decay": weight_decay if d else 0.0, "lr_scale": backbone_lr_scale}
            for d in (True, False)
        ]
    return out


def freeze_backbone(model: torch.nn.Module) -> int:
    """backbone_lr_scale = 0: the backbone gets no gradients at all; returns the frozen parameter count."""
    frozen = [p for name, p in model.named_parameters() if name.startswith(BACKBONE)]
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; backbone_lr_scale 0 freezes the backbone first."""
    if cfg.backbone_lr_scale < 0:
        raise ValueError(f"optim.backbone_lr_scale {cfg.backbone_lr_scale}: must be >= 0 (0 freezes the backbone)")
    if cfg.backbone_lr_scale == 0:
        freeze_backbone(model)
    # fused AdamW is one kernel per step on CUDA; on CPU the default (foreach) is the fast path
    fused = device.type == "cuda"
    groups = param_groups(model, cfg.weight_decay, cfg.backbone_lr_scale or 1.0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


@dataclass(frozen=True)
class Window:
    """One optimizer step's micro-batches [start, end) of an epoch and the samples they hold."""

    start: int
    end: int
    samples: int

    def weight(self, micro_samples: int) -> float:
        """A micro-batch's share of the step: the step is the mean over exactly the window's samples."""
        return micro_samples / self.samples


def accumulation_windows(samples: int, batch_size: int, accum_steps: int, drop_last: bool = False) -> list[Window]:
    """An epoch of `samples` (per rank) in micro-batches of `batch_size`, grouped `accum_steps` to
    an optimizer step; the last micro-batch and the last window may be shorter (pure, like lr_at).

    `drop_last` (the loader's, under torch.compile): the last partial micro-batch is not loaded, so
    every micro-batch has one shape; the last window may still hold fewer micro-batches."""
    if drop_last:
        samples -= samples % batch_size
    micro = math.ceil(samples / batch_size)
    acc = max(accum_steps, 1)
    windows = []
    for start in range(0, micro, acc):
        end = min(start + acc, micro)
        windows.append(Window(start, end, min(end * batch_size, samples) - start * batch_size))
    return windows
