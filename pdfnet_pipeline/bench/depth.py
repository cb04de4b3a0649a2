"""Images/s of stage depth against a per-image loop like the reference's, same images, same model;
"keep" vs "square" inputs on photos of DIS sizes (bench/depth_aspect.py); and how far bf16
autocast moves the maps from fp32.

    pdfnet-pipeline bench depth [--set arch=\"tiny\" --set images=8 --set batch_sizes=[1,8]]
    pdfnet-pipeline bench depth --set arch=\"small\" --set aspect_images=24 --set repeats=3
    pdfnet-pipeline bench depth --set 'deviation_archs=["small","base","large"]' --set 'deviation_inputs=[518,1024]'

Reference-style loop (what PDFNet's depth script does): per image, cv2 read, /255, cv2 bicubic
to 518², normalise, one forward at batch 1, bilinear (align_corners=True) to 1024², min-max,
x255, write one 8-bit PNG. Ours: the depth stage with that one model (maps = [small]), worker
decoding, batching, bf16 on CUDA, writer threads, into a Zarr store that also holds the 1024²
image and mask (more bytes written than the loop). Weights are random (speed only). Model
loading is outside both timings. Also prints bytes per sample of the store on disk.

bf16 deviation: per model and input side, mean and max |bf16 - fp32| of the min-maxed square maps
(store side), same random weights and inputs, on the bench's images. Random weights: real weights
may move differently (the GPU check of issue 11 measures the released ones where they exist).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pdfnet_pipeline.bench.depth_aspect import DIS_SIZES


@dataclass
class Config:
    arch: str = "tiny"  # tiny | small | base | large
    images: int = 8  # generated DIS-like images (~1 MP JPEGs)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    size: int = 1024
    input_size: int = 518
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU (both paths)
    workers: int = 2
    write_threads: int = 4
    seed: int = 0
    parts: list[str] = field(default_factory=lambda: ["loop", "aspect", "bf16"])  # which tables to print
    repeats: int = 1  # interleaved timed runs per row; the median is printed
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


def reference_loop(model, paths: list[Path], out: Path, cfg: Config, device, amp) -> float:
    """Seconds for the per-image loop."""
    import cv2
    import torch
    import torch.nn.functional as F

    from pdfnet_pipeline.depth import dam

    mean, std = np.array(dam.IMAGENET_MEAN, np.float32), np.array(dam.IMAGENET_STD, np.float32)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for p in paths:
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        x = (cv2.resize(img, (cfg.input_size, cfg.input_size), interpolation=cv2.INTER_CUBIC) - mean) / std
        x = torch.from_numpy(x.transpose(2, 0, 1).copy())[None].to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            d = model(pixel_values=x).predicted_depth.float()
        d = F.interpolate(d[:, None], (cfg.size, cfg.size), mode="bilinear", align_corners=True)[0, 0]
        d = (d - d.min()) / (d.max() - d.min()) * 255.0
        cv2.imwrite(str(out / f"{p.stem}.png"), d.cpu().numpy().astype(np.uint8))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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


def _stage_rows(base, tmp: Path, cfg: Config, ref_ips: float) -> None:
    from pdfnet_pipeline.depth import stage

    speed: dict[int, list[float]] = {b: [] for b in cfg.batch_sizes}
    for r in range(cfg.repeats):
        for b in cfg.batch_sizes:
            summary = stage.run(replace(base, stores=tmp / f"stores_b{b}_{r}", batch_size=b))[0]
            speed[b].append(summary["written"] / summary["seconds"])
    for b in cfg.batch_sizes:
        ips = statistics.median(speed[b])
        print(f"{'stage depth (store: image+mask+map)':<34}{b:>6}{ips:>10.2f}{ips / ref_ips:>9.2f}")


def _loop_rows(base, tmp: Path, paths: list[Path], cfg: Config, device, amp) -> None:
    """The reference-style loop vs the stage at each batch size, and bytes on disk."""
    from pdfnet_pipeline.depth import dam

    model, _ = dam.load_dam(cfg.arch, "random", seed=cfg.seed)
    model.to(device)
    reference_loop(model, paths[:1], tmp / "warm", cfg, device, amp)  # warm-up
    ref_s = statistics.median(
        reference_loop(model, paths, tmp / f"ref_png{r}", cfg, device, amp) for r in range(cfg.repeats)
    )
    ref_ips = len(paths) / ref_s
    print(f"{'path':<34}{'batch':>6}{'img/s':>10}{'vs loop':>9}")
    print(f"{'reference-style per-image loop':<34}{1:>6}{ref_ips:>10.2f}{1.0:>9.2f}")
    _stage_rows(base, tmp, cfg, ref_ips)
    store_path = tmp / f"stores_b{cfg.batch_sizes[-1]}_0" / "DIS-VD.zarr"
    per = _bytes(store_path) / len(paths)
    png = _bytes(tmp / "ref_png0") / len(paths)
    print(
        f"bytes/sample on disk: store {per / 1e6:.2f} MB (image+mask+1 map, {cfg.size}²; "
        f"each extra float16 map adds ~{_bytes(store_path / 'depth') / len(paths) / 1e6:.2f} MB); "
        f"reference 8-bit PNG {png / 1e6:.2f} MB"
    )


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
    from pdfnet_pipeline.bench import depth_aspect
    from pdfnet_pipeline.data.manifest import read_manifest
    from pdfnet_pipeline.depth import stage

    unknown = set(cfg.parts) - {"loop", "aspect", "bf16"}
    if unknown:
        raise ValueError(f"bench depth parts {sorted(unknown)}: choose among loop, aspect, bf16")
    with tempfile.TemporaryDirectory(prefix="bench-depth-") as tmp:
        tmp = Path(tmp)
        manifest = _dataset(tmp, cfg.images)
        m = read_manifest(manifest)
        paths = [e.image_path(m.root) for e in m.split("DIS-VD")]
        base = stage.Config(
            manifest=manifest,
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
        device = runtime.pick_device(cfg.device)
        amp = runtime.precision(device, cfg.precision).dtype
        print(
            f"bench depth: DAM v2 {cfg.arch} (RANDOM weights: speed only), {len(paths)} images ~1 MP, "
            f"{cfg.size}² output, device {device}, autocast {amp or 'off (fp32)'}"
        )
        if "loop" in cfg.parts:
            _loop_rows(base, tmp, paths, cfg, device, amp)
        if "aspect" in cfg.parts:
            n = cfg.images if cfg.aspect_images is None else cfg.aspect_images
            depth_aspect.rows(base, tmp, cfg.aspect_sizes, n, max(cfg.batch_sizes), cfg.repeats)
        if "bf16" in cfg.parts:
            _bf16_rows(paths, cfg, device)
