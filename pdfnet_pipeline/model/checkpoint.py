"""Model checkpoints: this project's safetensors files, Hub-style folders, the reference `.pth` converter.

A project checkpoint is a safetensors file of the model's state dict with the `PDFNetConfig` as
JSON in its metadata; loading one never unpickles. A model trained here also records the depth
input it was trained on (`DepthSettings`: DAM v2 arch / weights / seed, DAM input size and aspect,
the store side = the PDFNet input size) as the `depth` and `size` metadata entries, so predict
computes the same kind of depth map by default; a file without them (older files, converted
releases) reads as `DepthSettings()`, the paper's settings. A Hub-style folder (`PDFNet.save_pretrained`)
holds that very file as `model.safetensors` beside a `config.json`; `load_model` takes a file, such
a folder, or a Hugging Face Hub id (downloaded by huggingface_hub into its cache).

`convert_reference` maps a checkpoint in the reference's key layout (e.g. the released
`PDFNet_Best.pth`, loaded with `weights_only=True`) strictly onto this project's modules: any
missing, unexpected or mis-shaped key is an error.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.model.pdfnet import PRESETS, PDFNet, PDFNetConfig

FORMAT = "pdfnet-pipeline-model"
WEIGHTS_NAME = "model.safetensors"  # the Hub's names, so the folder also reads as a Hub repo
CONFIG_NAME = "config.json"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class CheckpointError(UserError, ValueError):
    """A model file or training checkpoint that cannot be used (missing, another architecture or
    format, mismatched keys); the message names every offending file or key."""


@dataclasses.dataclass(frozen=True)
class DepthSettings:
    """The depth input a model was trained on, i.e. what predict must compute for it.

    `arch`, `weights` (as the store records them: "random", a hub id or a local folder),
    `revision` and `seed` (random weights: `load_dam`'s seed) name the DAM v2 model of the store's
    `map`; `input_size` its input side, `aspect` and `posemb` its input mode; `size` the store side,
    which is the PDFNet input size it was trained at; `pdfnet_random_init` whether the training
    started from random weights (None: unknown). The defaults are the paper's settings: what a file
    without recorded settings gets."""

    arch: str = "large"
    weights: str = "hub"
    revision: str | None = None
    seed: int = 0
    input_size: int = 518
    aspect: str = "square"
    posemb: str = "official"
    map: str = "large"
    size: int = 1024
    pdfnet_random_init: bool | None = None  # trained from random weights (no pretrained backbone, no init_from)

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata entries: `depth` (JSON, all but size) and `size`."""
        depth = {k: v for k, v in dataclasses.asdict(self).items() if k != "size"}
        return {"depth": json.dumps(depth, sort_keys=True), "size": str(self.size)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> DepthSettings | None:
        """None when `meta` records no depth settings; unknown keys are ignored (newer files)."""
        if "depth" not in meta:
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        raw = {k: v for k, v in json.loads(meta["depth"]).items() if k in fields}
        if "size" in meta:
            raw["size"] = int(meta["size"])
        return cls(**raw)


def save_model(model: PDFNet, path: str | Path, depth: DepthSettings | None = None) -> None:
    """Write the model's weights and config (JSON metadata) as safetensors, with the depth settings
    it was trained on (`depth`, else the model's `depth_settings` attribute, which `load_model`
    sets from the file it read; none: nothing recorded)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _save(state, model.cfg, path, depth or getattr(model, "depth_settings", None))


def _save(
    state: dict[str, torch.Tensor], cfg: PDFNetConfig, path: str | Path, depth: DepthSettings | None = None
) -> None:
    meta = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(cfg))}
    if depth is not None:
        meta.update(depth.to_metadata())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def save_pretrained(model: PDFNet, folder: str | Path, depth: DepthSettings | None = None) -> Path:
    """Hub layout: the project checkpoint as `model.safetensors` and its config as `config.json`
    (with the recorded depth settings as `depth`, when there are any)."""
    folder = Path(folder)
    depth = depth or getattr(model, "depth_settings", None)
    save_model(model, folder / WEIGHTS_NAME, depth)
    config = {"format": FORMAT, "cfg": dataclasses.asdict(model.cfg)}
    if depth is not None:
        config["depth"] = dataclasses.asdict(depth)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def resolve_checkpoint(source: str | Path, revision: str | None = None, **hub_kwargs) -> Path:
    """The weights file of a project .safetensors file, a `save_pretrained` folder or a Hub id.

    Anything that is neither an existing file nor folder is taken as a Hub id unless it looks like a
    path (a checkpoint suffix, or starting with `.`, `/` or `~`): a mistyped path is not sent to the
    Hub. `hub_kwargs` go to `huggingface_hub.snapshot_download` (cache_dir, token, local_files_only).
    """
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        return _folder_weights(path)
    text = str(source)
    if path.suffix in CHECKPOINT_SUFFIXES or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{text}: no such checkpoint file or folder")
    return _folder_weights(_download(text, revision, hub_kwargs))


def _download(repo_id: str, revision: str | None, hub_kwargs: dict) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    from pdfnet_pipeline.hub import unreachable

    # An unreachable Hub: the cached snapshot or an error at once (not after download retries).
    reason = None if hub_kwargs.get("local_files_only") else unreachable()
    if reason:
        hub_kwargs = {**hub_kwargs, "local_files_only": True}
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], **hub_kwargs)
    except (OSError, EntryNotFoundError, HFValidationError) as err:  # offline, unknown repo, bad id, network
        first = (str(err).strip().splitlines() or [""])[0]
        why = f"not in the Hugging Face cache, and {reason}" if reason else f"{type(err).__name__}: {first}"
        raise CheckpointError(
            f"{repo_id}: no such local checkpoint file or folder, and no Hugging Face Hub model of that id"
            f" could be fetched ({why})"
        ) from None
    return Path(folder)


def _folder_weights(folder: Path) -> Path:
    """`model.safetensors` of a Hub-style folder, after checking `config.json` agrees with it."""
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    if not weights.is_file() or not config.is_file():
        raise CheckpointError(f"{folder}: not a save_pretrained folder (needs {WEIGHTS_NAME} and {CONFIG_NAME})")
    doc = json.loads(config.read_text())
    stated, actual = doc.get("cfg", {}), dataclasses.asdict(read_config(weights))
    differ = sorted(k for k in actual if k in stated and stated[k] != actual[k])
    depth = read_depth(weights)
    if "depth" in doc and doc["depth"] != (depth and dataclasses.asdict(depth)):
        differ.append("depth")
    if differ:  # the weights' metadata builds the model: a hand-edited config.json must not mislead
        raise CheckpointError(f"{config} disagrees with {WEIGHTS_NAME} on {', '.join(differ)}")
    return weights


def read_config(path: str | Path) -> PDFNetConfig:
    fields = {f.name for f in dataclasses.fields(PDFNetConfig)}
    raw = json.loads(_metadata(path)["config"])
    return PDFNetConfig(**{k: v for k, v in raw.items() if k in fields})


def read_depth(path: str | Path) -> DepthSettings | None:
    """The depth settings a project model file records (None: an older file or a converted
    release, which `DepthSettings()` describes)."""
    return DepthSettings.from_metadata(_metadata(path))


def _metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as err:  # e.g. a reference .pth: never unpickled, named instead
        raise CheckpointError(
            f"{path}: not a safetensors file ({err}); convert a reference .pth with `pdfnet-pipeline model convert`"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (metadata format {meta.get('format')!r})")
    return meta


def load_model(
    source: str | Path, map_location: str | torch.device = "cpu", revision: str | None = None, **hub_kwargs
) -> PDFNet:
    """Build the model from the checkpoint's config and load its weights strictly (no pickle).

    `source`: a project .safetensors file, a `save_pretrained` folder or a Hub id (`resolve_checkpoint`).
    The file's recorded depth settings (`read_depth`, or None) become `model.depth_settings`.
    """
    path = resolve_checkpoint(source, revision, **hub_kwargs)
    cfg = dataclasses.replace(read_config(path), backbone_weights="random")
    depth = read_depth(path)
    with torch.device("meta"):
        model = PDFNet(cfg)
    state = {}
    with safe_open(str(path), framework="pt", device=str(map_location)) as f:
        for key in f.keys():
            state[key] = f.get_tensor(key)
    _check(state, model, str(path))
    model.load_state_dict(state, strict=True, assign=True)
    _refresh_buffers(model, torch.device(map_location))
    model.depth_settings = depth
    return model.eval()


def _refresh_buffers(model: PDFNet, device: torch.device) -> None:
    """Non-persistent Swin buffers (relative position index) were created on `meta`: rebuild them."""
    for m in model.modules():
        if hasattr(m, "relative_position_index") and hasattr(m, "_init_buffers"):
            m.relative_position_index = torch.empty_like(m.relative_position_index, device=device)
            m._init_buffers()


def _check(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str, shown: int = 8) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:  # a whole other architecture would name hundreds: the first few say enough
                more = f", ... {len(items) - shown} more" if len(items) > shown else ""
                parts.append(f"{title} ({len(items)}): " + ", ".join(items[:shown]) + more)
        raise CheckpointError("; ".join(parts))


# reference key -> project key; the first matching rule wins, rules are anchored regexes.
_RULES: list[tuple[str, str]] = [
    (r"encoder\.patch_embed\.(.+)", r"encoder.swin.patch_embed.\1"),
    (r"encoder\.absolute_pos_embed", r"encoder.absolute_pos_embed"),
    (r"encoder\.norm(\d)\.(weight|bias)", r"encoder.norms.\1.\2"),
    (r"encoder\.layers\.(\d+)\.blocks\.(.+)", r"encoder.swin.layers.\1.blocks.\2"),
    # the original Swin downsamples at the end of stage i, timm at the start of stage i + 1
    (r"encoder\.layers\.(\d+)\.downsample\.(.+)", lambda m: f"encoder.swin.layers.{int(m[1]) + 1}.downsample.{m[2]}"),
    (r"(channel_mix[1-4]?|Glob)\.(.+)", r"adapters.\1.\2"),
    (r"(decoder|depth_decoder)\.(.+)", r"\1.\2"),
]
_SOBEL_X = torch.tensor([[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]])
# Buffers the reference stores that carry no learned weight: checked against their fixed values.
_FIXED = {
    r"IntegrityPriorLoss\.sobel_x\.weight": lambda: _SOBEL_X,
    r"IntegrityPriorLoss\.sobel_y\.weight": lambda: _SOBEL_X.transpose(-1, -2),
}


def map_reference_key(key: str) -> str | None:
    for pattern, repl in _RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def _unwrap(obj) -> dict[str, torch.Tensor]:
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state dict, got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _relative_position_index(window: int) -> torch.Tensor:
    """The Swin relative position index (fixed buffer) for a square window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def map_reference_state(ref: dict[str, torch.Tensor], window: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Reference-layout state dict -> (project state dict, problems). Fixed buffers are verified
    and dropped; keys without a rule are reported as problems."""
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    rpi = _relative_position_index(window)
    for key, value in ref.items():
        if key.endswith("attn.relative_position_index"):
            if value.shape != rpi.shape or not torch.equal(value.long(), rpi):
                problems.append(f"{key}: not the window-{window} relative position index")
            continue
        fixed = next((f for p, f in _FIXED.items() if re.fullmatch(p, key)), None)
        if fixed is not None:
            if value.shape != fixed().shape or not torch.equal(value.float(), fixed()):
                problems.append(f"{key}: not the fixed Sobel kernel")
            continue
        target = map_reference_key(key)
        if target is None:
            problems.append(f"{key}: no mapping rule")
            continue
        out[target] = value
    return out, problems


def reference_state(pth: str | Path, cfg: PDFNetConfig) -> dict[str, torch.Tensor]:
    """A checkpoint in the reference's key layout (loaded with `weights_only=True`), mapped onto the
    project's modules of `cfg`; raises `CheckpointError` naming the missing, unexpected (including
    unmapped) and mis-shaped keys."""
    cfg = dataclasses.replace(cfg, backbone_weights="random")
    raw = _unwrap(torch.load(Path(pth), map_location="cpu", weights_only=True))
    preset = _preset_of(raw)
    if preset is not None and preset != cfg.preset:  # the usual cause, said first and in one phrase
        raise CheckpointError(f"{pth} holds the {preset} preset (by its Swin width), not the {cfg.preset} preset")
    with torch.device("meta"):
        model = PDFNet(cfg)
    state, problems = map_reference_state(raw, model.encoder.spec.window_size)
    try:
        _check(state, model, str(pth))
    except CheckpointError as err:
        problems.insert(0, str(err))
    if problems:
        shown = 8
        more = [f"... {len(problems) - shown} more"] if len(problems) > shown else []
        raise CheckpointError("; ".join(problems[:shown] + more))
    return {k: v.contiguous() for k, v in state.items()}


def _preset_of(ref: dict[str, torch.Tensor]) -> str | None:
    """The preset whose Swin width matches a reference-layout state dict (None: no such key or width)."""
    embed = ref.get("encoder.patch_embed.proj.weight")
    if embed is None:
        return None
    return next((name for name, (spec, _) in PRESETS.items() if spec.embed_dim == embed.shape[0]), None)


def convert_reference(pth: str | Path, out: str | Path, cfg: PDFNetConfig | None = None) -> dict[str, int]:
    """Convert a reference-layout checkpoint to this project's safetensors file (`reference_state`,
    strict). Returns {"tensors", "parameters"}."""
    cfg = dataclasses.replace(cfg or PDFNetConfig(), backbone_weights="random")
    state = reference_state(pth, cfg)
    _save(state, cfg, out)
    return {"tensors": len(state), "parameters": sum(v.numel() for v in state.values())}
