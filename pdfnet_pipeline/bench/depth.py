"""Images/s of stage depth against a per-image loop like the reference's, same images, same model.

    pdfnet-pipeline bench depth [--set arch=\"tiny\" --set images=8 --set batch_sizes=[1,8]]

Reference-style loop (what PDFNet's depth script does): per image, cv2 read, /255, cv2 bicubic
to 518², normalise, one forward at batch 1, bilinear (align_corners=True) to 1024², min-max,
x255, write one 8-bit PNG. Ours: the depth stage with that one model (maps = [small]), worker
decoding, batching, bf16 on CUDA, writer threads, into a Zarr store that also holds the 1024²
image and mask (more bytes written than the loop). Weights are random (speed only). Model
loading is outside both timings. Also prints bytes per sample of the store on disk.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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


def run(cfg: Config) -> None:

    from pdfnet_pipeline import runtime
    from pdfnet_pipeline.data.manifest import read_manifest
    from pdfnet_pipeline.depth import dam, stage

    with tempfile.TemporaryDirectory(prefix="bench-depth-") as tmp:
        tmp = Path(tmp)
        manifest = _dataset(tmp, cfg.images)
        m = read_manifest(manifest)
        paths = [e.image_path(m.root) for e in m.split("DIS-VD")]
        spec = stage.ModelSpec(cfg.arch, "random")
        base = stage.Config(
            manifest=manifest,
            splits=["DIS-VD"],
            size=cfg.size,
            input_size=cfg.input_size,
            maps=["small"],
            models=stage.Models(small=spec),
            device=cfg.device,
            precision=cfg.precision,
            workers=cfg.workers,
            write_threads=cfg.write_threads,
            progress=False,
            seed=cfg.seed,
        )
        device = runtime.pick_device(cfg.device)
        amp = runtime.precision(device, cfg.precision).dtype
        model, _ = dam.load_dam(cfg.arch, "random", seed=cfg.seed)
        model.to(device)
        reference_loop(model, paths[:1], tmp / "warm", cfg, device, amp)  # warm-up
        ref_s = reference_loop(model, paths, tmp / "ref_png", cfg, device, amp)
        ref_ips = len(paths) / ref_s
        print(
            f"bench depth: DAM v2 {cfg.arch} (random weights), {len(paths)} images ~1 MP, "
            f"{cfg.size}² output, device {device}, autocast {amp or 'off (fp32)'}"
        )
        print(f"{'path':<34}{'batch':>6}{'img/s':>10}{'vs loop':>9}")
        print(f"{'reference-style per-image loop':<34}{1:>6}{ref_ips:>10.2f}{1.0:>9.2f}")
        for b in cfg.batch_sizes:
            stores = tmp / f"stores_b{b}"
            from dataclasses import replace

            summary = stage.run(replace(base, stores=stores, batch_size=b))[0]
            ips = summary["written"] / summary["seconds"]
            print(f"{'stage depth (store: image+mask+map)':<34}{b:>6}{ips:>10.2f}{ips / ref_ips:>9.2f}")
        store_path = tmp / f"stores_b{cfg.batch_sizes[-1]}" / "DIS-VD.zarr"
        per = _bytes(store_path) / len(paths)
        png = _bytes(tmp / "ref_png") / len(paths)
        print(
            f"bytes/sample on disk: store {per / 1e6:.2f} MB (image+mask+1 map, {cfg.size}²; "
            f"each extra float16 map adds ~{_bytes(store_path / 'depth') / len(paths) / 1e6:.2f} MB); "
            f"reference 8-bit PNG {png / 1e6:.2f} MB"
        )
