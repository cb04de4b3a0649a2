"""Data path: samples/s from a Zarr store vs decoding JPEG + PNG + 8-bit depth PNGs, same augmentations.

`pdfnet-pipeline bench data --set size=1024 --set samples=16`. Both paths apply the identical
augmentation (same per-sample seeds) and return the same tensors; only the source differs. The
baseline is what a file-based loader (the reference) does per sample: decode a JPEG image, a PNG
mask and two 8-bit depth PNGs (input + supervision) and resize them to the training size.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pdfnet_pipeline.data import augment as aug
from pdfnet_pipeline.data.dataset import DataConfig, EpochSampler, StoreDataset, make_loader


@dataclass
class Config:
    size: int = 1024
    samples: int = 16
    workers: list[int] = field(default_factory=lambda: [0, 1, 2])
    batch_size: int = 1
    epochs: int = 2  # passes timed per setting (the first warms the page cache)


class FileDataset(Dataset):
    """The baseline: per-sample image/mask/depth files decoded and resized, then augmented."""

    def __init__(self, root: Path, ids: list[str], size: int, seed: int = 0) -> None:
        self.root, self.ids, self.size, self.seed = root, ids, size, seed
        self.cfg = aug.AugmentConfig()

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, name: str, mode: str) -> np.ndarray:
        im = Image.open(self.root / name).convert(mode)
        return np.asarray(im.resize((self.size, self.size), Image.BILINEAR))

    def __getitem__(self, key):
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        q = ("small", "base", "large")[int(rng.integers(3))]
        sid = self.ids[index]
        image, mask = self._load(f"{sid}.jpg", "RGB"), self._load(f"{sid}.png", "L")
        depth = (self._load(f"{sid}_{q}.png", "L") / 255).astype(np.float16)
        target = (self._load(f"{sid}_large_1024.png", "L") / 255).astype(np.float16)
        params = aug.sample_params(rng, self.cfg, self.size)
        image, mask, (depth, target) = aug.apply(params, image, mask, [depth, target])
        return {
            "image": torch.from_numpy(np.array(image)),
            "mask": torch.from_numpy(np.array(mask)),
            "depth": torch.from_numpy(np.array(depth)),
            "depth_target": torch.from_numpy(np.array(target)),
        }


def _build(tmp: Path, cfg: Config) -> tuple[Path, Path, list[str]]:
    """A store and the equivalent files from the generated sample (originals ~1 MP, non-square)."""
    from pdfnet_pipeline import store
    from pdfnet_pipeline.data.sample import make_sample

    ids, files = [f"b{i}" for i in range(cfg.samples)], tmp / "files"
    files.mkdir()
    spec = store.StoreSpec(
        split="bench", ids=ids, orig_sizes=[(cfg.size, cfg.size)] * cfg.samples, size=cfg.size, manifest_sha256="bench"
    )
    st = store.create(tmp / "bench.zarr", spec)
    for i, sid in enumerate(ids):
        image, mask, _ = make_sample(0, "DIS-TR", i)
        Image.fromarray(image).save(files / f"{sid}.jpg", quality=95)
        Image.fromarray(mask).save(files / f"{sid}.png")
        depth = np.asarray(Image.fromarray(mask).resize(image.shape[1::-1]), dtype=np.float32) / 255
        maps = {}
        for k, name in enumerate(store.DEPTH_MAPS):
            d = np.clip(0.3 + 0.5 * depth + 0.05 * k, 0, 1)
            Image.fromarray((d * 255).astype(np.uint8)).save(files / f"{sid}_{name}.png")
            maps[name] = np.asarray(Image.fromarray(d).resize((cfg.size, cfg.size), Image.BILINEAR))
        small = lambda a, mode: np.asarray(Image.fromarray(a).resize((cfg.size, cfg.size), Image.BILINEAR))  # noqa: E731
        st.write_sample(i, small(image, "RGB"), small(mask, "L"), maps)
    return tmp / "bench.zarr", files, ids


def _rate(dataset, cfg: Config, workers: int) -> float:
    sampler = EpochSampler(len(dataset), shuffle=True, seed=0)
    loader = make_loader(dataset, sampler, DataConfig(workers=workers), cfg.batch_size)
    best = 0.0
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += batch["image"].shape[0]
        best = max(best, n / (time.perf_counter() - t0))
    return best


def run(cfg: Config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store_path, files, ids = _build(Path(tmp), cfg)
        zarr_ds = StoreDataset([store_path], train=True)
        file_ds = FileDataset(files, ids, cfg.size)
        print(f"data path, {cfg.samples} samples at {cfg.size}², batch {cfg.batch_size}, augmentations on (CPU)")
        print(f"{'workers':>8} {'zarr store':>12} {'jpg+png files':>14} {'speed-up':>9}")
        for w in cfg.workers:
            z, f = _rate(zarr_ds, cfg, w), _rate(file_ds, cfg, w)
            print(f"{w:>8} {z:>10.2f}/s {f:>12.2f}/s {z / f:>8.2f}x")
