"""Train data path: our Zarr store + StoreDataset against the official PDFNet loader's per-sample work.

    pdfnet-pipeline bench data [--set samples=200 --set workers=[2] --set repeats=3]

Baseline (written from the official loader's documented behaviour, our code): per sample, a
full-resolution cv2 decode of the JPEG photo, the PNG mask and two 8-bit depth JPEGs stored at the
photo's original size (the input map drawn among small/base/large, and large_1024 as supervision),
each converted to float32 and resized bilinearly to 1024² on its own, then the augmentations
applied to each array separately (flip, rotation + largest inscribed square + resize, centre crop +
resize; PIL ImageEnhance colour enhance and grayscale on the image), and torchvision's ToTensor +
ImageNet Normalize of the image (spec/pipeline.md: the dataset normalises). Ours: the depth stage's
store (1024² uint8 / float16, one compressed chunk per sample per array) read by `StoreDataset`,
one affine warp for image + mask and one for the depth maps, the same colour bytes with a faster
smoothing filter, uint8 / float16 to the device (normalised there). Same augmentation probabilities, same DataLoader settings (batch 1); the
baseline's workers start with torch's default fork, ours from the project's forkserver
(workers.context).

Inputs at real DIS sizes: photos of 2-8 MP (a mix of 4:3, 3:2 and 16:9, portrait and landscape)
made from the generated sample with photo-like noise so JPEG decoding costs what a photo costs;
`distinct` of them cycle over `samples` entries (decode work per entry is unchanged).

Reported, per configuration, with the order of the two paths shuffled each repeat: the whole
epoch including DataLoader worker start-up (our forkserver's too), and the steady state (the next
epoch on the persistent workers); min and median over the repeats. Each measurement is a fresh
process (imports and dataset construction untimed), as each epoch 0 of a real run is: in one
process our forkserver, started once, would be free for every repeat after the first.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pdfnet_pipeline.data import augment as aug
from pdfnet_pipeline.data.dataset import DataConfig, EpochSampler, StoreDataset, make_loader

DIS_SIZES = [(1920, 1080), (2048, 1536), (2592, 1944), (1944, 2592), (3000, 2000), (3264, 2448)]  # W, H


@dataclass
class Config:
    size: int = 1024  # training side
    samples: int = 200  # entries per epoch
    distinct: int = 24  # distinct photos behind them
    sizes: list[list[int]] = field(default_factory=lambda: [list(s) for s in DIS_SIZES])
    workers: list[int] = field(default_factory=lambda: [2])
    batch_size: int = 1
    repeats: int = 3
    seed: int = 0


class OfficialStyleDataset(Dataset):
    """The baseline loader: original-size files, float32 resizes and per-array augmentation."""

    def __init__(self, root: Path, names: list[str], size: int, seed: int = 0) -> None:
        self.root, self.names, self.size, self.seed = root, names, size, seed
        self.cfg = aug.AugmentConfig()
        self.mean = torch.tensor(aug.IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(aug.IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, name: str, gray: bool) -> np.ndarray:
        import cv2

        a = cv2.imread(str(self.root / name), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        a = a if gray else cv2.cvtColor(a, cv2.COLOR_BGR2RGB)
        return cv2.resize(a.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)

    def _geometry(self, a: np.ndarray, p: aug.AugParams) -> np.ndarray:
        import cv2

        s = self.size
        if p.flip:
            a = cv2.flip(a, 1)
        if p.angle:
            m = cv2.getRotationMatrix2D((s / 2, s / 2), p.angle, 1.0)
            a = cv2.warpAffine(a, m, (s, s), flags=cv2.INTER_LINEAR)
            rad = np.deg2rad(abs(p.angle) % 90)
            side = int(s / (np.cos(rad) + np.sin(rad)))  # the largest axis-aligned inscribed square
            o = (s - side) // 2
            a = cv2.resize(a[o : o + side, o : o + side], (s, s), interpolation=cv2.INTER_LINEAR)
        if p.crop_hw is not None:
            h, w = p.crop_hw
            y, x = (s - h) // 2, (s - w) // 2
            a = cv2.resize(a[y : y + h, x : x + w], (s, s), interpolation=cv2.INTER_LINEAR)
        return a

    def __getitem__(self, key):
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        quality = ("small", "base", "large")[int(rng.integers(3))]
        name = self.names[index]
        image, mask = self._read(f"{name}.jpg", False), self._read(f"{name}.png", True)
        depth = self._read(f"{name}_{quality}.jpg", True) / 255.0
        target = self._read(f"{name}_large_1024.jpg", True) / 255.0
        p = aug.sample_params(rng, self.cfg, self.size)
        image, mask, depth, target = (self._geometry(a, p) for a in (image, mask, depth, target))
        image = _pil_photometric(p, np.clip(image, 0, 255).astype(np.uint8))
        # torchvision's ToTensor + Normalize(ImageNet), as the reference dataset returns its image
        # (ours is normalised on the device); ToTensor also scales the mask to [0, 1].
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255)
        image = image.sub_(self.mean).div_(self.std)
        return {
            "image": image,
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).div(255),
            "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)),
            "depth_target": torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)),
        }


def _pil_photometric(p: aug.AugParams, image: np.ndarray) -> np.ndarray:
    """The official colour augmentation: PIL's ImageEnhance chain, then grayscale (ours gives the
    same bytes with OpenCV's smoothing for sharpness; see augment.apply_photometric)."""
    from PIL import Image, ImageEnhance

    if p.enhance is None and not p.grayscale:
        return image
    pil = Image.fromarray(image)
    if p.enhance is not None:
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color, ImageEnhance.Sharpness)
        for enhancer, factor in zip(enhancers, p.enhance):
            pil = enhancer(pil).enhance(factor)
    if p.grayscale:
        pil = pil.convert("L").convert("RGB")
    return np.asarray(pil)


def _photo(i: int, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A generated DIS-like sample scaled to a real photo size, with sensor-like noise."""
    from PIL import Image

    from pdfnet_pipeline.data.sample import make_sample

    image, mask, _ = make_sample(seed, "DIS-TR", i)
    image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng([seed, i]).normal(0, 6, image.shape).astype(np.int16)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return image, mask


def _build(tmp: Path, cfg: Config) -> tuple[Path, Path, list[str]]:
    """Original-size files for the baseline and the equivalent 1024² store for ours."""
    import cv2
    from PIL import Image

    from pdfnet_pipeline import store
    from pdfnet_pipeline.depth.inputs import resize_u8

    files = tmp / "files"
    files.mkdir()
    stored = []
    for i in range(cfg.distinct):
        w, h = cfg.sizes[i % len(cfg.sizes)]
        image, mask = _photo(i, (w, h), cfg.seed)
        cv2.imwrite(str(files / f"p{i}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(files / f"p{i}.png"), mask)
        near = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 8)
        depths = {}
        for k, name in enumerate(store.DEPTH_MAPS):  # a smooth map per model, as DAM gives
            d = np.clip(0.2 + 0.6 * near + 0.05 * k + 0.1 * np.linspace(0, 1, w)[None, :], 0, 1)
            cv2.imwrite(str(files / f"p{i}_{name}.jpg"), (d * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
            depths[name] = np.asarray(Image.fromarray(d.astype(np.float32)).resize((cfg.size, cfg.size)))
        stored.append((resize_u8(image, cfg.size).numpy(), resize_u8(mask, cfg.size).numpy(), depths))
    names = [f"p{i % cfg.distinct}" for i in range(cfg.samples)]
    spec = store.StoreSpec(
        split="bench",
        ids=[f"s{i}" for i in range(cfg.samples)],
        orig_sizes=[tuple(cfg.sizes[i % cfg.distinct % len(cfg.sizes)])[::-1] for i in range(cfg.samples)],
        size=cfg.size,
        manifest_sha256="bench",
    )
    st = store.create(tmp / "bench.zarr", spec)
    for i in range(cfg.samples):
        image, mask, depths = stored[i % cfg.distinct]
        st.write_sample(i, image, mask, depths)
    return tmp / "bench.zarr", files, names


def _epochs(dataset, cfg: Config, workers: int) -> tuple[float, float]:
    """(whole first epoch with worker start-up, steady-state next epoch) in samples/s."""
    sampler = EpochSampler(len(dataset), shuffle=True, seed=cfg.seed)
    rates = []
    t0 = time.perf_counter()
    if isinstance(dataset, StoreDataset):
        loader = make_loader(dataset, sampler, DataConfig(workers=workers), cfg.batch_size)
    else:  # what the official code builds: a plain DataLoader, torch's default (fork) workers
        loader = DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0
        )
    for epoch in range(2):
        sampler.set_epoch(epoch)
        n = sum(batch["image"].shape[0] for batch in loader)
        rates.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
    del loader  # stops the persistent workers
    return rates[0], rates[1]


def _measure(path: str, store_path: Path, files: Path, names: list[str], cfg: Config, workers: int):
    """`_epochs` of one path in a fresh process."""
    job = {"path": path, "store": str(store_path), "files": str(files), "names": names, "workers": workers}
    job["config"] = {"size": cfg.size, "batch_size": cfg.batch_size, "seed": cfg.seed}
    proc = subprocess.run(
        [sys.executable, "-m", "pdfnet_pipeline.bench.data", json.dumps(job)], capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"bench data: the {path} path failed: {proc.stderr[-2000:]}")
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))


def _main(job: dict) -> None:
    import cv2

    cv2.setNumThreads(1)  # see run()
    cfg = Config(**job["config"])
    if job["path"] == "ours":
        dataset = StoreDataset([Path(job["store"])], train=True)
    else:
        dataset = OfficialStyleDataset(Path(job["files"]), job["names"], cfg.size, cfg.seed)
    print(json.dumps(_epochs(dataset, cfg, job["workers"])))


def run(cfg: Config) -> dict:
    import cv2

    # Forked baseline workers hang in OpenCV if this process has started OpenCV's thread pool
    # (the reason our loader uses a forkserver); the inputs are built single-threaded instead.
    cv2.setNumThreads(1)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        t0 = time.perf_counter()
        store_path, files, names = _build(Path(tmp), cfg)
        build_s = time.perf_counter() - t0
        paths = {
            "ours": StoreDataset([store_path], train=True),
            "official": OfficialStyleDataset(files, names, cfg.size),
        }
        mp = np.mean([w * h for w, h in cfg.sizes]) / 1e6
        print(
            f"bench data: {cfg.samples} samples/epoch ({cfg.distinct} distinct photos, mean {mp:.1f} MP) at "
            f"{cfg.size}², batch {cfg.batch_size}, augmentations on, {os.cpu_count()} cores "
            f"(inputs built in {build_s:.0f} s)"
        )
        for ds in paths.values():  # warm-up outside the timings: the page cache holds every input
            [ds[(0, i)] for i in range(min(len(ds), cfg.distinct))]
        order = np.random.default_rng(cfg.seed)
        for w in cfg.workers:
            runs = {k: [] for k in paths}
            for _ in range(cfg.repeats):
                for name in order.permutation(list(paths)):  # unbiased order each repeat
                    runs[name].append(_measure(name, store_path, files, names, cfg, w))
            results[w] = {k: _summary(v) for k, v in runs.items()}
        _print(results)
    return results


def _summary(runs: list[tuple[float, float]]) -> dict:
    whole, steady = [r[0] for r in runs], [r[1] for r in runs]
    return {
        "whole_min": min(whole),
        "whole_median": statistics.median(whole),
        "steady_min": min(steady),
        "steady_median": statistics.median(steady),
    }


def _print(results: dict) -> None:
    print(f"{'workers':>7} {'path':<9} {'whole epoch/s (min, median)':>28} {'steady/s (min, median)':>24}")
    for w, per in results.items():
        for name, s in per.items():
            print(
                f"{w:>7} {name:<9} {s['whole_min']:>14.2f} {s['whole_median']:>13.2f} "
                f"{s['steady_min']:>11.2f} {s['steady_median']:>12.2f}"
            )
        o, b = per["ours"], per["official"]
        print(
            f"{w:>7} {'ratio':<9} {o['whole_median'] / b['whole_median']:>28.2f}x "
            f"{o['steady_median'] / b['steady_median']:>23.2f}x   (medians, ours / official)"
        )


if __name__ == "__main__":  # one measurement in a fresh process: JSON (whole, steady) on stdout
    _main(json.loads(sys.argv[1]))
