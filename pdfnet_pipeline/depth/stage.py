"""Stage depth: DAM v2 small/base/large (518 input) and the large supervision map (1036 input) for
every image of the chosen splits, in one pass, into `STORES/<split>.zarr`.

Inputs are 518 / 1036 squares ("square", the paper's text and the default: everything batches)
or keep the aspect ratio ("keep", the official `infer_image` that made the authors' maps): then
batches hold equal input shapes only (`inputs.batches`; DIS photos cluster on a few ratios).

Per split: lock the store (rank 0), create or check it, then each rank computes the missing
samples of its strided share (rank, rank + world, ...) in fixed batches and hands finished samples
to writer threads, which write a sample's arrays and then its done flag. Rerunning after any
crash computes only batches that still hold missing samples. Under torchrun the ranks agree on
the lock and the layout through the process group; nothing else is coordinated.
"""

from __future__ import annotations

import functools
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from pdfnet_pipeline import preempt, runtime, store
from pdfnet_pipeline.depth import dam
from pdfnet_pipeline.errors import UserError

MODEL_MAPS = store.DEPTH_INPUTS  # 518 input, one model each
SUPERVISION = store.SUPERVISION  # the large model at the 1024 rule's input side (1036)


@dataclass
class ModelSpec:
    arch: str = "small"  # small | base | large | tiny
    weights: str = "hub"  # "hub" (official id for arch) | hub id | local dir | "random"
    revision: str = ""  # hub revision ("" = main)


@dataclass
class Models:
    small: ModelSpec = field(default_factory=lambda: ModelSpec("small"))
    base: ModelSpec = field(default_factory=lambda: ModelSpec("base"))
    large: ModelSpec = field(default_factory=lambda: ModelSpec("large"))


@dataclass
class Config:
    RENAMED: ClassVar[dict[str, str]] = {"dtype": "precision"}  # refused, naming the new setting

    manifest: Path = Path("data_manifests/DIS5K.jsonl")
    stores: Path = Path("stores")
    splits: list[str] = field(default_factory=list)  # empty: every split in the manifest
    size: int = 1024  # store side
    input_size: int = 518  # DAM input for small/base/large
    supervision_size: int = 1024  # official sizing rule -> 1036 input for large_1024
    maps: list[str] = field(default_factory=lambda: list(store.DEPTH_MAPS))
    models: Models = field(default_factory=Models)
    seed: int = 0  # random weights only
    allow_download: bool = True  # False: hub weights must already be in the HF cache
    batch_size: int = 8
    workers: int = 4  # decode/resize processes
    write_threads: int = 4
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)
    precision: runtime.PrecisionName = "auto"  # backbone autocast (DPT head fp32); auto: bf16 on CUDA, fp32 on CPU
    aspect: dam.Aspect = "square"  # square (paper text, batches) | keep (official infer_image, authors' maps)
    posemb: dam.PosEmb = "official"  # DINOv2 position-embedding interpolation off the 518 square
    on_error: Literal["stop", "skip"] = "stop"
    draft: bool = True  # JPEG draft decoding of big images
    progress: bool = True


class DepthStageError(UserError, RuntimeError):
    """A bad input (on_error=stop), a non-finite map, or a refused store."""


def _check_maps(cfg: Config) -> None:
    bad = [m for m in cfg.maps if m not in store.DEPTH_MAPS]
    if bad or not cfg.maps:
        raise DepthStageError(f"maps {bad or cfg.maps}: choose among {list(store.DEPTH_MAPS)}")


def load_models(cfg: Config) -> tuple[dict, dict]:
    """{map: model} and {map: provenance}. large_1024 reuses the large model."""
    needed = {m for m in cfg.maps if m in MODEL_MAPS} | ({"large"} if SUPERVISION in cfg.maps else set())
    models, prov = {}, {}
    for k, name in enumerate(MODEL_MAPS):
        if name not in needed:
            continue
        spec: ModelSpec = getattr(cfg.models, name)
        models[name], prov[name] = dam.load_dam(
            spec.arch,
            spec.weights,
            revision=spec.revision or None,
            seed=cfg.seed + k,
            allow_download=cfg.allow_download,
            posemb=cfg.posemb,
        )
    out_prov = {m: prov[m] for m in cfg.maps if m in MODEL_MAPS}
    if SUPERVISION in cfg.maps:
        out_prov[SUPERVISION] = {**prov["large"], "input_side": dam.input_side(cfg.supervision_size)}
    return models, out_prov


POSEMB = {
    "official": "DINOv2 official: bicubic, scale_factor=((rows+0.1)/37, (cols+0.1)/37), no antialias",
    "transformers": "transformers: bicubic to size=(rows, cols)",
}
RESIZE = {
    "square": "square",
    "keep": "keep aspect: short side to input_side, sides to multiples of 14 (official Resize, lower_bound)",
}
OUTPUT = {
    "square": "bilinear align_corners=True to size, per-map min-max to [0,1], float16",
    "keep": "bilinear align_corners=True to the image's own size, per-map min-max to [0,1] there, "
    "bilinear align_corners=True to size, float16",
}


def preprocessing(cfg: Config, amp) -> dict:
    """Everything that shapes the maps: a rerun with any other value is refused by the store."""
    return {
        "aspect": cfg.aspect,
        "input_side": dam.input_side(cfg.input_size),  # keep: the short side
        "supervision_side": dam.input_side(cfg.supervision_size),
        "input_resize": f"bicubic a=-0.75, align_corners=False, no antialias, {RESIZE[cfg.aspect]}",
        "posemb": POSEMB[cfg.posemb],
        "normalize": {"mean": list(dam.IMAGENET_MEAN), "std": list(dam.IMAGENET_STD)},
        "output": OUTPUT[cfg.aspect],
        "image_mask_resize": "bilinear antialias (triangle), rounded to uint8",
        "jpeg_draft": cfg.draft,
        "autocast": str(amp).removeprefix("torch.") if amp is not None else "float32",
        "dpt_head": "float32",
        "tf32": "off: every float32 conv/matmul in IEEE float32 (backbone too without autocast)",
    }


def recorded_settings(st: store.Store, name: str) -> dict | None:
    """What recomputes map `name` of store `st`: its DAM v2 model as `dam.load_dam` recorded it
    (arch, weights, revision, seed) and the input mode of `preprocessing` (input side, aspect,
    posemb rule), plus the store side. None when the store lacks the map or those records."""
    prov, pre = st.models.get(name), st.preprocessing
    if not isinstance(prov, dict) or "arch" not in prov or "input_side" not in pre:
        return None
    return {
        "arch": prov["arch"],
        "weights": prov["weights"],
        "revision": prov.get("revision"),
        "seed": prov.get("seed", 0),
        "input_size": pre["supervision_side"] if name == SUPERVISION else pre["input_side"],
        "aspect": pre.get("aspect", "square"),
        "posemb": next((rule for rule, text in POSEMB.items() if text == pre.get("posemb")), "official"),
        "map": name,
        "size": st.size,
    }


def _infer(
    models: dict, batch: dict, cfg: Config, device, amp, orig_sizes: list[tuple[int, int]]
) -> tuple[dict, list[tuple[int, str]]]:
    """{map: (B,S,S) float16 numpy} and the non-finite failures as (batch position, message).
    `orig_sizes`: each image's (H, W), where the "keep" mode min-maxes its maps."""
    import torch

    out, bad = {}, []
    with torch.inference_mode():
        x_in = batch["x_in"].to(device, non_blocking=True)
        for name in cfg.maps:
            x = batch["x_sup"].to(device, non_blocking=True) if name == SUPERVISION else x_in
            model = models["large" if name == SUPERVISION else name]
            if cfg.aspect == "keep":
                maps, finite = dam.predict_keep(model, x, orig_sizes, cfg.size, amp)
            else:
                maps, finite = dam.predict(model, x, cfg.size, amp)
            out[name] = maps.to(torch.float16).cpu().numpy()
            bad += [(int(i), f"non-finite depth from the {name} model") for i in torch.nonzero(~finite.cpu()).flatten()]
    return out, bad


class Writer:
    """Writer threads with a bounded queue; the first failure is raised on the next call."""

    def __init__(self, st: store.Store, threads: int, max_pending: int) -> None:
        self.store, self.max_pending = st, max_pending
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="store-writer")
        self.pending: deque[Future] = deque()
        self.written = 0

    def submit(self, index: int, image, mask, depths: dict) -> None:
        # Wait while the queue is full, and collect finished writes: a failed one (disk full) stops
        # the run now, not max_pending samples later.
        while self.pending and (len(self.pending) >= self.max_pending or self.pending[0].done()):
            self.pending.popleft().result()
        # The bound method is looked up per call (tests inject crashes into Store.write_sample).
        self.pending.append(self.pool.submit(self.store.write_sample, index, image, mask, depths))
        self.written += 1

    def drain(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True)


def prep_for(cfg: Config):
    """What the workers compute per sample (and the batch key: its input shapes)."""
    from pdfnet_pipeline.depth import inputs

    sup = cfg.supervision_size if SUPERVISION in cfg.maps else None
    return inputs.Prep(cfg.size, cfg.input_size, sup, cfg.draft, aspect=cfg.aspect)


def _loader(entries, root: Path, todo: list[list[int]], cfg: Config, device, prep):
    import torch

    from pdfnet_pipeline import workers
    from pdfnet_pipeline.depth import inputs

    if cfg.workers > 0:
        workers.kill_shielded_at_exit()  # the workers ignore SIGTERM
    return torch.utils.data.DataLoader(
        inputs.SampleSource(entries, root, prep),
        batch_sampler=todo,
        num_workers=cfg.workers,
        multiprocessing_context=workers.context((inputs.__name__,)) if cfg.workers > 0 else None,
        collate_fn=inputs.collate,
        worker_init_fn=functools.partial(preempt.shielded, inputs.worker_init),  # SIGTERM: for the main process
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if cfg.workers > 0 else None,
    )


def _compute(
    st: store.Store, entries, root: Path, cfg: Config, rt: runtime.Runtime, models: dict, amp, stop: preempt.StopFlag
) -> tuple[int, list[str], bool]:
    """This rank's missing samples of one split; returns (written, skipped messages, interrupted).
    After a stop signal no new batch starts: the samples computed so far are written (the writers
    drain) and it returns interrupted=True if batches were left."""
    from tqdm import tqdm

    from pdfnet_pipeline.depth import inputs

    done = st.done()
    mine = list(range(rt.rank, len(entries), rt.world))
    prep = prep_for(cfg)

    def shapes(index: int):  # the batch key: samples of equal input shapes stack
        return prep.shapes(entries[index].width, entries[index].height)

    todo = [b for b in inputs.batches(mine, shapes, cfg.batch_size) if not done[b].all()]
    if not todo:
        return 0, [], False
    skipped: list[str] = []
    interrupted = False
    writer = Writer(st, cfg.write_threads, max_pending=2 * cfg.batch_size)
    total = sum(int((~done[b]).sum()) for b in todo)
    bar = tqdm(total=total, desc=st.split, unit="img", disable=not cfg.progress or not rt.main, file=sys.stderr)
    try:
        for batch in _loader(entries, root, todo, cfg, rt.device, prep):
            if stop.requested:
                interrupted = True
                break
            failures = list(batch["errors"])
            if batch["index"]:
                sizes = [(entries[i].height, entries[i].width) for i in batch["index"]]
                maps, bad = _infer(models, batch, cfg, rt.device, amp, sizes)
                failures += [(batch["index"][pos], msg) for pos, msg in bad]
                failed = {i for i, _ in failures}
                for pos, index in enumerate(batch["index"]):
                    if done[index] or index in failed:
                        continue
                    depths = {name: maps[name][pos] for name in cfg.maps}
                    writer.submit(index, batch["image"][pos].numpy(), batch["mask"][pos].numpy(), depths)
                    bar.update(1)
            for index, msg in failures:
                text = msg if msg.startswith("/") else f"{entries[index].image_path(root)}: {msg}"
                if cfg.on_error == "stop":
                    writer.drain()  # everything already computed is kept
                    raise DepthStageError(f"bad input (on_error=stop; rerun resumes): {text}")
                print(f"skipped: {text}", file=sys.stderr)
                skipped.append(text)
    finally:
        bar.close()
        writer.drain()
    return writer.written, skipped, interrupted


def _run_split(
    split: str, manifest, cfg: Config, rt: runtime.Runtime, models: dict, prov: dict, amp, stop: preempt.StopFlag
) -> dict:
    path = cfg.stores / f"{split}.zarr"
    entries = manifest.split(split)
    spec = store.StoreSpec(
        split=split,
        ids=[e.id for e in entries],
        orig_sizes=[(e.height, e.width) for e in entries],
        size=cfg.size,
        manifest_sha256=manifest.split_hash(split),
        maps=tuple(cfg.maps),
        models=prov,
        preprocessing=preprocessing(cfg, amp),
    )
    with ExitStack() as stack:
        error = None
        if rt.main:  # rank 0 holds the lock and creates the layout; the others wait for it
            try:
                stack.enter_context(store.writer_lock(path))
                st = store.open_write(path, spec)
            except store.StoreError as err:
                error = str(err)
        error = rt.broadcast(error)  # rank 0's refusal (lock held, store mismatch) stops every rank
        if error:
            raise DepthStageError(error)
        rt.barrier()
        if not rt.main:
            st = store.open_write(path, spec)
        start = time.perf_counter()
        written, skipped, interrupted = _compute(st, entries, Path(manifest.root), cfg, rt, models, amp, stop)
        parts = rt.gather((skipped, written, interrupted))  # one interrupted rank stops them all
        skipped, written = [s for part, _, _ in parts for s in part], sum(w for _, w, _ in parts)
        stopped = any(p[2] for p in parts)
        rt.barrier()  # every rank's writes finished before the lock is released
        if rt.main:
            st.touch(skipped=skipped)
        seconds = time.perf_counter() - start
    summary = store.split_status(path) if rt.main else {}
    if stopped:  # after the lock is released
        done = f"{summary['done']}/{summary['n']} samples done, " if rt.main else ""
        raise preempt.Preempted(
            f"depth stage stopped on {stop.name or 'a signal'} after writing the samples in flight: {path}: "
            f"{done}{written} written this run; rerun the same command to finish the missing samples"
        )
    return {**summary, "split": split, "written": written, "skipped_now": skipped, "seconds": seconds}


def run(cfg: Config) -> list[dict]:
    """Run the stage over every requested split; returns per-split summaries (rank 0 prints them).
    SIGTERM / SIGUSR1: the samples in flight are written, the lock released, then Preempted (exit 75)."""
    with preempt.catch_stop_signals() as stop:
        return _run(cfg, stop)


def _run(cfg: Config, stop: preempt.StopFlag) -> list[dict]:
    from pdfnet_pipeline.data.manifest import read_manifest

    _check_maps(cfg)
    rt = runtime.init(cfg.device)
    try:
        amp = runtime.precision(rt.device, cfg.precision).dtype
        manifest = read_manifest(cfg.manifest)
        models, prov = load_models(cfg)
        for m in models.values():
            m.to(rt.device)
        out = []
        for split in cfg.splits or manifest.splits():
            summary = _run_split(split, manifest, cfg, rt, models, prov, amp, stop)
            if rt.main:
                print(
                    f"{split}: {summary['done']}/{summary['n']} done, {summary['written']} written this run "
                    f"in {summary['seconds']:.1f} s, {len(summary['skipped_now'])} skipped -> {summary['path']}"
                )
            out.append(summary)
        return out
    finally:
        rt.shutdown()
