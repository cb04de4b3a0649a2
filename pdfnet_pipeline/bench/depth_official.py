"""`bench depth`'s official rows: the depth maps made the way a user makes them today, against
the depth stage making all four in one pass.

Official preparation (Depth-Anything-V2's `run.py` as PDFNet's authors used it, one run per map;
written here from that code's documented behaviour): for each map a pass over the dataset, and
per image `cv2.imread` (full-resolution decode), `infer_image(raw, input_size)` = the official
`Resize(keep_aspect_ratio=True, ensure_multiple_of=14, resize_method="lower_bound")` with cv2
INTER_CUBIC, /255, ImageNet normalisation, one forward at batch 1, bilinear (align_corners=True)
back to the photo's own size; then min-max to 0..255, uint8, and an 8-bit JPEG written at the
original size. Four passes: small, base and large at 518, and large at the supervision input
(1024 -> 1036 by the same rule).

Ours: `stage run depth` with the four maps: each photo decoded once (worker processes, JPEG draft
decoding), batched inference, float16 maps at 1024² written with the image and mask into a Zarr
store by writer threads; "keep" (the authors' aspect-keeping input) and "square" (the paper's text).

Same photos (DIS camera sizes, 2-8 MP), same random-weight models (speed only). Every
measurement is a fresh process: "whole run" is its wall time from spawn to exit (interpreter,
imports, model loading, worker start, all passes). "Steady" removes those fixed costs by
difference: each configuration also runs on the first half of the photos, and steady img/s =
(n - n/2) / (T(n) - T(n/2)). Configurations are interleaved in a seeded shuffled order per repeat;
min and median over repeats.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pdfnet_pipeline import store

MAPS = store.DEPTH_MAPS  # the store's map names (store.py owns them)
CONFIGS = ("official loop", "stage keep", "stage square")


def official_shape(width: int, height: int, target: int, multiple: int = 14) -> tuple[int, int]:
    """(h, w) of the official Resize with keep_aspect_ratio, lower_bound and ensure_multiple_of:
    scale so both sides reach `target`, round each to the nearest multiple, never below target."""
    scale = max(target / height, target / width)

    def constrain(x: float) -> int:
        y = int(round(x / multiple) * multiple)
        return y if y >= target else int(-(-x // multiple) * multiple)

    return constrain(scale * height), constrain(scale * width)


def official_loop(
    photos: list[Path], out: Path, archs: dict[str, str], input_size: int, sup_size: int, device: str
) -> None:
    """The four official passes, one JPEG per photo and map, at the photo's size (fp32, as run.py)."""
    import cv2
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pdfnet_pipeline.depth import dam

    mean, std = np.array(dam.IMAGENET_MEAN, np.float32), np.array(dam.IMAGENET_STD, np.float32)
    for name in MAPS:
        arch = archs["large" if name == store.SUPERVISION else name]
        target = sup_size if name == store.SUPERVISION else input_size
        model, _ = dam.load_dam(arch, "random")  # one run per map: each loads its model
        model.to(device)
        (out / name).mkdir(parents=True, exist_ok=True)
        for path in photos:
            raw = cv2.imread(str(path))
            h, w = raw.shape[:2]
            img = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB) / 255.0
            nh, nw = official_shape(w, h, target)
            x = (cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC) - mean) / std
            x = torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None].to(device)
            with torch.no_grad():
                d = model(pixel_values=x).predicted_depth
                d = F.interpolate(d[:, None], (h, w), mode="bilinear", align_corners=True)[0, 0]
            d = (d - d.min()) / (d.max() - d.min()) * 255.0
            cv2.imwrite(str(out / name / f"{path.stem}.jpg"), d.cpu().numpy().astype(np.uint8))


def stage_run(manifest: Path, stores: Path, archs: dict[str, str], aspect: str, bench: dict) -> None:
    from pdfnet_pipeline.depth import stage

    spec = {k: stage.ModelSpec(archs[k], "random") for k in store.DEPTH_INPUTS}
    cfg = stage.Config(
        manifest=manifest,
        stores=stores,
        splits=["DIS-VD"],
        maps=list(MAPS),
        models=stage.Models(**spec),
        aspect=aspect,
        size=bench["size"],
        input_size=bench["input_size"],
        supervision_size=bench["supervision_size"],
        batch_size=max(bench["batch_sizes"]),
        workers=bench["workers"],
        write_threads=bench["write_threads"],
        device=bench["device"],
        precision=bench["precision"],
        progress=False,
    )
    stage.run(cfg)


def _measure(job: dict) -> float:
    """Wall seconds of one fresh process doing `job`."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pdfnet_pipeline.bench.depth_official", json.dumps(job)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"bench depth official: {job['config']} failed: {proc.stderr[-2000:]}")
    return seconds


def rows(tmp: Path, cfg, archs: dict[str, str]) -> dict:
    """Print the official-vs-stage table for bench depth's `cfg`; returns {config: {"whole", "steady"}}."""
    from dataclasses import asdict

    from pdfnet_pipeline.bench.depth_aspect import write_photos
    from pdfnet_pipeline.data.manifest import Manifest, read_manifest, write_manifest

    n = cfg.images
    if n < 2:
        raise ValueError("bench depth official: images >= 2 (the steady rate is a difference of two runs)")
    manifests = {n: write_photos(tmp / "official", cfg.aspect_sizes, n)}
    m = read_manifest(manifests[n])
    entries = m.split("DIS-VD")
    manifests[n // 2] = tmp / "official" / "half.jsonl"  # the first half of the photos: fixed costs
    write_manifest(Manifest(m.root, entries[: n // 2]), manifests[n // 2])
    jobs = [(c, k) for c in CONFIGS for k in (n, n // 2)]
    times: dict = {job: [] for job in jobs}
    rng = random.Random(cfg.seed)
    for r in range(cfg.repeats):
        order = jobs[:]
        rng.shuffle(order)
        for config, k in order:
            job = {"config": config, "manifest": str(manifests[k]), "archs": archs, "bench": asdict(cfg)}
            job["photos"] = [str(e.image_path(m.root)) for e in entries[:k]]
            job["out"] = str(tmp / f"run{r}_{config.replace(' ', '_')}_{k}")
            times[config, k].append(_measure(job))
    mp = sorted({w * h / 1e6 for w, h in cfg.aspect_sizes[:n]})
    print(
        f"official loop vs stage: {n} photos {mp[0]:.1f}-{mp[-1]:.1f} MP, 4 maps (small/base/large at "
        f"{cfg.input_size}, large at {cfg.supervision_size}), archs {archs}, RANDOM weights, stage batch "
        f"{max(cfg.batch_sizes)} with {cfg.workers} workers; a fresh process per run, {cfg.repeats} interleaved repeats"
    )
    print(
        f"{'config':<15}{'whole min s':>12}{'whole med s':>12}{'steady img/s':>14}{'x whole':>9}{'x steady':>10}"
        f"{'MB/photo':>10}"
    )
    out = {}
    for config in CONFIGS:
        whole = times[config, n]
        # n/a when noise swamps the difference (tiny inputs): a rate from a negative time is no rate
        steady = [(n - n // 2) / (a - b) if a > b else math.nan for a, b in zip(whole, times[config, n // 2])]
        written = sum(
            f.stat().st_size for f in (tmp / f"run0_{config.replace(' ', '_')}_{n}").rglob("*") if f.is_file()
        )
        out[config] = {"whole": whole, "steady": steady, "mb": written / n / 1e6}
    ref = out[CONFIGS[0]]
    for config, v in out.items():
        x_whole = statistics.median(ref["whole"]) / statistics.median(v["whole"])
        steady = statistics.median(v["steady"])
        x_steady = steady / statistics.median(ref["steady"])
        print(
            f"{config:<15}{min(v['whole']):>12.1f} {statistics.median(v['whole']):>11.1f} {_num(steady, '.3f'):>13} "
            f"{x_whole:>8.2f} {_num(x_steady, '.2f'):>9} {v['mb']:>9.2f}"
        )
    print(
        "x = median speed-up over the official loop (whole: wall time; steady: img/s without fixed costs); "
        "MB/photo written: 4 JPEGs at the photo's size vs the store's image, mask and 4 float16 maps at "
        f"{cfg.size}²"
    )
    return out


def _num(x: float, fmt: str) -> str:
    return "n/a" if math.isnan(x) else format(x, fmt)


def _main(job: dict) -> None:
    out, bench = Path(job["out"]), job["bench"]
    if job["config"] == "official loop":
        from pdfnet_pipeline import runtime

        device = str(runtime.pick_device(bench["device"]))
        photos = [Path(p) for p in job["photos"]]
        official_loop(photos, out, job["archs"], bench["input_size"], bench["supervision_size"], device)
    else:
        stage_run(Path(job["manifest"]), out, job["archs"], job["config"].split()[-1], bench)


if __name__ == "__main__":  # one measured run in a fresh process
    _main(json.loads(sys.argv[1]))
