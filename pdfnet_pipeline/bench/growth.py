"""How each stage's cost grows with image count, megapixels and resolution, on this machine.

    pdfnet-pipeline bench growth [--set repeats=3 --set 'sizes=[512,768,1024]']

- depth: `stage run depth` (the four maps, tiny random DAM v2 for all three models: the data path
  and store cost, not the GPU's) over generated photos: seconds against the number of photos
  (at `count_mp`), against megapixels (at `photos` photos) and against the store side `sizes`
  (DAM inputs fixed at 518 / 1036, as in the paper).
- train: one PDFNet optimizer step (forward, losses, backward, AdamW) at each of `sizes`, batch 1,
  `preset` (tiny by default: the reference preset needs ~25 s / 8.5 GiB at 512² and ~180 s /
  20 GiB at 1024² on 2 cores, spec/model.md); an epoch is that times the training images.
- eval: `PDFNet.predict` per image at each of `sizes`, and the six metrics (ours, one process)
  per prediction / GT pair against megapixels.

Everything runs in this process after a warm-up; each row is the median (and min) of `repeats`
measurements, rows interleaved in one shuffled order per repeat. Random weights: cost only.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Config:
    counts: list[int] = field(default_factory=lambda: [4, 8, 16])  # photos, at count_mp
    count_mp: float = 2.0
    megapixels: list[float] = field(default_factory=lambda: [2.0, 5.0, 8.0])  # at `photos` photos
    photos: int = 4
    sizes: list[int] = field(default_factory=lambda: [512, 768, 1024])
    preset: str = "tiny"
    workers: int = 2
    repeats: int = 3
    seed: int = 0


def _photo_size(mp: float) -> list[int]:
    """A 4:3 landscape W x H of `mp` megapixels."""
    w = int(round((mp * 1e6 * 4 / 3) ** 0.5))
    return [w, int(round(mp * 1e6 / w))]


def _depth_job(tmp: Path, cfg: Config, photos: int, mp: float, size: int):
    from pdfnet_pipeline.bench.depth_aspect import write_photos
    from pdfnet_pipeline.depth import stage

    folder = tmp / f"photos_{photos}_{mp}"
    manifest = folder / "m.jsonl"
    if not manifest.exists():
        write_photos(folder, [_photo_size(mp)], photos)
    tiny = stage.ModelSpec("tiny", "random")

    def job() -> float:
        scfg = stage.Config(
            manifest=manifest,
            stores=Path(tempfile.mkdtemp(dir=tmp, prefix="stores-")),  # a fresh store every run
            splits=["DIS-VD"],
            size=size,
            models=stage.Models(small=tiny, base=tiny, large=tiny),
            workers=cfg.workers,
            device="cpu",
            progress=False,
        )
        start = time.perf_counter()
        (summary,) = stage.run(scfg)
        if summary["written"] != photos:
            raise RuntimeError(f"bench growth: {summary['written']} of {photos} photos written")
        return time.perf_counter() - start

    return job


def _train_job(cfg: Config, size: int):
    import torch

    from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet
    from pdfnet_pipeline.train.optim import OptimConfig, build_optimizer

    torch.manual_seed(cfg.seed)
    model = build_pdfnet(PDFNetConfig(preset=cfg.preset)).train()
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    image, depth = torch.randn(1, 3, size, size), torch.rand(1, 1, size, size)
    mask = (torch.rand(1, 1, size, size) > 0.5).float()

    def job() -> float:
        start = time.perf_counter()
        model(image, depth, mask, depth).losses["total"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return job


def _predict_job(cfg: Config, size: int):
    import torch

    from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet

    torch.manual_seed(cfg.seed)
    model = build_pdfnet(PDFNetConfig(preset=cfg.preset)).eval()
    image, depth = torch.randn(1, 3, size, size), torch.rand(1, 1, size, size)

    def job() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.predict(image, depth)
        return time.perf_counter() - start

    return job


def _metrics_job(tmp: Path, cfg: Config, mp: float):
    from pdfnet_pipeline.bench.metrics import synth_pair
    from pdfnet_pipeline.eval.metrics import measure
    from pdfnet_pipeline.eval.metrics_hce import SkeletonCache

    w, h = _photo_size(mp)
    pred, gt = synth_pair(h, w, cfg.seed)

    def job() -> float:
        start = time.perf_counter()
        measure(pred, gt, "pair", SkeletonCache(), "pysodmetrics")  # cold skeleton: a first evaluation
        return time.perf_counter() - start

    return job


def jobs(tmp: Path, cfg: Config) -> dict[tuple[str, str, str], object]:
    """(stage, axis, value) -> a callable returning seconds."""
    out = {}
    for n in cfg.counts:
        out["depth", "photos", f"{n} x {cfg.count_mp:g} MP"] = _depth_job(tmp, cfg, n, cfg.count_mp, 1024)
    for mp in cfg.megapixels:
        out["depth", "megapixels", f"{cfg.photos} x {mp:g} MP"] = _depth_job(tmp, cfg, cfg.photos, mp, 1024)
    for size in cfg.sizes:
        label = f"{cfg.photos} x {cfg.count_mp:g} MP, {size}²"
        out["depth", "store side", label] = _depth_job(tmp, cfg, cfg.photos, cfg.count_mp, size)
    for size in cfg.sizes:
        out["train", "resolution", f"1 step {size}²"] = _train_job(cfg, size)
    for size in cfg.sizes:
        out["eval", "resolution", f"predict {size}²"] = _predict_job(cfg, size)
    for mp in cfg.megapixels:
        out["eval", "megapixels", f"metrics {mp:g} MP"] = _metrics_job(tmp, cfg, mp)
    return out


def run(cfg: Config) -> dict:
    import os

    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        todo = jobs(Path(tmp), cfg)
        for job in todo.values():
            job()  # warm-up: imports, model loading, first-call allocations
        times: dict = {k: [] for k in todo}
        rng = random.Random(cfg.seed)
        for _ in range(cfg.repeats):
            order = list(todo)
            rng.shuffle(order)
            for key in order:
                times[key].append(todo[key]())
    print(
        f"cost growth on {len(os.sched_getaffinity(0))} cores, CPU, random weights (DAM v2 tiny x 3 models, "
        f"PDFNet {cfg.preset}), {cfg.repeats} interleaved repeats after a warm-up"
    )
    print(f"| {'stage':<5} | {'axis':<10} | {'workload':<20} | min s  | median s |")
    print(f"|{'-' * 7}|{'-' * 12}|{'-' * 22}|--------|----------|")
    for (stage, axis, value), ts in times.items():
        print(f"| {stage:<5} | {axis:<10} | {value:<20} | {min(ts):6.2f} | {statistics.median(ts):8.2f} |")
    return times
