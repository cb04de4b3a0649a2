"""The PDFNet training loop: stores -> micro-batches -> accumulated AdamW steps -> checkpoints.

One path for every setting: CPU float32 / CUDA bf16 autocast (fp16 + GradScaler where bf16 is
missing), single process or torchrun DDP, gradient accumulation whose last window of an epoch may
be shorter (each micro-batch is weighted by its share of the window's samples, so the step is
the mean over exactly the samples seen), optional clipping and torch.compile.

Exact resume: the checkpoint holds model, optimizer, scaler, every RNG, the step and the position
in the epoch; data randomness depends only on (seed, epoch, sample), and the loader gets its own
generator, so a resumed run replays the same samples, the same dropout and the same arithmetic.

Pre-emption (SIGTERM / SIGUSR1, see preempt.py): the handler sets a flag; the flag rides on the
all-reduce every optimizer step already makes, so all ranks see it after the same step (never
inside an accumulation window), save a checkpoint and return with `stopped` set; the stage then
raises Preempted (exit code 75). A signal during an epoch's last step lets that epoch close
(validation, epoch checkpoint) first, as max_steps does, so the resumed metrics log is identical.

What a person watches (rank 0): a fresh run first saves the weights it starts from as
`initial.safetensors` (random init, or the init_from model being fine-tuned: the "before" model
eval compares with); every epoch end prints one line (epoch, train loss, validation F_max / MAE,
"(best)") and redraws `curve.png` from metrics.jsonl; `log.tensorboard = true` mirrors
metrics.jsonl's scalars into `tb/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pdfnet_pipeline import config as cfgmod
from pdfnet_pipeline import preempt, provenance, runtime
from pdfnet_pipeline.data.batch import batch_inputs
from pdfnet_pipeline.data.dataset import EpochSampler, ShardSampler, StoreDataset, make_loader, start_workers_early
from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.model.checkpoint import CheckpointError
from pdfnet_pipeline.store import StoreReadError
from pdfnet_pipeline.train import checkpoint as ckpt
from pdfnet_pipeline.train.config import Config
from pdfnet_pipeline.train.init import init_weights
from pdfnet_pipeline.train.optim import Window, accumulation_windows, build_optimizer, lr_at, set_lr
from pdfnet_pipeline.train.validate import ValScores, to_u8


class NonFiniteError(UserError, FloatingPointError):
    """NaN / inf in the loss or the gradients: training stops, the last checkpoint stays as it was."""


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # per optimizer step of this run, rank mean
    val: list[dict] = field(default_factory=list)
    state: ckpt.TrainState = field(default_factory=ckpt.TrainState)
    is_main: bool = True
    stopped: str = ""  # the stop signal's name when a pre-emption signal ended the run early
    checkpoint: Path | None = None  # the last checkpoint written (rank 0)
    early_stopped: bool = False  # early_stop ended the run before its last epoch


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_model(cfg: Config) -> torch.nn.Module:
    from pdfnet_pipeline.model import build_pdfnet

    return build_pdfnet(cfg.model)


def tensorboard_writer():
    """torch's SummaryWriter class, or a one-line UserError when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UserError(
            f"log.tensorboard = true needs the tensorboard package ({err}): pip install tensorboard "
            f"(or pip install 'pdfnet-pipeline[tensorboard]'), or set log.tensorboard=false"
        ) from None
    return SummaryWriter


# metrics.jsonl field -> TensorBoard tag, per record kind: the same scalars in both
TB_TAGS = {
    "step": {"loss": "train/step_loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
             "samples_per_s": "train/samples_per_s"},
    "epoch": {"train_loss": "train/epoch_loss", "val_max_f": "val/max_f", "val_mae": "val/mae"},
}  # fmt: skip


class RunLog:
    """Rank-0 outputs: resolved config, metrics.jsonl (+ TensorBoard events), the epoch lines,
    curve.png, validation images, the progress bar."""

    def __init__(self, run_dir: Path, cfg: Config, main: bool, resumed_step: int | None) -> None:
        self.dir, self.main, self.label, self.tb = run_dir, main, None, None
        self.metrics, self.curve = run_dir / "metrics.jsonl", run_dir / "curve.png"
        if not main:
            return
        reasons = provenance.random_weight_reasons(cfg.data.train_stores, asdict(cfg.model), cfg.init_from)
        self.label = provenance.random_label(reasons)
        if self.label:
            print(self.label)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfgmod.to_dict(cfg), indent=2))
        if resumed_step is not None and self.metrics.exists():  # drop lines past the checkpoint
            keep = [ln for ln in self.metrics.read_text().splitlines() if json.loads(ln).get("step", 0) <= resumed_step]
            self.metrics.write_text("".join(ln + "\n" for ln in keep))
            self.draw_curve()  # the trimmed log's picture
        elif resumed_step is None:  # a fresh run: no picture or events of an earlier one
            self.metrics.write_text("")
            self.curve.unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tb", ignore_errors=True)
        if cfg.log.tensorboard:
            # purge_step: TensorBoard hides events a pre-empted run logged past its checkpoint,
            # as the trimmed metrics.jsonl drops their lines
            purge = None if resumed_step is None else resumed_step + 1
            self.tb = tensorboard_writer()(str(run_dir / "tb"), purge_step=purge)

    def write(self, **record) -> None:
        if self.main:
            with self.metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None:
                for key, tag in TB_TAGS.get(record["kind"], {}).items():
                    if key in record:
                        self.tb.add_scalar(tag, record[key], record["step"])

    def close_epoch(self, record: dict, epochs: int, best: bool) -> None:
        """The epoch's one terminal line (through tqdm.write: whether or not a bar is showing),
        then curve.png redrawn and the TensorBoard events flushed."""
        if not self.main:
            return
        from tqdm import tqdm

        parts = []
        if "train_loss" in record:
            parts.append(f"train loss {record['train_loss']:.3f}")
        if "val_max_f" in record:
            parts.append(
                f"val F_max {record['val_max_f']:.3f} MAE {record['val_mae']:.3f}" + (" (best)" if best else "")
            )
        tqdm.write(f"epoch {record['epoch'] + 1}/{epochs}: " + (" | ".join(parts) or "no steps"))
        self.draw_curve()
        if self.tb is not None:
            self.tb.flush()

    def note(self, text: str) -> None:
        """A line for the person watching (rank 0), printed past any progress bar."""
        if self.main:
            from tqdm import tqdm

            tqdm.write(text)

    def draw_curve(self) -> None:
        from pdfnet_pipeline.train.curve import plot_training_curve, read_metrics

        try:
            plot_training_curve(read_metrics(self.metrics), self.curve, self.label)
        except OSError as err:  # a picture: training goes on without it
            print(f"warning: cannot write {self.curve}: {err}", file=sys.stderr)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def bar(self, total: int, initial: int, desc: str, enabled: bool):
        if not (self.main and enabled):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

    def save_images(
        self, epoch: int, ids: list[str], image: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor
    ) -> None:
        """image | GT | prediction side by side, one PNG per sample."""
        out = self.dir / "samples" / f"epoch_{epoch:03d}"
        out.mkdir(parents=True, exist_ok=True)
        for i, sid in enumerate(ids):
            grey = [np.repeat(t[i].cpu().numpy()[..., None], 3, axis=2) for t in (gt, pred)]
            strip = Image.fromarray(np.concatenate([image[i].cpu().numpy(), *grey], axis=1))
            if self.label:  # a red banner: these pictures show the pipeline, not PDFNet
                draw = ImageDraw.Draw(strip)
                draw.rectangle([0, 0, strip.width, 14], fill=(200, 0, 0))
                draw.text((3, 2), "RANDOM WEIGHTS", fill=(255, 255, 255))
            strip.save(out / f"{sid}.png")


@dataclass
class Trainer:
    cfg: Config
    rt: runtime.Runtime
    model: torch.nn.Module  # plain module (checkpoints, predict)
    train_model: torch.nn.Module  # what the step calls: DDP and/or compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: runtime.Precision
    state: ckpt.TrainState
    log: RunLog
    model_config: dict
    # What every model file of the run records about its depth input (predict's defaults): read
    # from the stores once at setup, not at every save.
    depth: object
    result: TrainResult = field(default_factory=TrainResult)
    stop: preempt.StopFlag = field(default_factory=preempt.StopFlag)
    stopping: bool = False  # some rank got a stop signal; every rank agrees on it at a step boundary
    skipped_now: int = 0  # unreadable samples dropped since the last optimizer step (this rank)
    kept_now: int = 0  # samples trained on since the last optimizer step (this rank)
    step_skipped: int = 0  # unreadable samples dropped in the last optimizer step (every rank)

    @property
    def device(self) -> torch.device:
        return self.rt.device

    def autocast(self):
        return self.precision.autocast(self.device)

    def save(self) -> Path | None:
        rng = self.rt.gather(ckpt.torch_rng_state())
        self.state.extra["world"] = self.rt.world  # a mid-epoch resume must use the same world size
        path, error = None, None
        if self.rt.main:
            try:
                path = ckpt.save_checkpoint(
                    self.cfg.run_dir / "checkpoints",
                    self.model,
                    self.optimizer,
                    self.scaler,
                    self.state,
                    config=cfgmod.to_dict(self.cfg),
                    model_config=self.model_config,
                    keep=self.cfg.keep,
                    rank_rng=rng,
                    depth=self.depth,
                )
            except ckpt.CheckpointWriteError as err:
                error = str(err)
        error = self.rt.broadcast(error)  # also the barrier: no rank goes on before rank 0 wrote
        if error:
            raise ckpt.CheckpointWriteError(error)
        self.result.checkpoint = path
        return path

    def mark_best(self, path: Path | None, scores: dict) -> None:
        error = None
        if self.rt.main and path is not None:
            try:
                ckpt.mark_best(self.cfg.run_dir / "checkpoints", self.cfg.run_dir, path, scores)
            except ckpt.CheckpointWriteError as err:
                error = str(err)
        error = self.rt.broadcast(error)  # every rank stops on rank 0's failed write
        if error:
            raise ckpt.CheckpointWriteError(error)

    def readable(self, batch: dict) -> tuple[dict, int, int]:
        """(batch without the samples whose chunks did not decode, samples kept, samples dropped).
        data.on_error=stop raises the first as a one-line StoreReadError; skip prints each. When
        none is readable the zero placeholders stay, counted as 0 samples (weight 0): DDP ranks
        still run the same forward / backward."""
        errors = batch.pop("error", None) or []
        bad = [e for e in errors if e]
        if not bad:
            return batch, len(batch["id"]), 0
        if self.cfg.data.on_error == "stop":
            raise StoreReadError(f"{bad[0]} (data.on_error=skip would skip it)")
        for message in bad:
            print(f"skipped (data.on_error=skip): {message}", file=sys.stderr)
        keep = [k for k, e in enumerate(errors) if not e]
        if keep:
            idx = torch.tensor(keep)
            batch = {k: v[idx] if torch.is_tensor(v) else [v[i] for i in keep] for k, v in batch.items()}
        return batch, len(keep), len(bad)

    def agree_to_stop(self) -> bool:
        """Outside a step (epoch boundary): did any rank get a stop signal? All ranks get one answer."""
        self.stopping = self.stopping or self.stop.requested
        if self.rt.distributed:  # one read per epoch, and only when there are ranks to agree with
            flag = torch.tensor([float(self.stopping)], device=self.device)
            self.stopping = bool(self.rt.all_reduce(flag, "max").item())
        return self.stopping

    def micro_step(self, batch: dict, weight: float, sync: bool) -> torch.Tensor:
        inputs = batch_inputs(batch, self.device)
        no_sync = self.rt.distributed and not sync and hasattr(self.train_model, "no_sync")
        with self.train_model.no_sync() if no_sync else contextlib.nullcontext():
            with self.autocast():
                out = self.train_model(**inputs)
            loss = out.losses["total"].float()
            self.scaler.scale(loss * weight).backward()
        return loss.detach()

    def optimizer_step(self, window: list[tuple[list[str], torch.Tensor, float]], total_steps: int, epoch: int):
        """Clip, check for NaN/inf (all ranks agree), step. Returns (loss, grad norm) as floats."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.optim.clip_grad if self.cfg.optim.clip_grad > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip).float() if params else torch.zeros((), device=self.device)
        loss = sum(part * w for _, part, w in window)
        # With a GradScaler, inf gradients are its business (it skips the step); without one they stop the run.
        grad_counts = 0.0 if self.scaler.is_enabled() else 1.0
        # One reduction per step carries all the ranks must agree on: mean loss, NaN/inf flags, the
        # grad norm (DDP grads agree, so the rank mean is the norm), the stop flag (pre-emption) and
        # the samples skipped / trained on in this window. It is the step's one device->host read:
        # the guard must see it before the update; the logged values ride along.
        local = torch.stack(
            [
                loss.float() / self.rt.world,
                (~loss.isfinite()).float(),
                (~gnorm.isfinite()) * grad_counts,
                gnorm.float() / self.rt.world,
            ]
        )
        extra = torch.tensor([float(self.stop.requested), float(self.skipped_now), float(self.kept_now)])
        reduced = self.rt.all_reduce(torch.cat([local.to(self.device), extra.to(self.device)]))
        mean_loss, bad_loss, bad_grad, mean_gnorm, stop, skipped, kept = reduced.tolist()
        self.stopping, self.step_skipped = self.stopping or stop > 0, int(skipped)
        self.skipped_now = self.kept_now = 0
        self.state.extra["skipped"] = self.state.extra.get("skipped", 0) + int(skipped)  # this epoch, every rank
        if bad_loss or bad_grad:
            self.optimizer.zero_grad(set_to_none=True)
            raise self._non_finite("loss" if bad_loss else "gradients", window, epoch)
        set_lr(self.optimizer, lr_at(self.state.step, total_steps, self.cfg.optim))
        if kept:  # a step whose every sample was unreadable (on_error=skip) has nothing to learn from
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return mean_loss, mean_gnorm

    def _non_finite(self, what: str, window, epoch: int) -> NonFiniteError:
        ids = [i for ids, part, _ in window if not torch.isfinite(part) for i in ids]
        ids = ids or [i for ids, _, _ in window for i in ids]
        return NonFiniteError(
            f"non-finite {what} at optimizer step {self.state.step + 1} (epoch {epoch}) on rank {self.rt.rank}, "
            f"samples {ids}; stopped before updating. Last good checkpoint: "
            f"{self.cfg.run_dir / 'checkpoints'} (untouched)"
        )

    def epoch_windows(self, sampler: EpochSampler) -> list[Window]:
        """This rank's optimizer steps per epoch. compile=true: the loader drops the last partial
        micro-batch (drop_last), so the compiled step sees one shape; the plan drops it too."""
        return accumulation_windows(sampler.per_rank(), self.cfg.batch_size, self.cfg.accum_steps, self.cfg.compile)

    def run_epoch(self, epoch: int, loader, sampler: EpochSampler, total_steps: int) -> bool:
        """Train one epoch from state.position; returns True when max_steps stopped it."""
        cfg, b = self.cfg, self.cfg.batch_size
        windows = self.epoch_windows(sampler)
        acc = max(cfg.accum_steps, 1)
        sampler.set_epoch(epoch, start=self.state.position * b)
        bar = self.log.bar(len(windows), self.state.position // acc, f"epoch {epoch}", cfg.progress)
        pending, t0, seen = [], time.perf_counter(), 0
        self.train_model.train()
        for j, batch in enumerate(loader, start=self.state.position):
            win: Window = windows[j // acc]
            batch, n, dropped = self.readable(batch)
            self.skipped_now, self.kept_now = self.skipped_now + dropped, self.kept_now + n
            last = j + 1 == win.end
            pending.append((batch["id"], self.micro_step(batch, win.weight(n), sync=last), win.weight(n)))
            seen += n * self.rt.world
            if not last:
                continue
            loss, gnorm = self.optimizer_step(pending, total_steps, epoch)
            pending = []
            self.state.position = j + 1
            self.result.losses.append(loss)
            # The epoch's mean loss is summed in the state, so a mid-epoch resume logs the same mean.
            extra = self.state.extra
            extra["loss_sum"], extra["loss_steps"] = extra.get("loss_sum", 0.0) + loss, extra.get("loss_steps", 0) + 1
            lr = self.optimizer.param_groups[0]["lr"]
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.2f}")
            if cfg.log_every and self.state.step % cfg.log_every == 0:
                skips = {"skipped": self.step_skipped} if self.step_skipped else {}
                self.log.write(
                    kind="step", step=self.state.step, epoch=epoch, loss=loss, lr=lr,
                    grad_norm=gnorm, samples_per_s=rate, time=time.time(), **skips,
                )  # fmt: skip
            if win is windows[-1]:  # the epoch's last step: the epoch close-out logs, validates, saves
                continue
            if self.stopping or (cfg.max_steps and self.state.step >= cfg.max_steps):
                self.save()
                return True
            if cfg.ckpt_every and self.state.step % cfg.ckpt_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        return False

    @torch.no_grad()
    def validate(self, loader, epoch: int) -> dict:
        # The eager module, never the compiled step: the last validation batch may be partial.
        self.model.eval()
        scores, saved, skipped = ValScores(self.device), 0, 0
        for batch in loader:
            batch, n, dropped = self.readable(batch)
            skipped += dropped
            if n == 0:
                continue
            inputs = batch_inputs(batch, self.device)
            with self.autocast():
                logits = self.model.predict(inputs["image"], inputs["depth"])
            pred = to_u8(logits)
            gt = batch["mask"].to(self.device)
            scores.update(pred, gt)
            if self.rt.main and saved < self.cfg.val_images:
                k = min(self.cfg.val_images - saved, pred.shape[0])
                self.log.save_images(epoch, batch["id"][:k], batch["image"][:k], batch["mask"][:k], pred[:k])
                saved += k
        self.model.train()
        result = ValScores.result(self.rt.all_reduce(scores.packed()))
        if self.cfg.data.on_error == "skip":  # only then can samples be missing from the scores
            skipped = int(self.rt.all_reduce(torch.tensor([float(skipped)], device=self.device)).item())
            if skipped:
                result["skipped"] = skipped
        return result


def check_run_dir(cfg: Config) -> list[Path]:
    """Refuse to start a fresh run over another run's checkpoints unless overwrite=true; returns
    what overwrite will delete."""
    if cfg.resume and (cfg.run_dir / "checkpoints" / "latest.json").is_file():
        return []
    old = ckpt.existing_outputs(cfg.run_dir)
    if old and not cfg.overwrite:
        names = ", ".join(str(p.relative_to(cfg.run_dir)) for p in old)
        why = "resume=true but checkpoints/latest.json is missing" if cfg.resume else "resume=false"
        raise ckpt.RunDirInUseError(
            f"run_dir {cfg.run_dir} already holds checkpoints ({names}) and {why}: refusing to start a new run "
            f"over them. Pass resume=true to continue that run, choose another run_dir, or set overwrite=true "
            f"to delete them and start fresh"
        )
    return old


def check_mid_epoch_resume(state: ckpt.TrainState, saved: dict, cfg: Config, world: int) -> None:
    """The position in an epoch counts micro-batches per rank: it only means the same samples
    with the same batch size, accumulation and world size. At an epoch boundary anything goes."""
    if state.position == 0:
        return
    was = {"batch_size": saved.get("batch_size"), "accum_steps": saved.get("accum_steps"),
           "world size": state.extra.get("world", 1)}  # fmt: skip
    now = {"batch_size": cfg.batch_size, "accum_steps": cfg.accum_steps, "world size": world}
    changed = {k: (was[k], now[k]) for k in now if was[k] != now[k]}
    if changed:
        raise CheckpointError(
            f"cannot resume mid-epoch (epoch {state.epoch}, micro-batch {state.position}) with changed "
            f"{changed} (saved, now): the position would point at other samples. Resume with the saved "
            f"settings, or from a checkpoint at an epoch end"
        )


def save_initial(model: torch.nn.Module, cfg: Config, rt: runtime.Runtime, depth) -> None:
    """A fresh run's starting weights as run_dir/initial.safetensors (rank 0; the writer of
    best.safetensors, under a temporary name renamed into place): step 0 of a run from random
    init, or the init_from model a fine-tune starts from. A resume never rewrites it."""
    path, error = cfg.run_dir / "initial.safetensors", None
    if rt.main:
        tmp = cfg.run_dir / f".initial.safetensors.tmp-{os.getpid()}"
        try:
            ckpt.save_weights(model, tmp, depth)
            os.replace(tmp, path)
        except ckpt.WRITE_ERRORS as err:
            tmp.unlink(missing_ok=True)
            error = f"cannot write {path}: {err}; free space or fix the disk and rerun"
    error = rt.broadcast(error)  # every rank stops on rank 0's failed write
    if error:
        raise ckpt.CheckpointWriteError(error)


def _clear_run_dir(run_dir: Path, old: list[Path]) -> None:
    """overwrite=true: the previous run's checkpoints, best model and sample images go."""
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "samples", ignore_errors=True)


def _setup(cfg: Config, rt: runtime.Runtime, model: torch.nn.Module | None) -> Trainer:
    old = check_run_dir(cfg)  # before any work: a refused run costs nothing
    if cfg.log.tensorboard:
        tensorboard_writer()  # not installed: fail now, on every rank
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)  # same initial weights on every rank
    model = (model or build_model(cfg)).to(rt.device)
    use_cl = cfg.channels_last and rt.device.type == "cuda"
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    seed_all(cfg.seed + rt.rank)  # rank-specific dropout / drop-path noise
    prec = runtime.precision(rt.device, cfg.precision)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=prec.scaler)
    optimizer = build_optimizer(model, cfg.optim, rt.device)
    model_config = asdict(cfg.model)
    ckpt_dir = cfg.run_dir / "checkpoints"
    state, resumed = ckpt.TrainState(), None
    if cfg.resume and (ckpt_dir / "latest.json").is_file():
        state, saved = ckpt.load_checkpoint(ckpt_dir, model, optimizer, scaler, model_config=model_config, rank=rt.rank)
        check_mid_epoch_resume(state, saved, cfg, rt.world)
        resumed = state.step
    elif cfg.init_from:
        init_weights(model, cfg.init_from, model_config)
    if old and rt.main:  # after init_from, which may name this very run directory
        _clear_run_dir(cfg.run_dir, old)
    rt.barrier()
    train_model = model
    if rt.distributed:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        # broadcast_buffers=False: PDFNet's only buffers are the Swin blocks' constant
        # relative_position_index tables (no BatchNorm statistics); nothing to re-send each forward.
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=cfg.ddp_find_unused, broadcast_buffers=False
        )
    if cfg.compile:  # static shapes: one compile; the train loader drops the last partial batch
        train_model = torch.compile(train_model, dynamic=False)
    log = RunLog(cfg.run_dir, cfg, rt.main, resumed)
    # The depth settings every model file records (eval / predict feed the same maps); read on
    # every rank, so a store problem stops them all alike.
    depth = provenance.trained_depth(cfg.data.train_stores, model_config, cfg.init_from)
    if resumed is None:
        save_initial(model, cfg, rt, depth)
    return Trainer(
        cfg,
        rt,
        model,
        train_model,
        optimizer,
        scaler,
        prec,
        state,
        log,
        model_config,
        depth,
        TrainResult(state=state, is_main=rt.main),
    )


def train(cfg: Config, model: torch.nn.Module | None = None) -> TrainResult:
    """Run (or resume) training as configured; `model` overrides building cfg.model (tests)."""
    rt = runtime.init(cfg.device)
    try:
        with preempt.catch_stop_signals() as stop:
            start_workers_early(cfg.data)  # the worker server imports while the model is built
            trainer = _setup(cfg, rt, model)
            trainer.stop = stop
            try:
                return _train(trainer)
            finally:
                trainer.log.close()
    finally:
        rt.shutdown()


def _train(t: Trainer) -> TrainResult:
    cfg, rt = t.cfg, t.rt
    data = cfg.data
    train_ds = StoreDataset(
        data.train_stores,
        train=True,
        seed=cfg.seed,
        augment=data.augment,
        depth_inputs=data.depth_inputs,
        allow_incomplete=data.allow_incomplete,
        flag_unreadable=True,  # the loop applies data.on_error in the main process
    )
    sampler = EpochSampler(len(train_ds), shuffle=True, seed=cfg.seed, rank=rt.rank, world=rt.world)
    pin = rt.device.type == "cuda"
    loader = make_loader(train_ds, sampler, data, cfg.batch_size, pin_memory=pin, drop_last=cfg.compile)
    val_loader = None
    if cfg.val_every and data.val_stores:
        val_ds = StoreDataset(
            data.val_stores, train=False, allow_incomplete=data.allow_incomplete, flag_unreadable=True
        )
        val_loader = make_loader(
            val_ds,
            ShardSampler(len(val_ds), rt.rank, rt.world),
            dataclasses.replace(data),
            cfg.batch_size,
            pin_memory=pin,
        )
    total_steps = cfg.epochs * len(t.epoch_windows(sampler))
    if cfg.compile and not total_steps:
        raise UserError(
            f"compile=true drops each epoch's last partial batch, and {sampler.per_rank()} samples per process "
            f"are fewer than batch_size {cfg.batch_size}: nothing to train (lower batch_size or set compile=false)"
        )
    # A run that stopped early stays stopped when resumed (same early_stop).
    t.result.early_stopped = bool(cfg.early_stop and t.state.stale >= cfg.early_stop)
    for epoch in range(t.state.epoch, 0 if t.result.early_stopped else cfg.epochs):
        t0 = time.time()
        if t.run_epoch(epoch, loader, sampler, total_steps):
            break
        t.state.epoch, t.state.position = epoch + 1, 0
        record = {"kind": "epoch", "epoch": epoch, "step": t.state.step, "seconds": time.time() - t0}
        loss_sum, steps = t.state.extra.pop("loss_sum", 0.0), t.state.extra.pop("loss_steps", 0)
        if steps:
            record["train_loss"] = loss_sum / steps
        skipped = t.state.extra.pop("skipped", 0)  # counted per epoch; the saved state starts the next at 0
        if skipped:
            record["skipped"] = skipped
        scores = None
        if val_loader is not None and (epoch + 1) % cfg.val_every == 0:
            scores = t.validate(val_loader, epoch)
            t.result.val.append(scores)
            record.update(val_max_f=scores["max_f"], val_mae=scores["mae"])
            if "skipped" in scores:
                record["val_skipped"] = scores["skipped"]
            if scores["max_f"] > t.state.best_max_f:
                t.state.best_max_f, t.state.best_mae, t.state.best_step = scores["max_f"], scores["mae"], t.state.step
                t.state.stale = 0
            else:
                scores, t.state.stale = None, t.state.stale + 1  # not a new best
        t.log.write(**record)
        path = t.save()
        if scores is not None:
            t.mark_best(path, {"max_f": scores["max_f"], "mae": scores["mae"], "step": t.state.step})
        t.log.close_epoch(record, cfg.epochs, best=scores is not None)
        if cfg.max_steps and t.state.step >= cfg.max_steps:
            break
        if cfg.early_stop and t.state.stale >= cfg.early_stop:
            t.result.early_stopped = True
            t.log.note(
                f"early stop after epoch {epoch + 1}/{cfg.epochs}: {t.state.stale} validations without a better "
                f"val F_max (early_stop={cfg.early_stop}; best {t.state.best_max_f:.4f} at step {t.state.best_step})"
            )
            break
        if t.agree_to_stop():  # a signal during the close-out: its checkpoint was just written
            break
    finished = (
        t.state.epoch >= cfg.epochs or (cfg.max_steps and t.state.step >= cfg.max_steps) or t.result.early_stopped
    )
    if t.stopping and not finished:  # a signal during the very last step: nothing left to resume
        t.result.stopped = t.stop.name or "a stop signal on another rank"
    return t.result
