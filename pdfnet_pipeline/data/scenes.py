"""Small generated scenes a tiny PDFNet learns in minutes on a CPU: the demo's data.

The photo-sized sample (sample.py, ~1 MP, 2-6 px structures) is what the benchmarks need, but at
the demo's 256² input its thin structures shrink below a pixel: even a perfect 256² prediction
scores F_max 0.86 there. These scenes are drawn at 352-480 px, so a structure 3-9 px wide keeps
2-5 px at 256², and the foreground differs from the background the way DIS objects usually do:
a saturated, sharp, lit material in front of a muted, defocused far plane.

Two families, one scene style: `demo` (lattices, branches, cables, fences, perforated plates,
spoked wheels) is what the demo trains on; `holdout` draws other objects (ladders, chairs, spirals,
glyph-like strokes, leafy twigs, nets) in other proportions, so a recipe tuned on `demo` can be
judged on scenes it never saw. `shapes` (one solid disc, polygon or bar) is the tests' check that
training learns at all. Masks are exact (what was drawn, no antialiasing) and every
scene is deterministic from (seed, split, index).
"""

from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Draw = Callable[[ImageDraw.ImageDraw, np.random.Generator, int, int], None]


def _rng(seed: int, family: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(family.encode()), zlib.crc32(split.encode()), index])


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """Non-square (W, H), long side 352-480, multiples of 8."""
    long_side = int(rng.integers(44, 61)) * 8
    short_side = int(long_side * rng.uniform(0.65, 0.9)) // 8 * 8
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a small random grid upsampled bicubically."""
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A muted, darker far plane: two greyish colours (luma <= 0.45) mixed by smooth noise, defocused."""
    hue = rng.random()
    a = _hsv(hue, rng.uniform(0.0, 0.2), rng.uniform(0.2, 0.45))
    b = _hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.0, 0.2), rng.uniform(0.2, 0.45))
    mix = 0.75 * _noise(rng, w, h, 4) + 0.25 * _noise(rng, w, h, 12)
    rgb = a * mix[..., None] + b * (1 - mix[..., None])
    rgb = np.clip(rgb * 255, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(3.0)), dtype=np.float32) / 255


def _foreground(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A saturated, lit material with its own grain (sharp: the near plane), brighter than any far
    plane whatever its hue: dark hues (blue, violet) are tinted towards white up to luma 0.55, so
    hue is never the only cue (a model that saw few blue objects still finds them)."""
    colour = _hsv(rng.random(), rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.0))
    lift = max(0.0, (0.55 - _luma(colour)) / (1.0 - _luma(colour)))
    colour = colour + (1 - colour) * lift
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.85 + 0.15 * (1 - (xx / w + yy / h) / 2)
    grain = 0.9 + 0.2 * _noise(rng, w, h, max(w, h) // 6)
    return np.clip(colour[None, None] * (grain * light)[..., None], 0, 1)


def _backdrop(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A pale studio backdrop (paper, a light wall): two light, faintly tinted colours (luma >=
    0.65) mixed by smooth noise, defocused: the demo's far plane turned round."""
    hue = rng.random()
    a = _hsv(hue, rng.uniform(0.03, 0.2), rng.uniform(0.75, 0.95))
    b = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.03, 0.2), rng.uniform(0.7, 0.95))
    mix = 0.75 * _noise(rng, w, h, 4) + 0.25 * _noise(rng, w, h, 12)
    rgb = np.clip((a * mix[..., None] + b * (1 - mix[..., None])) * 255, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(3.0)), dtype=np.float32) / 255


def _dark(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A dark, matte material (iron, stained wood, charcoal) with its own grain: darker than any
    backdrop, little colour: what a model trained on the demo's bright objects has never seen."""
    colour = _hsv(rng.random(), rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.35))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.85 + 0.15 * (1 - (xx / w + yy / h) / 2)
    grain = 0.85 + 0.3 * _noise(rng, w, h, max(w, h) // 6)
    return np.clip(colour[None, None] * (grain * light)[..., None], 0, 1)


def _width(rng: np.random.Generator, lo: int = 4, hi: int = 9) -> int:
    return int(rng.integers(lo, hi + 1))


# --- the demo family -------------------------------------------------------------------------


def _lattice(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    x0, y0 = int(w * rng.uniform(0.08, 0.25)), int(h * rng.uniform(0.08, 0.25))
    x1, y1 = int(w * rng.uniform(0.75, 0.92)), int(h * rng.uniform(0.75, 0.92))
    step, width = int(rng.integers(22, 48)), _width(rng, 4, 6)
    d.rectangle([x0, y0, x1, y1], outline=255, width=width * 2)
    for x in range(x0, x1, step):
        d.line([x, y0, x, y1], fill=255, width=width)
    for y in range(y0, y1, step):
        d.line([x0, y, x1, y], fill=255, width=width)


def _branches(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    def branch(x: float, y: float, angle: float, length: float, width: float, depth: int) -> None:
        if depth == 0 or length < 8:
            return
        x2, y2 = x + length * math.cos(angle), y - length * math.sin(angle)
        d.line([x, y, x2, y2], fill=255, width=max(3, int(width)))
        for turn in (-1, 1):
            spread = rng.uniform(0.3, 0.7) * turn
            branch(x2, y2, angle + spread, length * rng.uniform(0.6, 0.78), width * 0.72, depth - 1)

    branch(w * rng.uniform(0.35, 0.65), h * 0.98, math.pi / 2 + rng.uniform(-0.2, 0.2), h * 0.3, 14, 6)


def _bezier(p: np.ndarray, n: int = 120) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
    return [tuple(q) for q in pts]


def _cables(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    for _ in range(int(rng.integers(3, 7))):
        p = rng.uniform([0, 0], [w, h], size=(4, 2))
        p[0, 0], p[3, 0] = rng.uniform(0, 0.1) * w, rng.uniform(0.9, 1.0) * w
        d.line(_bezier(p), fill=255, width=_width(rng, 4, 7), joint="curve")


def _fence(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    step, width = int(rng.integers(26, 50)), _width(rng, 4, 5)
    y0, y1 = int(h * rng.uniform(0.15, 0.35)), int(h * rng.uniform(0.65, 0.85))
    for x in range(-h, w + h, step):  # chain-link diamonds: two families of diagonals
        d.line([x, y0, x + (y1 - y0), y1], fill=255, width=width)
        d.line([x, y1, x + (y1 - y0), y0], fill=255, width=width)
    for y in (y0, y1):
        d.line([0, y, w, y], fill=255, width=width * 2)
    for x in range(int(w * rng.uniform(0.05, 0.2)), w, int(w * 0.3)):
        d.rectangle([x, y0 - 12, x + 3 * width, h], fill=255)


def _perforated(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    cx, cy, r = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6), min(w, h) * rng.uniform(0.25, 0.36)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    d.ellipse([cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3], fill=0)
    hole = r * rng.uniform(0.06, 0.1)
    for _ in range(int(rng.integers(14, 30))):
        a, rr = rng.uniform(0, 2 * math.pi), rng.uniform(0.42, 0.85) * r
        x, y = cx + rr * math.cos(a), cy + rr * math.sin(a)
        d.ellipse([x - hole, y - hole, x + hole, y + hole], fill=0)
    width = _width(rng, 4, 5)
    for k in range(12):  # thin spokes sticking out
        a = 2 * math.pi * k / 12
        d.line([cx + r * math.cos(a), cy + r * math.sin(a), cx + 1.35 * r * math.cos(a), cy + 1.35 * r * math.sin(a)],
               fill=255, width=width)  # fmt: skip


def _wheel(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    cx, cy, r = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6), min(w, h) * rng.uniform(0.3, 0.42)
    width = _width(rng, 4, 6)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width * 2)
    d.ellipse([cx - r * 0.12, cy - r * 0.12, cx + r * 0.12, cy + r * 0.12], fill=255)
    spokes = int(rng.integers(8, 20))
    for k in range(spokes):
        a = 2 * math.pi * k / spokes + rng.uniform(0, 0.1)
        d.line([cx, cy, cx + r * math.cos(a), cy + r * math.sin(a)], fill=255, width=max(3, width - 1))


DEMO: dict[str, Draw] = {
    "lattice": _lattice,
    "branches": _branches,
    "cables": _cables,
    "fence": _fence,
    "perforated": _perforated,
    "wheel": _wheel,
}


# --- the holdout family: other objects, same kind of scene -----------------------------------


def _ladder(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    angle = rng.uniform(-0.5, 0.5)
    cx, cy, length, gap = w / 2, h / 2, min(w, h) * 0.85, min(w, h) * rng.uniform(0.15, 0.3)
    ux, uy = math.sin(angle), -math.cos(angle)  # along the rails
    vx, vy = math.cos(angle), math.sin(angle)  # across
    width = _width(rng, 4, 8)
    for side in (-1, 1):
        ox, oy = cx + side * gap / 2 * vx, cy + side * gap / 2 * vy
        d.line([ox - ux * length / 2, oy - uy * length / 2, ox + ux * length / 2, oy + uy * length / 2],
               fill=255, width=width)  # fmt: skip
    rungs = int(rng.integers(5, 11))
    for k in range(rungs):
        t = (k + 0.5) / rungs - 0.5
        px, py = cx + ux * t * length, cy + uy * t * length
        d.line([px - vx * gap / 2, py - vy * gap / 2, px + vx * gap / 2, py + vy * gap / 2], fill=255,
               width=max(3, width - 2))  # fmt: skip


def _chair(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    x0, x1 = w * rng.uniform(0.2, 0.35), w * rng.uniform(0.65, 0.8)
    top, seat, bottom = h * rng.uniform(0.08, 0.2), h * rng.uniform(0.45, 0.55), h * rng.uniform(0.85, 0.95)
    width = _width(rng, 4, 8)
    d.line([x0, top, x0, bottom], fill=255, width=width)  # back leg and post
    d.line([x1, seat, x1, bottom], fill=255, width=width)  # front leg
    d.rectangle([x0, seat - width, x1, seat + width], fill=255)  # seat
    slats = int(rng.integers(2, 6))
    for k in range(slats):  # back-rest slats
        y = top + (seat - top) * (k + 0.5) / (slats + 0.5)
        d.line([x0, y, x0 + (x1 - x0) * 0.25, y - (seat - top) * 0.1], fill=255, width=max(3, width - 2))
    d.line([x0, (seat + bottom) / 2 + 20, x1, (seat + bottom) / 2 + 20], fill=255, width=max(3, width - 3))


def _spiral(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    turns, r_max = rng.uniform(2.5, 4.5), min(w, h) * rng.uniform(0.3, 0.45)
    t = np.linspace(0, 1, 400)
    a = t * turns * 2 * math.pi + rng.uniform(0, 2 * math.pi)
    pts = [(cx + r_max * s * math.cos(b), cy + r_max * s * math.sin(b)) for s, b in zip(t, a)]
    d.line(pts, fill=255, width=_width(rng, 4, 7), joint="curve")


def _strokes(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """Glyph-like calligraphy: a row of short curved strokes with loops."""
    n = int(rng.integers(3, 7))
    width = _width(rng, 4, 9)
    for k in range(n):
        x = w * (0.1 + 0.8 * (k + rng.uniform(0.1, 0.9)) / n)
        y = h * rng.uniform(0.35, 0.65)
        p = np.array([[x, y]]) + rng.normal(0, min(w, h) * 0.12, size=(4, 2))
        d.line(_bezier(p, 60), fill=255, width=width, joint="curve")


def _twig(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """A stem with oval leaves on short petioles."""
    p = np.array([[w * 0.1, h * rng.uniform(0.7, 0.9)], [w * 0.4, h * rng.uniform(0.2, 0.8)],
                  [w * 0.6, h * rng.uniform(0.2, 0.8)], [w * 0.9, h * rng.uniform(0.1, 0.3)]])  # fmt: skip
    stem = _bezier(p, 80)
    d.line(stem, fill=255, width=_width(rng, 4, 7), joint="curve")
    for k in range(8, 78, int(rng.integers(7, 12))):
        (x, y), (x2, y2) = stem[k], stem[k + 1]
        normal = math.atan2(y2 - y, x2 - x) + (math.pi / 2 if k % 2 else -math.pi / 2)
        size = min(w, h) * rng.uniform(0.05, 0.09)
        lx, ly = x + 1.6 * size * math.cos(normal), y + 1.6 * size * math.sin(normal)
        d.line([x, y, lx, ly], fill=255, width=3)
        d.ellipse([lx - size, ly - size * 0.55, lx + size, ly + size * 0.55], fill=255)


def _net(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """A sagging net: two families of curves between two poles."""
    x0, x1 = w * rng.uniform(0.05, 0.15), w * rng.uniform(0.85, 0.95)
    width = _width(rng, 4, 5)
    for x in (x0, x1):
        d.line([x, h * 0.1, x, h * 0.95], fill=255, width=width * 2)
    rows = int(rng.integers(4, 8))
    sag = h * rng.uniform(0.05, 0.15)
    for k in range(rows):
        y = h * (0.15 + 0.6 * k / rows)
        d.line(_bezier(np.array([[x0, y], [x0 + (x1 - x0) / 3, y + sag], [x1 - (x1 - x0) / 3, y + sag], [x1, y]])),
               fill=255, width=width)  # fmt: skip
    for x in np.linspace(x0, x1, int(rng.integers(6, 12)))[1:-1]:
        d.line([x, h * 0.15, x, h * 0.15 + 0.6 * h * (rows - 1) / rows + sag], fill=255, width=width)


HOLDOUT: dict[str, Draw] = {
    "ladder": _ladder,
    "chair": _chair,
    "spiral": _spiral,
    "strokes": _strokes,
    "twig": _twig,
    "net": _net,
}


# --- the shapes family: one solid shape, what any working trainer learns in a few dozen steps ----


def _disc(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    cx, cy, r = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65), min(w, h) * rng.uniform(0.15, 0.3)
    d.ellipse([cx - r, cy - r * rng.uniform(0.6, 1.0), cx + r, cy + r], fill=255)


def _polygon(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    cx, cy, r = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65), min(w, h) * rng.uniform(0.18, 0.32)
    n = int(rng.integers(3, 8))
    a = np.sort(rng.uniform(0, 2 * math.pi, n))
    d.polygon([(cx + r * math.cos(t), cy + r * math.sin(t)) for t in a], fill=255)


def _bar(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    x0, y0 = w * rng.uniform(0.1, 0.4), h * rng.uniform(0.1, 0.4)
    d.rectangle([x0, y0, x0 + w * rng.uniform(0.2, 0.5), y0 + h * rng.uniform(0.2, 0.5)], fill=255)


SHAPES: dict[str, Draw] = {"disc": _disc, "polygon": _polygon, "bar": _bar}
# studio: the holdout objects as dark, matte things on a pale backdrop (a product shot), the
# domain shift a fine-tune has to bridge (README "Fine-tune on your own images").
FAMILIES: dict[str, dict[str, Draw]] = {"demo": DEMO, "holdout": HOLDOUT, "shapes": SHAPES, "studio": HOLDOUT}
LOOKS = {"studio": (_dark, _backdrop)}  # (object, far plane); the others: bright objects on a dark plane


def make_scene(family: str, seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One (RGB image uint8, binary mask 0/255, object kind) of `family` (demo, holdout, shapes, studio)."""
    draws = FAMILIES[family]
    rng = _rng(seed, family, split, index)
    w, h = _size(rng)
    kinds = sorted(draws)
    kind = kinds[(index + zlib.crc32(split.encode())) % len(kinds)]
    mask_im = Image.new("L", (w, h), 0)
    draws[kind](ImageDraw.Draw(mask_im), rng, w, h)  # no antialiasing: the mask is exact
    mask = np.asarray(mask_im) > 127
    near, far = LOOKS.get(family, (_foreground, _background))
    image = np.where(mask[..., None], near(rng, w, h), far(rng, w, h))
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return image, (mask * 255).astype(np.uint8), kind
