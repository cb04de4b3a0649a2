"""Stage eval: predict every done sample of each split from its store, save native-size PNGs,
compute the DIS metrics per split and over DIS-TE (all), and write the report (results.md/csv/json,
curves.png, contact_sheet.png and index.html: the table, curves and a sortable per-image gallery).

Predictions use the store's 1024² image and its `depth/large` map (the inference input the paper
uses), optionally with TTA; the GT is the manifest's original mask at its native size, so the
numbers are comparable with published ones. A store built from another manifest is refused.

Samples come in batches from a DataLoader (worker processes, pinned memory on CUDA) and run in
the configured precision (bf16 on GPUs). At batch 1 the PNGs are bit-identical to predicting one
sample at a time; a larger batch may move a pixel by one level (other kernels, same math).
`compile = true` compiles `predict` for static shapes: the last partial batch is padded with
copies of its last sample, whose outputs are dropped (PDFNet's samples never mix in a batch).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pdfnet_pipeline import provenance, runtime
from pdfnet_pipeline.data.dataset import VAL_DEPTH, StoreDataset
from pdfnet_pipeline.data.images import load_mask
from pdfnet_pipeline.data.manifest import read_manifest
from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.eval.html import IMAGE_METRICS, GalleryItem, write_index
from pdfnet_pipeline.eval.report import SheetRow, contact_sheet, plot_curves, write_tables
from pdfnet_pipeline.eval.tta import predict_logits, to_native_uint8
from pdfnet_pipeline.model.checkpoint import CheckpointError
from pdfnet_pipeline.store import StoreError, StoreReadError

TEST_SPLITS = ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")
ALL_TE = "DIS-TE (all)"


@dataclass
class Config:
    RENAMED: ClassVar[dict[str, str]] = {"amp": "precision"}  # refused, naming the new setting

    stores: Path = Path("stores")
    manifest: Path = Path("data_manifests/DIS5K.jsonl")
    run_dir: Path = Path("runs/pdfnet")
    checkpoint: Path | None = None  # default: the run's best checkpoint
    out: Path | None = None  # default: run_dir/eval
    splits: list[str] = field(default_factory=list)  # empty: the manifest's splits but the training one
    tta: bool = False  # hflip x scales 0.75 / 1 / 1.25, logits averaged
    device: str = "auto"
    precision: runtime.PrecisionName = "auto"  # auto: bf16 (fp16 without bf16) on CUDA, fp32 on CPU
    batch_size: int = 0  # 0: 8 on CUDA, 1 on the CPU
    workers: int = 4  # loader processes reading the stores; 0: in the main process
    compile: bool = False  # torch.compile(predict, dynamic=False)
    metric_workers: int = 0  # 0: all cores
    sheet_rows: int = 3  # best and worst samples in the contact sheet
    # A sample whose store chunk does not decode: stop naming the store and sample, or skip it
    # (reported; left out of the metrics, so the split's count shows it).
    on_error: Literal["stop", "skip"] = "stop"


class EvalWriteError(UserError, OSError):
    """A prediction PNG could not be written (disk full, I/O error); no partial file is left."""


def write_png(array: np.ndarray, path: Path) -> None:
    """Save under a temporary name, then rename: a failed write leaves no half PNG under `path`
    (an earlier complete one stays)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise EvalWriteError(f"cannot write prediction {path}: {err}; free space or fix the disk and rerun") from err


def find_checkpoint(run_dir: Path) -> Path:
    """The run's best model, else the model of its latest training checkpoint."""
    from pdfnet_pipeline.train.checkpoint import CheckpointError as TrainCheckpointError
    from pdfnet_pipeline.train.checkpoint import resolve

    if (run_dir / "best.safetensors").is_file():
        return run_dir / "best.safetensors"
    try:
        return resolve(run_dir, "latest") / "model.safetensors"
    except TrainCheckpointError:
        raise CheckpointError(f"{run_dir}: no checkpoint (train first, or pass --set checkpoint=...)") from None


def _run_random_reasons(stores: list[Path], run_dir: Path) -> list[str]:
    """Random DAM maps in the stores, or a run (config.json) trained from a random init."""
    cfg_file = run_dir / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    model = cfg.get("model", {"backbone_weights": "unknown"})  # no run config: say only what we know
    return provenance.random_weight_reasons(stores, model, cfg.get("init_from", ""))


def batch_size(cfg: Config, device: torch.device) -> int:
    return cfg.batch_size or (8 if device.type == "cuda" else 1)


def predict_fn(model, compile: bool):
    """model.predict, or compiled for static shapes (one compile per input size)."""
    return torch.compile(model.predict, dynamic=False) if compile else model.predict


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """Batch padded to n with copies of its last sample (compiled shapes stay static)."""
    return torch.cat([x, x[-1:].repeat(n - len(x), *[1] * (x.dim() - 1))]) if len(x) < n else x


def _predict_split(model, ds, out_dir: Path, cfg: Config, device, prec: runtime.Precision, predict=None) -> list[dict]:
    """Predict one split's dataset in batches; returns per-sample dicts (id, row, pred path)."""
    from pdfnet_pipeline.data.batch import model_inputs
    from pdfnet_pipeline.data.dataset import DataConfig, ShardSampler, make_loader

    st = ds.stores[0]
    orig = st.orig_sizes
    out_dir.mkdir(parents=True, exist_ok=True)
    # Workers hand undecodable samples back flagged; on_error is decided here, in the main process.
    ds.flag_unreadable = True
    predict = predict or model.predict
    size = batch_size(cfg, device)
    loader = make_loader(
        ds, ShardSampler(len(ds)), DataConfig(workers=cfg.workers), size, pin_memory=device.type == "cuda"
    )
    records = []
    bar = tqdm(total=len(ds), desc=f"predict {st.split}", unit="img")
    for batch in loader:
        n = len(batch["id"])
        errors = batch.pop("error", None) or [""] * n  # chunks that did not decode (flag_unreadable)
        for message in filter(None, errors):  # one line naming the store, sample and array
            if cfg.on_error == "stop":
                raise StoreReadError(f"{message} (on_error=skip would leave it out of the metrics)")
            print(f"skipped (on_error=skip, not in the metrics): {message}", file=sys.stderr)
        image, depth = batch["image"], batch["depth"]
        if cfg.compile:
            image, depth = _pad(image, size), _pad(depth, size)
        inputs = model_inputs(image, depth, device)
        with torch.no_grad(), prec.autocast(device):
            logits = predict_logits(predict, inputs["image"], inputs["depth"], tta=cfg.tta)
        for k in range(n):
            if errors[k]:
                continue
            _, row = ds.locate(int(batch["index"][k]))
            h, w = (int(v) for v in orig[row])
            pred = to_native_uint8(logits[k : k + 1], (h, w))[0, 0].cpu().numpy()
            path = out_dir / f"{batch['id'][k]}.png"
            write_png(pred, path)
            records.append({"id": batch["id"][k], "row": row, "pred": path})
        bar.update(n)
    bar.close()
    return records


def default_splits(manifest) -> list[str]:
    """Every split of the manifest except the training one (DIS-TR)."""
    from pdfnet_pipeline.data.manifest import DIS_SPLITS

    return [s for s in manifest.splits() if s != DIS_SPLITS[0]]


def _open_stores(cfg: Config, manifest) -> dict:
    """split -> StoreDataset (validation view: the large depth map), checked against the manifest."""
    splits = cfg.splits or default_splits(manifest)
    if not splits:
        raise StoreError(f"{cfg.manifest} holds no split to evaluate (only {manifest.splits()})")
    out = {}
    for split in splits:
        ds = StoreDataset([cfg.stores / f"{split}.zarr"], train=False)
        if ds.stores[0].manifest_sha256 != manifest.split_hash(split):
            raise StoreError(
                f"{ds.stores[0].path} was built from another manifest than {cfg.manifest} ({split}): "
                f"rebuild it or use that manifest"
            )
        out[split] = ds
    return out


def run(cfg: Config) -> dict:
    from pdfnet_pipeline.eval import metrics as M
    from pdfnet_pipeline.model.checkpoint import load_model

    rt = runtime.init(cfg.device)
    prec = runtime.precision(rt.device, cfg.precision)
    out = cfg.out or cfg.run_dir / "eval"
    ckpt = cfg.checkpoint or find_checkpoint(cfg.run_dir)
    manifest = read_manifest(cfg.manifest)
    datasets = _open_stores(cfg, manifest)
    stores = {split: ds.stores[0] for split, ds in datasets.items()}
    reasons = _run_random_reasons([st.path for st in stores.values()], cfg.run_dir)
    label = provenance.random_label(reasons)
    if label:
        print(label)
    model = load_model(ckpt, map_location=rt.device).to(rt.device).eval()
    predict = predict_fn(model, cfg.compile)
    print(
        f"eval {ckpt} on {', '.join(datasets)}{' with TTA' if cfg.tta else ''} ({rt.device}, {prec.name}, "
        f"batch {batch_size(cfg, rt.device)}{', compiled' if cfg.compile else ''})"
    )

    mcfg = M.MetricsConfig(skeleton_cache=cfg.stores / ".gt_skeletons")  # GT skeletons reused across runs
    per_split, samples = {}, []
    for split, ds in datasets.items():
        records = _predict_split(model, ds, out / "preds" / split, cfg, rt.device, prec, predict)
        gts = {e.id: e.mask_path(manifest.root) for e in manifest.split(split)}
        pairs = [(r["pred"], gts[r["id"]], r["id"]) for r in records]
        result = M.evaluate_pairs(pairs, workers=cfg.metric_workers or None, config=mcfg)
        per_split[split] = result
        samples += [dict(r, split=split, mae=im.mae, metrics=im) for r, im in zip(records, result.images)]
    te = [im for s in TEST_SPLITS if s in per_split for im in per_split[s].images]
    if all(s in per_split for s in TEST_SPLITS):  # "DIS-TE (all)" means all four test splits
        per_split[ALL_TE] = M.Results.from_images(te)
    results = {s: {**r.summary(), "count": len(r.images)} for s, r in per_split.items()}
    curves = {s: {"precision": r.precision, "recall": r.recall, "fmeasure": r.f_curve} for s, r in per_split.items()}
    files = write_tables(results, out, label)
    files.append(plot_curves(curves, out / "curves.png", label))
    files.append(_sheet(samples, stores, manifest, out / "contact_sheet.png", cfg.sheet_rows, label))
    files.append(write_index(out, results, _gallery(samples, stores, manifest), label))
    print((out / "results.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files))
    return results


def _gallery(samples, stores, manifest) -> list[GalleryItem]:
    """Every evaluated sample for index.html. Its image and depth are read from the store when the
    thumbnail is made, so a DIS-5K evaluation never holds 2,470 images at once."""
    masks = {(s, e.id): e.mask_path(manifest.root) for s in {r["split"] for r in samples} for e in manifest.split(s)}
    items = []
    for r in samples:
        st, row, im = stores[r["split"]], r["row"], r["metrics"]
        metrics = {k: getattr(im, k) for k in IMAGE_METRICS}
        row_data = _StoreRow(st, row)
        items.append(
            GalleryItem(
                r["split"], r["id"], metrics, row_data.image, row_data.depth, masks[r["split"], r["id"]], r["pred"]
            )
        )
    return items


class _StoreRow:
    """A store row's image and depth for one gallery item, read once: `write_index` asks for the
    image, then the depth, of the same item; the sample is dropped after the depth."""

    def __init__(self, st, row: int) -> None:
        self.st, self.row, self.held = st, row, None

    def image(self) -> np.ndarray:
        self.held = self.st.sample(self.row, (VAL_DEPTH,))
        return self.held.image

    def depth(self) -> np.ndarray:
        sample, self.held = self.held or self.st.sample(self.row, (VAL_DEPTH,)), None
        return sample.depth[VAL_DEPTH]


def _sheet(samples, stores, manifest, path: Path, n: int, label: str | None) -> Path:
    """Best and worst samples by MAE: image | depth | GT | prediction at native size."""

    ranked = sorted(samples, key=lambda r: r["mae"])
    chosen = ranked[:n] + [r for r in ranked[-n:] if r not in ranked[:n]]
    rows = []
    for r in chosen:
        sample = stores[r["split"]].sample(r["row"], (VAL_DEPTH,))
        entry = next(e for e in manifest.split(r["split"]) if e.id == r["id"])
        tag = "best" if r in ranked[:n] else "worst"
        gt = load_mask(entry.mask_path(manifest.root))
        native = (gt.shape[1], gt.shape[0])  # the store holds squares: show them at the photo's aspect
        image = Image.fromarray(sample.image).resize(native, Image.BILINEAR)
        depth = Image.fromarray(sample.depth[VAL_DEPTH].astype(np.float32)).resize(native, Image.BILINEAR)
        rows.append(
            SheetRow(
                f"{tag}: {r['split']} / {r['id']}  MAE {r['mae']:.4f}",
                np.asarray(image),
                np.asarray(depth),
                gt,
                np.asarray(Image.open(r["pred"])),
            )
        )
    return contact_sheet(rows, path, label)
