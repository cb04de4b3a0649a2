"""Stage depth against the official preparation of the four maps (bench/depth_official.py), "keep"
vs "square" inputs on photos of DIS sizes (bench/depth_aspect.py), and how far bf16 autocast
moves the maps from fp32. Weights are random everywhere: speed only.

    pdfnet-pipeline bench depth                      # official rows: 8 photos of 2-8 MP, 3 repeats
    pdfnet-pipeline bench depth --set 'official_archs=["small","base","large"]' --set device=\"cuda\"
    pdfnet-pipeline bench depth --set arch=\"small\" --set aspect_images=24 --set 'parts=["aspect"]'
    pdfnet-pipeline bench depth --set 'deviation_archs=["small","base","large"]' --set 'deviation_inputs=[518,1024]'

bf16 deviation: per model and input side, mean and max |bf16 - fp32| of the min-maxed square maps
(store side), same random weights and inputs, on the bench's images. Random weights: real weights
may move differently (the GPU check of issue 11 measures the released ones where they exist).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdfnet_pipeline.bench.depth_aspect import DIS_SIZES


@dataclass
class Config:
    arch: str = "tiny"  # tiny | small | base | large
    images: int = 8  # photos at DIS sizes for the official rows (cycling through aspect_sizes)
    batch_sizes: list[int] = field(default_factory=lambda: [8])  # the stage's batch: the last one
    size: int = 1024
    input_size: int = 518
    supervision_size: int = 1024
    official_archs: list[str] = field(default_factory=list)  # small, base, large (empty: `arch` for all)
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU (both paths)
    workers: int = 2
    write_threads: int = 4
    seed: int = 0
    parts: list[str] = field(default_factory=lambda: ["official", "aspect", "bf16"])  # which tables to print
    repeats: int = 3  # interleaved timed runs per row; min and median are printed
    draft: bool = True  # JPEG draft decoding in the stage rows (the stage's default)
    aspect_images: int | None = None  # keep-vs-square photos (None: `images`)
    aspect_sizes: list[list[int]] = field(default_factory=lambda: [list(s) for s in DIS_SIZES])  # (W, H), cycled
    deviation_archs: list[str] = field(default_factory=list)  # bf16-vs-fp32 rows per arch (empty: `arch`)
    deviation_inputs: list[int] = field(default_factory=lambda: [518])  # input targets (1024 -> 1036)
    deviation_images: int = 4


def _dataset(tmp: Path, n: int) -> Path:
    from pdfnet_pipeline.data.manifest import scan, write_manifest
    from pdfnet_pipeline.data.sample import generate_sample

    generate_sample(tmp / "ds", per_split=n, seed=7, train=0)
    result = scan(tmp / "ds", ["DIS-VD"], progress=False)
    write_manifest(result.manifest, tmp / "m.jsonl")
    return tmp / "m.jsonl"


def bf16_deviation(arch: str, target: int, paths: list[Path], cfg: Config, device) -> tuple[float, float]:
    """(mean, max) |bf16 - fp32| over the min-maxed `cfg.size`² square maps of `paths`: the same
    random weights and inputs; bf16 autocast on the backbone, the DPT head in fp32 either way."""
    import torch

    from pdfnet_pipeline.data.images import load_image
    from pdfnet_pipeline.depth import dam

    model, _ = dam.load_dam(arch, "random", seed=cfg.seed)
    model.to(device)
    total, worst, count = 0.0, 0.0, 0
    for path in paths:
        chw = torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1)
        x = dam.to_model_input(chw, dam.input_side(target))[None].to(device)
        with torch.inference_mode():
            full, _ = dam.predict(model, x, cfg.size)
            half, _ = dam.predict(model, x, cfg.size, torch.bfloat16)
        gap = (full - half).abs()
        total, worst, count = total + gap.sum().item(), max(worst, gap.max().item()), count + gap.numel()
    return total / count, worst


def _bf16_rows(paths: list[Path], cfg: Config, device) -> None:
    from pdfnet_pipeline.depth import dam

    n = min(cfg.deviation_images, len(paths))
    print(
        f"bf16 autocast vs fp32 (RANDOM weights, DPT head fp32 both, min-max maps at {cfg.size}², "
        f"{n} images, device {device}):"
    )
    print(f"{'model':<8}{'input':>7}{'mean |d|':>11}{'max |d|':>11}")
    for arch in cfg.deviation_archs or [cfg.arch]:
        for target in cfg.deviation_inputs:
            mean, worst = bf16_deviation(arch, target, paths[:n], cfg, device)
            print(f"{arch:<8}{dam.input_side(target):>7}{mean:>11.2e}{worst:>11.2e}")


def run(cfg: Config) -> None:
    from pdfnet_pipeline import runtime
    from pdfnet_pipeline.bench import depth_aspect, depth_official
    from pdfnet_pipeline.data.manifest import read_manifest
    from pdfnet_pipeline.depth import stage

    unknown = set(cfg.parts) - {"official", "aspect", "bf16"}
    if unknown:
        raise ValueError(f"bench depth parts {sorted(unknown)}: choose among official, aspect, bf16")
    with tempfile.TemporaryDirectory(prefix="bench-depth-") as tmp:
        tmp = Path(tmp)
        device = runtime.pick_device(cfg.device)
        amp = runtime.precision(device, cfg.precision).dtype
        print(f"bench depth: DAM v2 (RANDOM weights: speed only), device {device}, autocast {amp or 'off (fp32)'}")
        if "official" in cfg.parts:
            archs = dict(zip(("small", "base", "large"), cfg.official_archs or [cfg.arch] * 3))
            depth_official.rows(tmp, cfg, archs)
        if "aspect" in cfg.parts:
            base = stage.Config(
                splits=["DIS-VD"],
                size=cfg.size,
                input_size=cfg.input_size,
                maps=["small"],
                models=stage.Models(small=stage.ModelSpec(cfg.arch, "random")),
                device=cfg.device,
                precision=cfg.precision,
                workers=cfg.workers,
                write_threads=cfg.write_threads,
                progress=False,
                seed=cfg.seed,
                draft=cfg.draft,
            )
            n = cfg.images if cfg.aspect_images is None else cfg.aspect_images
            depth_aspect.rows(base, tmp, cfg.aspect_sizes, n, max(cfg.batch_sizes), cfg.repeats)
        if "bf16" in cfg.parts:
            manifest = _dataset(tmp, cfg.deviation_images)
            m = read_manifest(manifest)
            _bf16_rows([e.image_path(m.root) for e in m.split("DIS-VD")], cfg, device)
