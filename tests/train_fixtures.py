"""Small stores in the contract's layout (docs/CONTRACTS.md "Store") for the train-stage tests.

Written with store.py (no depth model), so these tests do not depend on the depth stage. Depth maps are
derived from the mask (the generated sample's foreground is one layer in front of a blurred
background), distinct per quality so a swapped map is visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from pdfnet_pipeline import store

DEPTHS = ("small", "base", "large", "large_1024")
TIMING = {"time", "seconds", "samples_per_s"}  # metrics.jsonl fields that differ between equal runs


def write_store(
    path: Path,
    images: np.ndarray,
    masks: np.ndarray,
    depths: dict[str, np.ndarray],
    ids: list[str],
    done: np.ndarray | None = None,
    split: str = "DIS-TR",
) -> Path:
    """A store through store.py (the real layout and attributes); `done` marks which samples exist."""
    n, s = images.shape[0], images.shape[1]
    spec = store.StoreSpec(
        split=split,
        ids=list(ids),
        orig_sizes=[(s, s)] * n,
        size=s,
        manifest_sha256="test",
        maps=tuple(depths),
        models={"small": "synthetic", "base": "synthetic", "large": "synthetic"},
    )
    st = store.create(Path(path), spec)
    done = np.ones(n, bool) if done is None else done
    for i in np.flatnonzero(done):
        st.write_sample(int(i), images[i], masks[i], {k: v[i] for k, v in depths.items()})
    return Path(path)


def random_store(
    path: Path, n: int = 4, size: int = 32, seed: int = 0, done=None, prefix="s", maps: tuple[str, ...] = DEPTHS
) -> Path:
    """Random pixels; depth quality k is offset by k/8 so each map is recognisable; `maps`: which
    depth maps the store holds."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    base = rng.random((n, size, size)) * 0.5
    depths = {name: (base + k / 8).astype(np.float16) for k, name in enumerate(DEPTHS) if name in maps}
    return write_store(path, images, masks, depths, [f"{prefix}{i}" for i in range(n)], done)


def toy_stores(tmp_path: Path) -> tuple[Path, Path]:
    """The loop-mechanics tests' train (5 samples) and validation (3) stores, 32 px."""
    return (
        random_store(tmp_path / "tr.zarr", n=5, size=32, seed=1),
        random_store(tmp_path / "vd.zarr", n=3, size=32, seed=2, prefix="v"),
    )


def sample_store(path: Path, split: str, count: int, size: int, seed: int = 0) -> Path:
    """The generated DIS-like sample (data/sample.py) resized to size, with mask-derived depth."""
    from pdfnet_pipeline.data.sample import make_sample

    images, masks, ids = [], [], []
    depths = {name: [] for name in DEPTHS}
    for i in range(count):
        image, mask, kind = make_sample(seed, split, i)
        images.append(np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)))
        m = Image.fromarray(mask).resize((size, size), Image.BILINEAR)
        masks.append(np.asarray(m))
        for k, name in enumerate(DEPTHS):  # nearer = larger inverse depth; blur differs per quality
            d = np.asarray(m.filter(ImageFilter.GaussianBlur(1 + k)), dtype=np.float32) / 255
            depths[name].append(0.2 + 0.6 * d + 0.1 * np.linspace(0, 1, size)[None, :])
        ids.append(f"gen-{split}-{i:03d}-{kind}")
    arrays = {name: np.stack(v).astype(np.float16) for name, v in depths.items()}
    return write_store(path, np.stack(images), np.stack(masks), arrays, ids, split=split)


class ToyOutput:
    def __init__(self, losses):
        self.losses = losses


class ToyNet(torch.nn.Module):
    """A fast stand-in with PDFNet's interface for loop-mechanics tests (resume, accumulation,
    NaN guard, DDP). Its loss is a per-sample mean, so batch 2 == 2 x batch 1 exactly in math;
    `dropout` > 0 makes it consume the torch RNG like PDFNet's CoA dropout and drop-path."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.drop = torch.nn.Dropout(dropout)
        self.norm = torch.nn.GroupNorm(1, 6)
        self.conv2 = torch.nn.Conv2d(6, 1, 3, padding=1)

    def predict(self, image, depth):
        return self.conv2(self.drop(torch.relu(self.norm(self.conv1(torch.cat([image, depth], 1))))))

    def forward(self, image, depth, mask=None, depth_target=None):
        logits = self.predict(image, depth)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, mask, reduction="none")
        reg = (torch.sigmoid(logits) - depth_target).square()
        return ToyOutput({"total": (bce + 0.1 * reg).mean()})
