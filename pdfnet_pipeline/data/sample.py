"""A generated dataset in the DIS-5K layout: the demo's and the tests' default data.

DIS-5K's pixels may not be redistributed, so we draw our own: fine, thin, wiry foreground objects
(lattices, branches, cables, fences, perforated plates) over textured backgrounds, with exact
binary masks (the mask is what was drawn, no annotation error). The foreground is one depth layer
in front of the background: sharp, lit, slightly larger texture scale, while the background is
blurred like a far plane, so depth carries real information about the object.

Two layouts: "dis" (the default), OUT/<split>/im/*.jpg + gt/*.png for the six DIS-5K splits; and
"folder", a folder of pairs the way one's own photos often come (see `generate_folder`), which
`data manifest` pairs and splits itself.

Deterministic: the same seed gives the same bytes on every machine (numpy's PCG64 + Pillow).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pdfnet_pipeline.data.manifest import DIS_SPLITS

KINDS = ("lattice", "branches", "cables", "fence", "perforated")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """Non-square, 1024-ish, multiples of 8 (W, H)."""
    long_side = int(rng.integers(120, 161)) * 8
    short_side = int(long_side * rng.uniform(0.62, 0.85)) // 8 * 8
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a small random grid upsampled bicubically."""
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Textured far plane: coloured noise at two scales plus a grating, then defocus blur."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, freq = rng.uniform(0, math.pi), rng.uniform(0.02, 0.08)
    grating = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * freq)
    base = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
    layers = []
    for c in range(3):
        n = 0.6 * _smooth_noise(rng, w, h, 6) + 0.4 * _smooth_noise(rng, w, h, 40)
        layers.append(0.5 * base[c] + 0.35 * n + 0.15 * grating)
    rgb = np.clip(np.stack(layers, -1) * 255, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(2.5)))


def _draw_lattice(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    x0, y0 = int(w * rng.uniform(0.1, 0.25)), int(h * rng.uniform(0.1, 0.25))
    x1, y1 = int(w * rng.uniform(0.75, 0.9)), int(h * rng.uniform(0.75, 0.9))
    step, width = int(rng.integers(18, 40)), int(rng.integers(2, 5))
    d.rectangle([x0, y0, x1, y1], outline=255, width=width * 3)
    for x in range(x0, x1, step):
        d.line([x, y0, x, y1], fill=255, width=width)
    for y in range(y0, y1, step):
        d.line([x0, y, x1, y], fill=255, width=width)


def _draw_branches(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    def branch(x: float, y: float, angle: float, length: float, width: float, depth: int) -> None:
        if depth == 0 or length < 6:
            return
        x2, y2 = x + length * math.cos(angle), y - length * math.sin(angle)
        d.line([x, y, x2, y2], fill=255, width=max(1, int(width)))
        for turn in (-1, 1):
            spread = rng.uniform(0.25, 0.6) * turn
            branch(x2, y2, angle + spread, length * rng.uniform(0.62, 0.8), width * 0.7, depth - 1)

    branch(w * rng.uniform(0.35, 0.65), h * 0.97, math.pi / 2 + rng.uniform(-0.2, 0.2), h * 0.28, 12, 8)


def _draw_cables(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    t = np.linspace(0, 1, 200)
    for _ in range(int(rng.integers(4, 8))):
        p = rng.uniform([0, 0], [w, h], size=(4, 2))
        p[0, 0], p[3, 0] = rng.uniform(0, 0.1) * w, rng.uniform(0.9, 1.0) * w
        curve = (
            ((1 - t) ** 3)[:, None] * p[0]
            + (3 * (1 - t) ** 2 * t)[:, None] * p[1]
            + (3 * (1 - t) * t**2)[:, None] * p[2]
            + (t**3)[:, None] * p[3]
        )
        d.line([tuple(q) for q in curve], fill=255, width=int(rng.integers(2, 6)), joint="curve")


def _draw_fence(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    step, width = int(rng.integers(24, 48)), int(rng.integers(2, 4))
    y0, y1 = int(h * rng.uniform(0.2, 0.35)), int(h * rng.uniform(0.7, 0.85))
    for x in range(-h, w + h, step):  # chain-link diamonds: two families of diagonals
        d.line([x, y0, x + (y1 - y0), y1], fill=255, width=width)
        d.line([x, y1, x + (y1 - y0), y0], fill=255, width=width)
    for y in (y0, y1):
        d.line([0, y, w, y], fill=255, width=width * 3)
    for x in range(int(w * 0.1), w, int(w * 0.3)):
        d.rectangle([x, y0 - 20, x + 10, h], fill=255)


def _draw_perforated(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    cx, cy, r = w / 2, h / 2, min(w, h) * rng.uniform(0.3, 0.42)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    d.ellipse([cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3], fill=0)
    hole = r * rng.uniform(0.05, 0.09)
    for _ in range(int(rng.integers(20, 40))):
        a, rr = rng.uniform(0, 2 * math.pi), rng.uniform(0.4, 0.88) * r
        x, y = cx + rr * math.cos(a), cy + rr * math.sin(a)
        d.ellipse([x - hole, y - hole, x + hole, y + hole], fill=0)
    for k in range(12):  # thin spokes sticking out
        a = 2 * math.pi * k / 12
        d.line(
            [cx + r * math.cos(a), cy + r * math.sin(a), cx + 1.3 * r * math.cos(a), cy + 1.3 * r * math.sin(a)],
            fill=255,
            width=2,
        )


DRAW = {
    "lattice": _draw_lattice,
    "branches": _draw_branches,
    "cables": _draw_cables,
    "fence": _draw_fence,
    "perforated": _draw_perforated,
}


def make_sample(seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One (RGB image, binary mask 0/255, kind) triple."""
    rng = _rng(seed, split, index)
    w, h = _size(rng)
    kind = KINDS[(index + zlib.crc32(split.encode())) % len(KINDS)]
    mask_im = Image.new("L", (w, h), 0)
    DRAW[kind](ImageDraw.Draw(mask_im), rng, w, h)  # no antialiasing: the mask is exact
    mask = np.asarray(mask_im) > 127
    # Near layer: a sharp, lit material with its own fine texture and a top-left light falloff.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.75 + 0.25 * (1 - (xx / w + yy / h) / 2)
    colour = rng.uniform(0.15, 0.95, size=3).astype(np.float32)
    grain = _smooth_noise(rng, w, h, 120)
    fg = np.clip((colour[None, None] * (0.8 + 0.4 * grain[..., None])) * light[..., None], 0, 1)
    bg = _background(rng, w, h).astype(np.float32) / 255
    image = np.where(mask[..., None], fg, bg)
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return image, (mask * 255).astype(np.uint8), kind


STYLES = ("photo", "demo", "holdout", "shapes", "studio")


def make_styled(style: str, seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One (image, mask, kind) of a style: "photo" (this module's ~1 MP scenes, what the benchmarks
    need), "demo", "holdout", "shapes" or "studio" (scenes.py: small scenes a tiny model learns in
    minutes)."""
    if style == "photo":
        return make_sample(seed, split, index)
    from pdfnet_pipeline.data.scenes import make_scene

    return make_scene(style, seed, split, index)


LAYOUTS = ("dis", "folder")
# The folder layout's image formats, in turn: photos come as JPEG, PNG and WebP alike.
FOLDER_IMAGE_FORMATS = ((".jpg", {"quality": 95}), (".png", {"optimize": True}), (".webp", {"quality": 90}))
CUTOUT_INDEX = 0  # the one pair whose mask is an RGBA cut-out


def _folder_paths(index: int, stem: str, image_ext: str, mask_ext: str) -> tuple[str, str]:
    """(image, mask) paths under OUT for pair `index`: most at the top level, every 4th from 1
    nested on both sides (field/), every 4th from 3 nested on the image side only (phone/): the
    mask of a stem may be anywhere under masks/."""
    image_dir, mask_dir = {1: ("images/field", "masks/field"), 3: ("images/phone", "masks")}.get(
        index % 4, ("images", "masks")
    )
    return f"{image_dir}/{stem}{image_ext}", f"{mask_dir}/{stem}{mask_ext}"


def generate_folder(out: Path | str, count: int = 23, seed: int = 0, style: str = "photo") -> list[Path]:
    """Write `count` pairs as OUT/images + OUT/masks (a folder of pairs); returns the image paths.

    Like one's own data: stems without DIS names ({kind}-{index}), images as .jpg / .png / .webp
    in turn, some pairs in sub-folders (see `_folder_paths`), masks as lossless .png (every 6th
    .bmp), and pair CUTOUT_INDEX's mask an RGBA cut-out (the image's colours, the mask as alpha)
    as an editor exports one. No splits: `data manifest` draws train / val / test.
    """
    out = Path(out)
    written = []
    for i in range(count):
        image, mask, kind = make_styled(style, seed, "folder", i)
        image_ext, options = FOLDER_IMAGE_FORMATS[i % len(FOLDER_IMAGE_FORMATS)]
        image_rel, mask_rel = _folder_paths(i, f"{kind}-{i:03d}", image_ext, ".bmp" if i % 6 == 5 else ".png")
        for rel in (image_rel, mask_rel):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / image_rel, **options)
        gt = Image.fromarray(np.dstack([image, mask])) if i == CUTOUT_INDEX else Image.fromarray(mask)
        gt.save(out / mask_rel)
        written.append(out / image_rel)
    return written


def generate_sample(
    out: Path | str, per_split: int = 3, seed: int = 0, train: int = 8, style: str = "photo", layout: str = "dis"
) -> list[Path]:
    """Write OUT/<split>/im/*.jpg + gt/*.png for the six DIS-5K splits; returns the image paths.

    `train` images go to DIS-TR, `per_split` to each of DIS-VD and DIS-TE1..4. Existing files
    are overwritten with identical bytes (the generator is deterministic). layout "folder": the
    same number of pairs (train + 5 * per_split) as one folder of pairs instead (`generate_folder`).
    """
    if style not in STYLES:
        raise ValueError(f"unknown sample style {style!r}; choose one of {', '.join(STYLES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown sample layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "folder":
        return generate_folder(out, train + 5 * per_split, seed, style)
    out = Path(out)
    written = []
    for split in DIS_SPLITS:
        count = train if split == "DIS-TR" else per_split
        (out / split / "im").mkdir(parents=True, exist_ok=True)
        (out / split / "gt").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask, kind = make_styled(style, seed, split, i)
            stem = f"gen-{split}-{i:03d}-{kind}"
            Image.fromarray(image).save(out / split / "im" / f"{stem}.jpg", quality=95)
            Image.fromarray(mask).save(out / split / "gt" / f"{stem}.png", optimize=True)
            written.append(out / split / "im" / f"{stem}.jpg")
    return written
