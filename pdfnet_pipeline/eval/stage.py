"""Stage eval: predict every done sample of each split from its store, save native-size PNGs,
compute the DIS metrics per split and over DIS-TE (all), and write the report (results.md/csv/json,
curves.png, contact_sheet.png and index.html: the table, curves and a sortable per-image gallery).

The "before" model (`before`, by default the run's initial.safetensors: its random init, or the
model a fine-tune started from) is evaluated the same way into preds_before/, and the report puts
it beside the evaluated checkpoint: a before / after table, a before column in the gallery and
the contact sheet. The run's training curve (curve.png) is copied beside index.html.

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
import math
import os
import shutil
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
from pdfnet_pipeline.eval.html import IMAGE_METRICS, TRAINING_CURVE, GalleryItem, write_index
from pdfnet_pipeline.eval.published import quoted_name
from pdfnet_pipeline.eval.report import BeforeAfter, SheetRow, contact_sheet, plot_curves, write_tables
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
    # The model shown beside it: "initial" = run_dir/initial.safetensors when it exists (the weights
    # training started from), "" = none, or any checkpoint. Predicted and scored the same way.
    before: str = "initial"
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


def _run_config(run_dir: Path) -> dict:
    cfg_file = run_dir / "config.json"
    return json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}


def _run_random_reasons(stores: list[Path], run_dir: Path) -> list[str]:
    """Random DAM maps in the stores, or a run (config.json) trained from a random init."""
    cfg = _run_config(run_dir)
    model = cfg.get("model", {"backbone_weights": "unknown"})  # no run config: say only what we know
    return provenance.random_weight_reasons(stores, model, cfg.get("init_from", ""))


def before_checkpoint(cfg: Config, after: Path | str) -> Path | None:
    """The "before" model to evaluate beside `after` (cfg.before): "initial" is the run's
    initial.safetensors when it exists (else none), "" none, anything else that checkpoint. None
    too when it is `after` itself (a hard link included: best.safetensors is one)."""
    if not cfg.before:
        return None
    path = cfg.run_dir / "initial.safetensors" if cfg.before == "initial" else Path(cfg.before)
    if cfg.before == "initial" and not path.is_file():
        return None
    if path.is_file() and Path(after).is_file() and os.path.samefile(path, after):
        return None
    return path


def model_name(role: str, path: Path | str, run_dir: Path, init_from: str = "") -> str:
    """What a model of the before / after table is, e.g. "before (initial weights, initial.safetensors)"."""
    p = Path(path)
    in_run = p.parent.resolve() == Path(run_dir).resolve()
    if in_run and p.name == "initial.safetensors":
        start = f" = init_from {Path(init_from).name}" if init_from else ""
        what = f"initial weights{start}, {p.name}"
    elif in_run and p.name == "best.safetensors":
        what = f"best checkpoint, {p.name}"
    elif p.name == "model.safetensors" and p.parent.name.startswith("step_"):
        what = f"checkpoint {p.parent.name}"
    else:
        what = p.name or str(path)
    return f"{role} ({what})"


def batch_size(cfg: Config, device: torch.device) -> int:
    return cfg.batch_size or (8 if device.type == "cuda" else 1)


def predict_fn(model, compile: bool):
    """model.predict, or compiled for static shapes (one compile per input size)."""
    return torch.compile(model.predict, dynamic=False) if compile else model.predict


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """Batch padded to n with copies of its last sample (compiled shapes stay static)."""
    return torch.cat([x, x[-1:].repeat(n - len(x), *[1] * (x.dim() - 1))]) if len(x) < n else x


def _predict_split(
    model, ds, out_dir: Path, cfg: Config, device, prec: runtime.Precision, predict=None, desc: str = "predict"
) -> list[dict]:
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
    bar = tqdm(total=len(ds), desc=f"{desc} {st.split}", unit="img")
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
    """Every split of the manifest except the training one (DIS-TR, or train)."""
    from pdfnet_pipeline.data.manifest import split_role

    return [s for s in manifest.splits() if split_role(s) != "train"]


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

    rt = runtime.init(cfg.device)
    prec = runtime.precision(rt.device, cfg.precision)
    out = cfg.out or cfg.run_dir / "eval"
    ckpt = cfg.checkpoint or find_checkpoint(cfg.run_dir)
    before = before_checkpoint(cfg, ckpt)
    manifest = read_manifest(cfg.manifest)
    datasets = _open_stores(cfg, manifest)
    stores = {split: ds.stores[0] for split, ds in datasets.items()}
    reasons = _run_random_reasons([st.path for st in stores.values()], cfg.run_dir)
    label = provenance.random_label(reasons)
    if label:
        print(label)
    print(
        f"eval {ckpt} on {', '.join(datasets)}{' with TTA' if cfg.tta else ''} ({rt.device}, {prec.name}, "
        f"batch {batch_size(cfg, rt.device)}{', compiled' if cfg.compile else ''})"
        + (f"; before: {before}" if before else "")
    )

    mcfg = M.MetricsConfig(skeleton_cache=cfg.stores / ".gt_skeletons")  # GT skeletons reused across runs
    run_model = dict(datasets=datasets, manifest=manifest, cfg=cfg, rt=rt, prec=prec, mcfg=mcfg)
    per_split, samples = _evaluate(ckpt, out / "preds", **run_model)
    results = _summaries(per_split)
    compared = None
    shutil.rmtree(out / "preds_before", ignore_errors=True)  # never another model's leftovers
    if before is not None:
        before_split, before_samples = _evaluate(before, out / "preds_before", desc="predict (before)", **run_model)
        by_sample = {(r["split"], r["id"]): r for r in before_samples}
        for r in samples:
            b = by_sample.get((r["split"], r["id"]))  # on_error=skip: the same samples either way
            if b is not None:
                r.update(before=b["pred"], before_max_f=b["max_f"])
        init_from = _run_config(cfg.run_dir).get("init_from", "")
        splits = compared_splits(results)
        compared = BeforeAfter(
            model_name("before", before, cfg.run_dir, init_from),
            model_name("after", ckpt, cfg.run_dir),
            str(before),
            str(ckpt),
            _summaries(before_split),
            splits,
            quoted_name(),
            quoted_rows(manifest, splits),
        )
    curves = {s: {"precision": r.precision, "recall": r.recall, "fmeasure": r.f_curve} for s, r in per_split.items()}
    files = write_tables(results, out, label, compared)
    files.append(plot_curves(curves, out / "curves.png", label))
    files.append(_sheet(samples, stores, manifest, out / "contact_sheet.png", cfg.sheet_rows, label))
    if (cfg.run_dir / "curve.png").is_file():  # the training curve, beside the page (self-contained)
        shutil.copyfile(cfg.run_dir / "curve.png", out / TRAINING_CURVE)
        files.append(out / TRAINING_CURVE)
    else:
        (out / TRAINING_CURVE).unlink(missing_ok=True)
    files.append(write_index(out, results, _gallery(samples, stores, manifest), label, before=compared))
    print((out / "results.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files))
    return results


def _evaluate(ckpt, preds: Path, datasets, manifest, cfg: Config, rt, prec, mcfg, desc: str = "predict"):
    """Predict every split with the model in `ckpt` into preds/<split>/ and score it: (split ->
    metrics.Results, DIS-TE (all) included when all four test splits are there; per-sample records)."""
    from pdfnet_pipeline.eval import metrics as M
    from pdfnet_pipeline.model.checkpoint import load_model

    model = load_model(ckpt, map_location=rt.device).to(rt.device).eval()
    predict = predict_fn(model, cfg.compile)
    per_split, samples = {}, []
    for split, ds in datasets.items():
        records = _predict_split(model, ds, preds / split, cfg, rt.device, prec, predict, desc)
        gts = {e.id: e.mask_path(manifest.root) for e in manifest.split(split)}
        pairs = [(r["pred"], gts[r["id"]], r["id"]) for r in records]
        result = M.evaluate_pairs(pairs, workers=cfg.metric_workers or None, config=mcfg)
        per_split[split] = result
        samples += [
            dict(r, split=split, mae=im.mae, max_f=im.max_f, metrics=im) for r, im in zip(records, result.images)
        ]
    te = [im for s in TEST_SPLITS if s in per_split for im in per_split[s].images]
    if all(s in per_split for s in TEST_SPLITS):  # "DIS-TE (all)" means all four test splits
        per_split[ALL_TE] = M.Results.from_images(te)
    return per_split, samples


def _summaries(per_split: dict) -> dict[str, dict]:
    return {s: {**r.summary(), "count": len(r.images)} for s, r in per_split.items()}


def compared_splits(results: dict) -> list[str]:
    """The before / after table's splits: DIS-TE (all) when evaluated, else the held-out test
    splits (e.g. a folder's "test"), else every evaluated split (e.g. only a validation split)."""
    from pdfnet_pipeline.data.manifest import split_role

    if ALL_TE in results:
        return [ALL_TE]
    return [s for s in results if split_role(s) == "test"] or list(results)


def official_split(manifest, split: str) -> bool:
    """Are the split's samples DIS-5K's own (every id on the official list)? DIS-TE (all): all four
    test splits are. Only then are published numbers quoted beside the results."""
    from pdfnet_pipeline.data.manifest import official_names

    parts = TEST_SPLITS if split == ALL_TE else (split,)
    for part in parts:
        names = official_names(part)
        ids = {e.id for e in manifest.entries if e.split == part}
        if not names or not ids or not ids <= names:
            return False
    return True


def quoted_rows(manifest, splits: list[str]) -> dict[str, dict[str, float]]:
    """The paper's published rows for the compared splits that are official DIS-5K splits."""
    from pdfnet_pipeline.eval.published import published_rows

    published = published_rows()
    return {s: published[s] for s in splits if s in published and official_split(manifest, s)}


def _gallery(samples, stores, manifest) -> list[GalleryItem]:
    """Every evaluated sample for index.html. Its image and depth are read from the store when the
    thumbnail is made, so a DIS-5K evaluation never holds 2,470 images at once."""
    masks = {(s, e.id): e.mask_path(manifest.root) for s in {r["split"] for r in samples} for e in manifest.split(s)}
    items = []
    for r in samples:
        st, row, im = stores[r["split"]], r["row"], r["metrics"]
        metrics = {k: getattr(im, k) for k in IMAGE_METRICS}
        row_data = _StoreRow(st, row)
        gt = masks[r["split"], r["id"]]
        items.append(
            GalleryItem(r["split"], r["id"], metrics, row_data.image, row_data.depth, gt, r["pred"], r.get("before"))
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


def sheet_choice(samples: list[dict], n: int) -> list[tuple[str, int, dict]]:
    """The contact sheet's rows as (kind, rank, sample): the n samples with the highest per-image
    F_max ("best", highest first), then the n lowest not already shown ("worst", lowest first);
    ties by split and id. F, not MAE: on thin structures a near-empty prediction has a small MAE."""

    def f(r) -> float:
        v = r.get("max_f")
        return -math.inf if v is None or math.isnan(v) else float(v)

    best = sorted(samples, key=lambda r: (-f(r), r["split"], r["id"]))[:n]
    shown = {(r["split"], r["id"]) for r in best}
    worst = [
        r for r in sorted(samples, key=lambda r: (f(r), r["split"], r["id"])) if (r["split"], r["id"]) not in shown
    ]
    return [("best", k, r) for k, r in enumerate(best, 1)] + [("worst", k, r) for k, r in enumerate(worst[:n], 1)]


def _sheet(samples, stores, manifest, path: Path, n: int, label: str | None) -> Path:
    """Best and worst samples by per-image F_max: image | depth | GT | (before |) prediction at native size."""
    rows = []
    for kind, rank, r in sheet_choice(samples, n):
        sample = stores[r["split"]].sample(r["row"], (VAL_DEPTH,))
        entry = next(e for e in manifest.split(r["split"]) if e.id == r["id"])
        gt = load_mask(entry.mask_path(manifest.root))
        native = (gt.shape[1], gt.shape[0])  # the store holds squares: show them at the photo's aspect
        image = Image.fromarray(sample.image).resize(native, Image.BILINEAR)
        depth = Image.fromarray(sample.depth[VAL_DEPTH].astype(np.float32)).resize(native, Image.BILINEAR)
        before = np.asarray(Image.open(r["before"])) if r.get("before") else None
        was = f"  (before: F_max {r['before_max_f']:.3f})" if before is not None else ""
        rows.append(
            SheetRow(
                f"{kind} F #{rank}: {r['split']} / {r['id']}  F_max {r['max_f']:.3f}  MAE {r['mae']:.4f}{was}",
                np.asarray(image),
                np.asarray(depth),
                gt,
                np.asarray(Image.open(r["pred"])),
                before,
            )
        )
    return contact_sheet(rows, path, label)
