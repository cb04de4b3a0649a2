"""Training step throughput and peak memory: `pdfnet-pipeline bench train [--set size=1024]`.

Full training steps (forward with losses, backward, AdamW) of the configured model on synthetic
inputs, with the loop's precision rules (bf16 autocast on CUDA, float32 on CPU) and channels-last
on CUDA. On CUDA it tries batch 1, 2, 4, ... until out of memory and reports the largest that
fits. Baseline: the reference's figures in spec/model.md (CPU float32 at 1024²: ~180 s per step,
~20 GiB peak; RTX 4090 inference 165 ms).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet
from pdfnet_pipeline.runtime import pick_device, precision
from pdfnet_pipeline.train.optim import OptimConfig, build_optimizer


@dataclass
class Config:
    size: int = 1024
    preset: str = "reference"
    device: str = "auto"
    precision: str = "auto"
    steps: int = 3  # timed steps per batch size, after one warm-up step
    max_batch: int = 1  # on CUDA: doubled up to this (or until out of memory)
    compile: bool = False


def _step(model, opt, inputs, dtype, device) -> None:
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model(**inputs)
    out.losses["total"].float().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _measure(cfg: Config, batch: int, device: torch.device) -> tuple[float, float]:
    model = build_pdfnet(PDFNetConfig(preset=cfg.preset)).to(device)
    cl = device.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, OptimConfig(), device)
    run_model = torch.compile(model) if cfg.compile else model
    dtype = precision(device, cfg.precision).dtype
    s = cfg.size
    image = torch.randn(batch, 3, s, s, device=device)
    inputs = {
        "image": image.contiguous(memory_format=torch.channels_last) if cl else image,
        "depth": torch.rand(batch, 1, s, s, device=device),
        "mask": (torch.rand(batch, 1, s, s, device=device) > 0.5).float(),
        "depth_target": torch.rand(batch, 1, s, s, device=device),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _step(run_model, opt, inputs, dtype, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        _step(run_model, opt, inputs, dtype, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS
    return cfg.steps / (time.perf_counter() - t0), peak


def run(cfg: Config) -> None:
    device = pick_device(cfg.device)
    dtype = precision(device, cfg.precision).dtype
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training step, PDFNet {cfg.preset} at {cfg.size}², {dtype or torch.float32}, {name}")
    print("baseline (spec/model.md, reference code): CPU fp32 1024² ~180 s/step (0.0056 steps/s), ~20 GiB peak")
    batch = 1
    while batch <= cfg.max_batch:
        try:
            rate, peak = _measure(cfg, batch, device)
        except torch.OutOfMemoryError:
            print(f"batch {batch:>3}: out of memory")
            break
        print(f"batch {batch:>3}: {rate:.3f} steps/s, {rate * batch:.2f} samples/s, peak {peak:.2f} GiB")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        batch *= 2
