"""Full training state on disk: nothing to unpickle, written atomically, resumable to the bit.

One directory per checkpoint, `checkpoints/step_00001234/`:
  model.safetensors      weights (model/checkpoint.save_model when the model provides it, so
                         eval loads it as is)
  optimizer.safetensors  every optimizer state tensor, keyed `state.<param index>.<name>`
  rng.safetensors        torch CPU / CUDA generator states
  state.json             step, epoch, position in the epoch, param groups, GradScaler, numpy and
                         python RNG states, best scores, resolved config, model config
The directory is written under a temporary name and renamed into place (atomic on POSIX), and
`latest.json` / `best.json` are pointers replaced with os.replace: a crash at any moment leaves the
previous checkpoint and pointers intact. A failed write (disk full, I/O error) removes the partial
directory and raises CheckpointWriteError naming the path; the previous checkpoint stays latest. Old directories beyond `keep` are pruned; the best one
is kept, and a hard link `best.safetensors` (model only) sits in the run directory for eval.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.model.checkpoint import CheckpointError  # one error type for every checkpoint

STATE_VERSION = 1
# Model-config keys that do not change the architecture (the weights fit either way).
NON_ARCH_KEYS = frozenset(
    {"backbone_weights", "drop_path", "patch_grad", "fused_window_attn", "materialize_attention", "grad_checkpoint"}
)


class RunDirInUseError(UserError, FileExistsError):
    """A fresh run (resume=false) aimed at a run directory that already holds checkpoints."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, I/O error); the previous checkpoint is intact."""


# What a failed write raises: OSError from Python's own I/O, SafetensorError from safetensors'
# (measured: a write over the file-size limit gives "Error while serializing: I/O error: File too large").
WRITE_ERRORS = (OSError, SafetensorError)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    position: int = 0  # micro-batches of this epoch already consumed (per rank)
    best_max_f: float = -1.0
    best_mae: float = float("inf")
    best_step: int = -1
    stale: int = 0  # validations in a row without a new best (early_stop)
    extra: dict[str, Any] = field(default_factory=dict)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def save_weights(model: torch.nn.Module, path: Path, depth=None) -> None:
    """The model file (best.safetensors, a checkpoint's model.safetensors); `depth`: the
    `model.checkpoint.DepthSettings` the model was trained on (`provenance.trained_depth`)."""
    model = unwrap(model)
    try:
        from pdfnet_pipeline.model.checkpoint import save_model
    except ModuleNotFoundError:
        save_model = None
    if save_model is not None and hasattr(model, "cfg"):
        save_model(model, path, depth)
    else:  # any other module (tests): plain state dict
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    unwrap(model).load_state_dict(load_file(str(path)), strict=True)


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def torch_rng_state() -> dict[str, torch.Tensor]:
    """This process's torch generators (CPU and every CUDA device)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return tensors


def host_rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, rank: int = 0) -> None:
    """Restore this rank's torch generators (rank 0's when the run had fewer ranks), numpy, python."""
    prefix = f"rank{rank}." if f"rank{rank}.torch" in tensors else "rank0."
    mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    torch.set_rng_state(mine["torch"])
    cuda = [mine[k] for k in sorted((k for k in mine if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, gauss_py = meta["python"]
    random.setstate((version, tuple(state), gauss_py))


def arch_config(model_config: dict) -> dict:
    return {k: v for k, v in model_config.items() if k not in NON_ARCH_KEYS}


def arch_diff(saved: dict, ours: dict) -> dict[str, tuple]:
    """{key: (saved value, this run's value)} for every architecture key that differs."""
    saved, ours = arch_config(saved), arch_config(ours)
    return {k: (saved.get(k), ours.get(k)) for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)}


def existing_outputs(run_dir: Path) -> list[Path]:
    """What a fresh run in `run_dir` would overwrite or mix with: checkpoint directories and
    pointers, and best.safetensors."""
    ck = Path(run_dir) / "checkpoints"
    found = []
    if ck.is_dir():
        found = sorted(p for p in ck.iterdir() if p.name.startswith("step_") or p.name in ("latest.json", "best.json"))
    best = Path(run_dir) / "best.safetensors"
    return found + ([best] if best.exists() else [])


def save_checkpoint(
    ckpt_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: TrainState,
    *,
    config: dict,
    model_config: dict,
    keep: int = 3,
    rank_rng: list[dict[str, torch.Tensor]] | None = None,
    depth=None,
) -> Path:
    """Write checkpoint `step_<step>` atomically, point latest.json at it, prune old ones.

    `rank_rng`: every rank's torch_rng_state() (DDP, gathered to rank 0); default this process's.
    `depth`: the depth settings the model file records (`save_weights`).
    """
    name = f"step_{state.step:08d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp-{os.getpid()}"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_files(tmp, model, optimizer, scaler, state, config, model_config, rank_rng, depth)
    except WRITE_ERRORS as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(final, err) from err
    try:
        _publish(ckpt_dir, tmp, final, state)
    except OSError as err:
        raise _write_error(final, err) from err
    _prune(ckpt_dir, keep)
    return final


def _write_error(final: Path, err: Exception) -> CheckpointWriteError:
    latest = _pointer(final.parent, "latest") if (final.parent / "latest.json").is_file() else None
    kept = f"latest.json still points at {latest}, intact" if latest else "no earlier checkpoint"
    return CheckpointWriteError(
        f"cannot write checkpoint {final}: {err}; nothing partial was kept ({kept}): free space or fix "
        f"the disk, then rerun with resume=true"
    )


def _write_files(
    tmp: Path, model, optimizer, scaler, state: TrainState, config, model_config, rank_rng, depth=None
) -> None:
    """Every file of a checkpoint into `tmp`, fsynced."""
    save_weights(model, tmp / "model.safetensors", depth)
    opt_tensors, opt_meta = _optimizer_split(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rank_rng = rank_rng if rank_rng is not None else [torch_rng_state()]
    rng_tensors = {f"rank{r}.{k}": v.contiguous() for r, st in enumerate(rank_rng) for k, v in st.items()}
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    doc = {
        "format": "pdfnet-train-state",
        "version": STATE_VERSION,
        "train": asdict(state),
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "rng": host_rng_state(),
        "config": config,
        "model_config": model_config,
    }
    (tmp / "state.json").write_text(json.dumps(doc, indent=1))
    for f in tmp.iterdir():
        _fsync(f)


def _publish(ckpt_dir: Path, tmp: Path, final: Path, state: TrainState) -> None:
    """Rename the written `tmp` into place, then point latest.json at it."""
    name = final.name
    old = None
    if final.exists():  # same step saved again: move the old copy aside, never delete it first,
        old = ckpt_dir / f".{name}.old-{os.getpid()}"  # so a crash leaves one complete folder
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old)
    _write_json(ckpt_dir / "latest.json", {"dir": name, "step": state.step, "epoch": state.epoch})


def mark_best(ckpt_dir: Path, run_dir: Path, checkpoint: Path, scores: dict[str, float]) -> None:
    """Point best.json at `checkpoint` and hard-link its weights to run_dir/best.safetensors.
    The link (or copy) is made first: a failed copy changes neither best.json nor best.safetensors."""
    tmp = run_dir / f".best.safetensors.tmp-{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(checkpoint / "model.safetensors", tmp)
        except OSError:  # filesystems without hard links
            shutil.copyfile(checkpoint / "model.safetensors", tmp)
        _write_json(ckpt_dir / "best.json", {"dir": checkpoint.name, **scores})
        os.replace(tmp, run_dir / "best.safetensors")
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"cannot mark {checkpoint} as best ({run_dir / 'best.safetensors'}): {err}; free space or fix the "
            f"disk, then rerun with resume=true"
        ) from err


def _pointer(ckpt_dir: Path, name: str) -> str | None:
    p = ckpt_dir / f"{name}.json"
    return json.loads(p.read_text())["dir"] if p.is_file() else None


def _prune(ckpt_dir: Path, keep: int) -> None:
    dirs = sorted(d for d in ckpt_dir.iterdir() if d.is_dir() and d.name.startswith("step_"))
    protected = {_pointer(ckpt_dir, "latest"), _pointer(ckpt_dir, "best")}
    for d in dirs[: max(len(dirs) - max(keep, 1), 0)]:
        if d.name not in protected:
            shutil.rmtree(d)


def resolve(path: Path, which: str = "latest") -> Path:
    """A checkpoint directory from itself, a checkpoints/ folder or a run directory."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    for base in (path, path / "checkpoints"):
        name = _pointer(base, which)
        if name is not None:
            return base / name
    raise CheckpointError(f"no {which} checkpoint under {path}")


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam moments) its parameter's memory layout.

    Saved tensors come back contiguous; a channels-last parameter then pairs with an NCHW moment.
    The fused / foreach kernels walk memory flat, so they would update each weight with another
    element's moments, silently. `empty_like(p)` keeps p's strides."""
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    *,
    model_config: dict,
    restore_rng: bool = True,
    rank: int = 0,
) -> tuple[TrainState, dict]:
    """Restore everything saved in `path` into the given objects; returns (state, config)."""
    path = resolve(path)
    doc = json.loads((path / "state.json").read_text())
    if doc.get("format") != "pdfnet-train-state" or doc.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: not a version-{STATE_VERSION} training state")
    diff = arch_diff(doc["model_config"], model_config)
    if diff:
        raise CheckpointError(f"{path}: architecture differs from this run's model config (saved, now): {diff}")
    load_weights(model, path / "model.safetensors")
    if optimizer is not None:
        optimizer.load_state_dict(_optimizer_join(load_file(str(path / "optimizer.safetensors")), doc["optimizer"]))
        match_param_layout(optimizer)
    if scaler is not None and scaler.is_enabled() and doc["scaler"]:
        scaler.load_state_dict(doc["scaler"])
    if restore_rng:
        set_rng_state(load_file(str(path / "rng.safetensors")), doc["rng"], rank)
    return TrainState(**doc["train"]), doc["config"]
