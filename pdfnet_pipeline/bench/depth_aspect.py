"""`bench depth`'s keep-vs-square rows: the depth stage on photos of DIS-5K's sizes and aspect
ratios, with the square input (everything batches) and the aspect-keeping input (batches of equal
input shapes only), plus "keep" at batch 1 (what the bucketing saves).

The photos are the generated DIS-like samples scaled to real camera sizes (2-8 MP, 4:3, 3:2 and
16:9, landscape and portrait), so decoding costs what a DIS photo costs.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

# (W, H): camera sizes of the ratios DIS-5K's photos cluster on, landscape and portrait.
DIS_SIZES = [
    [2592, 1944],  # 4:3, 5.0 MP
    [1944, 2592],
    [3000, 2000],  # 3:2, 6.0 MP
    [2000, 3000],
    [3264, 1836],  # 16:9, 6.0 MP
    [1836, 3264],
    [1632, 1224],  # 4:3, 2.0 MP
    [3264, 2448],  # 4:3, 8.0 MP
]


def write_photos(root: Path, sizes: list[list[int]], n: int) -> Path:
    """`n` photo/mask pairs cycling through `sizes`, as root/ds/DIS-VD/{im,gt}; returns the manifest."""
    from PIL import Image

    from pdfnet_pipeline.data.manifest import scan, write_manifest
    from pdfnet_pipeline.data.sample import make_sample

    for sub in ("im", "gt"):
        (root / "ds" / "DIS-VD" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        image, mask, _ = make_sample(11, "bench", i)
        Image.fromarray(image).resize((w, h), Image.BICUBIC).save(root / "ds/DIS-VD/im" / f"p{i:03d}.jpg", quality=92)
        Image.fromarray(mask).resize((w, h), Image.NEAREST).save(root / "ds/DIS-VD/gt" / f"p{i:03d}.png")
    write_manifest(scan(root / "ds", ["DIS-VD"], workers=1, progress=False).manifest, root / "m.jsonl")
    return root / "m.jsonl"


def _plan(manifest: Path, cfg_stage) -> tuple[int, int, float]:
    """(distinct input shapes, batches, mean 14x14 patches per input) the stage will run."""
    from pdfnet_pipeline.data.manifest import read_manifest
    from pdfnet_pipeline.depth import inputs, stage

    entries = read_manifest(manifest).split("DIS-VD")
    prep = stage.prep_for(cfg_stage)
    shapes = [prep.shapes(e.width, e.height) for e in entries]
    batches = inputs.batches(list(range(len(entries))), shapes.__getitem__, cfg_stage.batch_size)
    patches = sum(h * w for (h, w), _ in shapes) / len(shapes) / 14**2
    return len(set(shapes)), len(batches), patches


def rows(base, tmp: Path, sizes: list[list[int]], n: int, batch: int, repeats: int) -> None:
    """Print the keep-vs-square table; `base` is the bench's stage.Config (one map, its model)."""
    from pdfnet_pipeline.depth import stage

    manifest = write_photos(tmp / "photos", sizes, n)
    mp = sorted({w * h / 1e6 for w, h in sizes[:n]})
    runs = {
        ("square", batch): replace(base, manifest=manifest, aspect="square", batch_size=batch),
        ("keep", batch): replace(base, manifest=manifest, aspect="keep", batch_size=batch),
        ("keep", 1): replace(base, manifest=manifest, aspect="keep", batch_size=1),
    }
    speed: dict = {k: [] for k in runs}
    for r in range(repeats):  # interleaved: a load change on a shared machine hits every row alike
        for k, cfg in runs.items():
            summary = stage.run(replace(cfg, stores=tmp / f"aspect_{k[0]}_{k[1]}_{r}"))[0]
            speed[k].append(summary["written"] / summary["seconds"])
    print(
        f"keep vs square: {n} photos {mp[0]:.1f}-{mp[-1]:.1f} MP (4:3, 3:2, 16:9, both orientations), "
        f"maps=[small], median of {repeats} interleaved run(s)"
    )
    print(f"{'aspect':<8}{'batch':>6}{'shapes':>8}{'batches':>9}{'patches/img':>13}{'img/s':>9}{'vs square':>11}")
    ref = statistics.median(speed[("square", batch)])
    for (aspect, b), cfg in runs.items():
        shapes, batches, patches = _plan(manifest, cfg)
        ips = statistics.median(speed[(aspect, b)])
        print(f"{aspect:<8}{b:>6}{shapes:>8}{batches:>9}{patches:>13.0f}{ips:>9.2f}{ips / ref:>11.2f}")
