"""Depth Anything V2 through `transformers.DepthAnythingForDepthEstimation`: architectures, weights,
preprocessing and the batched prediction used by the depth stage.

Why our own preprocessing: transformers' image processor keeps the aspect ratio, antialiases and
its bicubic post-processing overshoots below 0. Two input modes (`input_shape`): "square" (the
paper's text: a 518 square, output bilinear align_corners=True to 1024², per-map min-max; it
batches) and "keep" (the official `infer_image`, which the reference's depth notebook calls: keep
the aspect ratio, short side 518, both sides multiples of 14; output back to the image's own size,
min-max, then the reference loader's resize to 1024²: `predict_keep`).

Position embeddings (`set_posemb`): at a 518 square the DINOv2 grid is the trained 37x37 and
nothing is interpolated. At any other input (1036 for the supervision map, every "keep" shape)
transformers interpolates the 37x37 table bicubically to `size=(rows, cols)`, whereas the official
DINOv2 code (which Depth-Anything-V2 ships) uses `scale_factor=((rows + 0.1) / 37, (cols + 0.1) /
37)`, i.e. samples at slightly other positions (tests/test_depth_posemb.py measures both against
a re-typed formula). "official" is the default; "transformers" keeps the library's rule.

Float32 means IEEE float32 here (`ieee_fp32`): PyTorch runs cuDNN convolutions in TF32 by default
on Ampere and later GPUs, which would make the "float32" DPT head (and the fp32 mode) ~10-bit.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from pdfnet_pipeline.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 14
Aspect = Literal["square", "keep"]
PosEmb = Literal["official", "transformers"]

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


class HubUnreachable(OSError):
    """Weights not in the Hugging Face cache while the Hub cannot be reached (`hub.unreachable`)."""


def _offline_message(source: str, arch: str, err: Exception, hint: str | None = None) -> str:
    """How to provide the weights. `hint`: the caller's option for them as a format string (predict's
    "--dam-weights {}": one line); None: the depth stage's settings (`--set models.<map>.weights`)."""
    if hint is not None:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return (
            f"cannot load DAM v2 {arch} weights {source!r}: {first}; pass {hint.format('DIR')} for a local copy "
            f"(`huggingface-cli download {HUB_IDS.get(arch, source)} --local-dir DIR` on a machine with internet) "
            f"or {hint.format('random')} to just see the pipeline"
        )
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
    posemb: PosEmb = "official",
    weights_hint: str | None = None,
):
    """(model in eval mode, provenance dict). `weights`: "random" (seeded), "hub" (the official
    id for `arch`), a Hugging Face hub id, or a local directory saved with `save_pretrained`.
    `posemb`: the position-embedding interpolation rule (`set_posemb`). Weights neither local nor
    cached fail at once when the Hub cannot be reached (`hub.unreachable`: no download retries);
    `weights_hint`: the caller's option for the weights, as a format string ("--dam-weights {}"),
    for the error messages."""
    from transformers import DepthAnythingForDepthEstimation

    if weights == "random":
        config = dam_config(arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # same weights on every rank and every rerun (resume)
            model = DepthAnythingForDepthEstimation(config)
        prov = {"arch": arch, "weights": "random", "seed": seed}
        return _ready(model, posemb), prov
    source = HUB_IDS.get(arch, "") if weights == "hub" else weights
    if not source:
        how = (
            f"pass {weights_hint.format('DIR')} or {weights_hint.format('random')}"
            if weights_hint
            else "give a directory"
        )
        raise DamWeightsError(f"no official hub id for DAM v2 architecture {arch!r}; {how}")
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
        raise DamWeightsError(_offline_message(source, arch, err, weights_hint)) from err
    _check_arch(model, arch, source)
    return _ready(model, posemb), prov


def _from_hub(source: str, revision: str | None, allow_download: bool, kwargs: dict):
    from transformers import DepthAnythingForDepthEstimation

    try:  # cache first: no network round trip (and its retries) when the files are there
        return DepthAnythingForDepthEstimation.from_pretrained(
            source, revision=revision, local_files_only=True, **kwargs
        )
    except OSError as err:
        if not allow_download:
            raise
        from pdfnet_pipeline.hub import unreachable

        reason = unreachable()
        if reason:
            raise HubUnreachable(f"not in the Hugging Face cache, and {reason}") from err
    return DepthAnythingForDepthEstimation.from_pretrained(source, revision=revision, **kwargs)


def _ready(model, posemb: PosEmb):
    model.eval()
    model.requires_grad_(False)
    set_posemb(model, posemb)
    return model


def _official_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's own `interpolate_pos_encoding` (interpolate_offset 0.1, no antialias), bound to a
    transformers `Dinov2Embeddings` in place of the library's: the 37x37 table is resampled
    bicubically by the scale factor (rows + 0.1) / 37, (cols + 0.1) / 37, in float32."""
    table = self.position_embeddings
    if embeddings.shape[1] == table.shape[1] and height == width:
        return table  # the trained grid: nothing to interpolate
    rows, cols = height // self.patch_size, width // self.patch_size
    grid = math.isqrt(table.shape[1] - 1)
    patches = table[:, 1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    scale = ((rows + 0.1) / grid, (cols + 0.1) / grid)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat((table[:, :1].float(), patches), dim=1).to(embeddings.dtype)


def set_posemb(model, rule: PosEmb) -> None:
    """Choose the backbone's position-embedding interpolation: "official" binds
    `_official_pos_encoding` on this model's embeddings module (an instance attribute: the class
    and other models are untouched); "transformers" restores the library's method."""
    emb = model.backbone.embeddings
    if rule == "official":
        emb.interpolate_pos_encoding = types.MethodType(_official_pos_encoding, emb)
    elif rule == "transformers":
        emb.__dict__.pop("interpolate_pos_encoding", None)
    else:
        raise ValueError(f"unknown position-embedding rule {rule!r} (official, transformers)")


def input_side(target: int, multiple: int = PATCH) -> int:
    """The network input side for a square `target`: the official `infer_image` rule
    (keep aspect, lower bound, multiple of 14) applied to a square, i.e. 14 * ceil(target / 14):
    518 -> 518, 1024 -> 1036."""
    return multiple * math.ceil(target / multiple)


def _to_multiple(x: float, at_least: int, multiple: int = PATCH) -> int:
    """The official Resize's `constrain_to_multiple_of` (lower bound): nearest multiple (numpy's
    round half to even, as Python's round), or the next one up when that falls below `at_least`."""
    y = round(x / multiple) * multiple
    return y if y >= at_least else math.ceil(x / multiple) * multiple


def input_shape(width: int, height: int, target: int, aspect: Aspect = "square") -> tuple[int, int]:
    """(h, w) of the network input for a W x H image. "square": `input_side(target)` both ways.
    "keep": the official Resize(keep_aspect_ratio=True, ensure_multiple_of=14,
    resize_method="lower_bound"): scale so the short side reaches `target`, then each side to a
    multiple of 14 (2592x1944 at 518 -> 518 x 686; at 1024 -> 1036 x 1372)."""
    if aspect == "square":
        side = input_side(target)
        return side, side
    if aspect != "keep":
        raise ValueError(f"unknown aspect {aspect!r} (square, keep)")
    scale = max(target / height, target / width)  # lower bound: the short side reaches target
    return _to_multiple(scale * height, target), _to_multiple(scale * width, target)


def to_model_input(image: torch.Tensor, shape: int | tuple[int, int]) -> torch.Tensor:
    """uint8 RGB (B,3,H,W) or (3,H,W) -> float32 ImageNet-normalised (.., 3, h, w) (`shape` an
    int: a square): [0,1], bicubic (a=-0.75, align_corners=False, no antialias: cv2's
    INTER_CUBIC), then mean/std."""
    size = (shape, shape) if isinstance(shape, int) else tuple(shape)
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    x = x.to(torch.float32) / 255.0
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x[0] if squeeze else x


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """Float32 convolutions and matmuls in IEEE float32, not TF32, for the block (restored after).
    PyTorch's defaults run cuDNN convolutions in TF32 on Ampere and later GPUs."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def raw_depth(model, pixels: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Relative inverse depth (B, h, w) at the input resolution, float32. The DINOv2 backbone
    runs under autocast(`amp_dtype`) (None: IEEE float32); the DPT neck and head run in IEEE
    float32, as in the spec: they produce the full-resolution map whose fine detail the 8-bit
    bf16 mantissa (or TF32's 10 bits) would quantise."""
    device_type = pixels.device.type
    fp32 = ieee_fp32() if amp_dtype is None else nullcontext()
    with fp32, torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        feats = model.backbone.forward_with_filtered_kwargs(pixels).feature_maps
    feats = [f.float() for f in feats]
    ph, pw = pixels.shape[-2] // PATCH, pixels.shape[-1] // PATCH
    with ieee_fp32(), torch.autocast(device_type, enabled=False):
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
    (align_corners=True) to `out_size`, per-map min-max. The "square" mode's output."""
    depth = raw_depth(model, pixels, amp_dtype)
    finite = torch.isfinite(depth).flatten(1).all(dim=1)
    depth = F.interpolate(depth[:, None], size=(out_size, out_size), mode="bilinear", align_corners=True)
    return minmax01(depth[:, 0]), finite


def predict_keep(
    model,
    pixels: torch.Tensor,
    orig_sizes: list[tuple[int, int]],
    out_size: int,
    amp_dtype: torch.dtype | None = None,
):
    """`predict` for the "keep" mode (pixels share one keep shape; `orig_sizes` each image's
    (H, W)): `infer_image`'s output, i.e. raw depth bilinear (align_corners=True) to the image's
    own size, min-max there; then the reference loader's bilinear (align_corners=True) resize to
    `out_size`². The min and max are those of the full-size map, as the reference's."""
    depth = raw_depth(model, pixels, amp_dtype)
    finite = torch.isfinite(depth).flatten(1).all(dim=1)
    maps = []
    for d, (h, w) in zip(depth, orig_sizes, strict=True):
        full = minmax01(F.interpolate(d[None, None], size=(h, w), mode="bilinear", align_corners=True)[0])
        out = F.interpolate(full[None], size=(out_size, out_size), mode="bilinear", align_corners=True)
        maps.append(out[0, 0])
    return torch.stack(maps), finite
