"""Depth Anything V2 through `transformers.DepthAnythingForDepthEstimation`: architectures, weights,
preprocessing and the batched prediction used by the depth stage.

Why our own preprocessing: transformers' image processor keeps the aspect ratio, antialiases and
its bicubic post-processing overshoots below 0; the paper resizes to a 518 square and the output
bilinearly (align_corners=True) to 1024, then min-max normalises each map.

Position embeddings (documented difference): at 518 input the DINOv2 grid is the trained 37x37, so
no interpolation happens. At other sides (1036 for the supervision map) transformers interpolates
the 37x37 embeddings bicubically to `size=(74, 74)`, whereas the official DINOv2 code interpolates
with `scale_factor=(74 + 0.1) / 37` (its `interpolate_offset`), i.e. samples at slightly different
positions. Measured (tests/test_depth_posemb.py re-types the official formula): identical at 518;
at 1036 a mean relative difference of 2.5e-3 in the raw map (small architecture, random weights),
4.3e-3 max after min-max. We keep transformers' behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pdfnet_pipeline.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 14

HUB_IDS = {
    "small": "depth-anything/Depth-Anything-V2-Small-hf",
    "base": "depth-anything/Depth-Anything-V2-Base-hf",
    "large": "depth-anything/Depth-Anything-V2-Large-hf",
}


@dataclass(frozen=True)
class DamArch:
    """The numbers that distinguish the V2 sizes (transformers ships no V2 presets)."""

    hidden: int
    layers: int
    heads: int
    out_indices: tuple[int, ...]
    neck: tuple[int, ...]
    fusion: int
    head_hidden: int = 32


ARCHS: dict[str, DamArch] = {
    "small": DamArch(384, 12, 6, (3, 6, 9, 12), (48, 96, 192, 384), 64),
    "base": DamArch(768, 12, 12, (3, 6, 9, 12), (96, 192, 384, 768), 128),
    "large": DamArch(1024, 24, 16, (5, 12, 18, 24), (256, 512, 1024, 1024), 256),
    # Same code path, a few layers and small width: CPU tests and the smoke profile.
    "tiny": DamArch(32, 4, 2, (1, 2, 3, 4), (8, 16, 32, 32), 16, head_hidden=8),
}


class DamWeightsError(UserError, RuntimeError):
    """DAM v2 weights that cannot be found or do not match the requested architecture."""


def dam_config(arch: str):
    """A `DepthAnythingConfig` for V2 `arch` (small/base/large/tiny), built from code."""
    from transformers import DepthAnythingConfig, Dinov2Config

    if arch not in ARCHS:
        raise ValueError(f"unknown DAM v2 architecture {arch!r} (known: {', '.join(ARCHS)})")
    a = ARCHS[arch]
    backbone = Dinov2Config(
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        image_size=518,
        patch_size=PATCH,
        out_indices=list(a.out_indices),
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=PATCH,
        reassemble_hidden_size=a.hidden,
        neck_hidden_sizes=list(a.neck),
        fusion_hidden_size=a.fusion,
        head_hidden_size=a.head_hidden,
        depth_estimation_type="relative",
        max_depth=1,
    )


def _offline_message(source: str, arch: str, err: Exception) -> str:
    return (
        f"cannot load DAM v2 {arch} weights {source!r}: {err}\n"
        f"Provide them one of these ways: (1) on a machine with internet run "
        f"`huggingface-cli download {HUB_IDS.get(arch, source)} --local-dir DIR`, copy DIR here and "
        f"set the model's weights to DIR (e.g. --set models.{arch}.weights=DIR); (2) fill the "
        f"Hugging Face cache (HF_HOME) with that repository; (3) for a test run without real "
        f'depth use weights = "random".'
    )


def _check_arch(model, arch: str, source: str) -> None:
    want = ARCHS[arch]
    bb = model.config.backbone_config
    got = (bb.hidden_size, bb.num_hidden_layers, tuple(model.config.neck_hidden_sizes))
    if got != (want.hidden, want.layers, want.neck):
        raise DamWeightsError(
            f"weights {source!r} are not DAM v2 {arch}: hidden/layers/neck {got} "
            f"!= {(want.hidden, want.layers, want.neck)}"
        )


def load_dam(
    arch: str,
    weights: str,
    *,
    revision: str | None = None,
    seed: int = 0,
    allow_download: bool = True,
):
    """(model in eval mode, provenance dict). `weights`: "random" (seeded), "hub" (the official
    id for `arch`), a Hugging Face hub id, or a local directory saved with `save_pretrained`."""
    from transformers import DepthAnythingForDepthEstimation

    if weights == "random":
        config = dam_config(arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # same weights on every rank and every rerun (resume)
            model = DepthAnythingForDepthEstimation(config)
        prov = {"arch": arch, "weights": "random", "seed": seed}
        return _ready(model), prov
    source = HUB_IDS.get(arch, "") if weights == "hub" else weights
    if not source:
        raise DamWeightsError(f"no official hub id for architecture {arch!r}; give a directory")
    local = Path(source).expanduser()
    kwargs: dict = {}  # the DINOv2 backbone picks torch SDPA by itself (the wrapper refuses the flag)
    try:
        if local.is_dir():
            model = DepthAnythingForDepthEstimation.from_pretrained(local, local_files_only=True, **kwargs)
            prov = {"arch": arch, "weights": str(local.resolve()), "revision": None}
        else:
            model = _from_hub(source, revision, allow_download, kwargs)
            prov = {
                "arch": arch,
                "weights": source,
                "revision": getattr(model.config, "_commit_hash", None) or revision,
            }
    except OSError as err:
        raise DamWeightsError(_offline_message(source, arch, err)) from err
    _check_arch(model, arch, source)
    return _ready(model), prov


def _from_hub(source: str, revision: str | None, allow_download: bool, kwargs: dict):
    from transformers import DepthAnythingForDepthEstimation

    try:  # cache first: no network round trip (and its retries) when the files are there
        return DepthAnythingForDepthEstimation.from_pretrained(
            source, revision=revision, local_files_only=True, **kwargs
        )
    except OSError:
        if not allow_download:
            raise
    return DepthAnythingForDepthEstimation.from_pretrained(source, revision=revision, **kwargs)


def _ready(model):
    model.eval()
    model.requires_grad_(False)
    return model


def input_side(target: int, multiple: int = PATCH) -> int:
    """The network input side for a square `target`: the official `infer_image` rule
    (keep aspect, lower bound, multiple of 14) applied to a square, i.e. 14 * ceil(target / 14):
    518 -> 518, 1024 -> 1036."""
    return multiple * math.ceil(target / multiple)


def to_model_input(image: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 RGB (B,3,H,W) or (3,H,W) -> float32 ImageNet-normalised (.., 3, side, side):
    [0,1], bicubic (a=-0.75, align_corners=False, no antialias) to a square, then mean/std."""
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    x = x.to(torch.float32) / 255.0
    x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x[0] if squeeze else x


def raw_depth(model, pixels: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Relative inverse depth (B, h, w) at the input resolution, float32. The DINOv2 backbone
    runs under autocast(`amp_dtype`); the DPT neck and head run in float32, as in the spec: they
    produce the full-resolution map whose fine detail the 8-bit bf16 mantissa would quantise."""
    device_type = pixels.device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        feats = model.backbone.forward_with_filtered_kwargs(pixels).feature_maps
    feats = [f.float() for f in feats]
    ph, pw = pixels.shape[-2] // PATCH, pixels.shape[-1] // PATCH
    with torch.autocast(device_type, enabled=False):
        hidden = model.neck(feats, ph, pw)
        return model.head(hidden, ph, pw).float()


def minmax01(depth: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0,1] over all but the batch dim; a constant map becomes 0."""
    flat = depth.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (depth.dim() - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (depth.dim() - 1))
    return (depth - lo) / (hi - lo).clamp_min(torch.finfo(depth.dtype).tiny)


def predict(model, pixels: torch.Tensor, out_size: int, amp_dtype: torch.dtype | None = None):
    """(maps (B, out, out) float32 in [0,1], finite (B,) bool): raw depth, bilinear
    (align_corners=True) to `out_size`, per-map min-max."""
    depth = raw_depth(model, pixels, amp_dtype)
    finite = torch.isfinite(depth).flatten(1).all(dim=1)
    depth = F.interpolate(depth[:, None], size=(out_size, out_size), mode="bilinear", align_corners=True)
    return minmax01(depth[:, 0]), finite
