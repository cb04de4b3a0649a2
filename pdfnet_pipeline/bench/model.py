"""Model benchmark: forward and forward+backward time and peak memory, SDPA vs materialised CoA
attention, printed side by side with the reference anchors of spec/model.md.

`pdfnet-pipeline bench model --set sizes=[512] --set preset="reference"`. CPU float32 by default;
on CUDA the passes run under bf16 autocast. Peak memory: CUDA max allocated, or on CPU the peak
resident set size during the pass (sampled every 5 ms) minus the resident size before it (model
weights excluded). Weights are random: timing does not depend on them.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field

import torch

# spec/model.md, reference code, CPU 2 threads float32 batch 1
ANCHORS = {
    (1024, "forward"): "reference CPU: inference 32 s, 3.8 GiB",
    (1024, "train"): "reference CPU: ~180 s, 20 GiB",
    (512, "train"): "reference CPU: 25 s, 8.5 GiB",
}


@dataclass
class Config:
    sizes: list[int] = field(default_factory=lambda: [512, 1024])
    preset: str = "reference"
    variant: str = "paper"
    device: str = "auto"  # auto: cuda if available, else cpu
    attention: list[str] = field(default_factory=lambda: ["sdpa", "materialized"])
    passes: list[str] = field(default_factory=lambda: ["forward", "train"])
    repeats: int = 1
    threads: int = 0  # 0: torch default
    warmup: bool = True  # one untimed pass first (oneDNN / cuDNN set-up costs seconds)


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class _PeakRSS:
    """Samples the resident set size in a thread: the CPU counterpart of max_memory_allocated."""

    def __enter__(self):
        self.base = self.peak = _rss_gib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_gib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_gib())


def _measure(model, size: int, mode: str, device: torch.device, repeats: int, warmup: bool) -> tuple[float, float]:
    image = torch.randn(1, 3, size, size, device=device)
    depth = torch.rand(1, 1, size, size, device=device)
    mask = (torch.rand(1, 1, size, size, device=device) > 0.5).float()
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        if mode == "forward":
            model.eval()
            with torch.no_grad(), amp:
                model.predict(image, depth)
        else:
            model.train()
            with amp:
                out = model(image, depth, mask, depth)
            out.losses["total"].backward()
            model.zero_grad(set_to_none=True)

    if warmup:
        step()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with _PeakRSS() as rss:
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = rss.peak - rss.base
    return min(times), peak


def run(cfg: Config) -> None:
    from pdfnet_pipeline.model.pdfnet import PDFNetConfig, build_pdfnet, set_materialized_attention

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    model = build_pdfnet(PDFNetConfig(preset=cfg.preset, variant=cfg.variant)).to(device)
    dtype = "bf16 autocast" if device.type == "cuda" else "float32"
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"PDFNet {cfg.preset}/{cfg.variant}, batch 1, {name}, {dtype}")
    print(
        f"{'size':>5} {'pass':<8} " + " ".join(f"{a + ' s':>16} {a + ' GiB':>18}" for a in cfg.attention) + "  baseline"
    )
    for size in cfg.sizes:
        for mode in cfg.passes:
            cells = []
            for att in cfg.attention:
                set_materialized_attention(model, att == "materialized")
                try:
                    sec, peak = _measure(model, size, mode, device, cfg.repeats, cfg.warmup)
                    cells.append(f"{sec:>16.2f} {peak:>18.2f}")
                except (RuntimeError, MemoryError) as err:  # e.g. CUDA OOM with the 16k x 16k matrix
                    cells.append(f"{'failed':>16} {type(err).__name__:>18}")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            print(f"{size:>5} {mode:<8} " + " ".join(cells) + "  " + ANCHORS.get((size, mode), ""), flush=True)
    set_materialized_attention(model, False)
