"""Where a fine-tune starts (`init_from`): the weights loaded into the run's model before step one.

Accepted, in this order:
- a released reference checkpoint (`.pth` / `.pt` / `.bin` / `.ckpt`, e.g. `PDFNet_Best.pth`):
  loaded with `weights_only=True` (no pickled code runs) and mapped strictly onto the run's
  architecture by the converter, in memory (`pdfnet-pipeline model convert` writes the same file);
- a project model file (`.safetensors`, e.g. a run's best.safetensors or a converted release);
- a `save_pretrained` folder (model.safetensors + config.json);
- a run directory, its checkpoints/ directory or one step_* directory: that run's latest model;
- a Hugging Face Hub id of a `save_pretrained` upload.

The file's architecture must be the run's (`model.*` settings): a mismatch names the differing
settings, or for a reference checkpoint the keys that do not fit.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict
from pathlib import Path

import torch

from pdfnet_pipeline.model.checkpoint import CHECKPOINT_SUFFIXES, CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from pdfnet_pipeline.train import checkpoint as ckpt

REFERENCE_SUFFIXES = tuple(s for s in CHECKPOINT_SUFFIXES if s != ".safetensors")


def init_weights(model: torch.nn.Module, source: str, model_config: dict) -> str:
    """Load `source` into `model` (strict); returns what was loaded (a file, or a Hub id's file)."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in REFERENCE_SUFFIXES:
        return _load_reference(model, path, model_config)
    weights = _project_file(source, path)
    from pdfnet_pipeline.model.checkpoint import read_config

    try:
        saved = asdict(read_config(weights))
    except CheckpointError as err:
        raise CheckpointError(
            f"init_from {source}: {err} (a released reference .pth is also accepted as init_from)"
        ) from err
    diff = ckpt.arch_diff(saved, model_config)
    if diff:
        raise CheckpointError(
            f"init_from {weights}: its architecture differs from this run's model config "
            f"(key: (checkpoint, this run)): {diff}; set model.* to match or pick another checkpoint"
        )
    ckpt.load_weights(model, weights)
    return str(weights)


def _project_file(source: str, path: Path) -> Path:
    """The project model file behind a file, a folder (save_pretrained or a run) or a Hub id."""
    from pdfnet_pipeline.model.checkpoint import resolve_checkpoint

    if path.is_file():
        return path
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file():
            return resolve_checkpoint(path)  # save_pretrained: config.json checked against the weights
        return ckpt.resolve(path) / "model.safetensors"
    try:
        return resolve_checkpoint(source)  # a Hub id (a path-like name is refused there, not sent)
    except CheckpointError as err:
        raise CheckpointError(f"init_from {err}") from None


def _load_reference(model: torch.nn.Module, path: Path, model_config: dict) -> str:
    from pdfnet_pipeline.model.checkpoint import reference_state
    from pdfnet_pipeline.model.pdfnet import PDFNetConfig

    cfg = PDFNetConfig(**{k: v for k, v in model_config.items() if k in PDFNetConfig.__dataclass_fields__})
    try:
        state = reference_state(path, cfg)
    except CheckpointError as err:
        raise CheckpointError(
            f"init_from {path}: a reference checkpoint that does not fit this run's model "
            f"(preset {cfg.preset}, variant {cfg.variant}; set model.preset / model.variant to the checkpoint's): {err}"
        ) from err
    except (pickle.UnpicklingError, EOFError, RuntimeError) as err:  # code in the pickle, a truncated file
        raise CheckpointError(f"init_from {path}: not a reference checkpoint torch can read safely ({err})") from None
    ckpt.unwrap(model).load_state_dict(state, strict=True)
    return str(path)
