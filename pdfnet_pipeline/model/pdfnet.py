"""The full PDFNet: one Swin encoder used three times (image, depth, 8x8 patches), encode()
adapters, the FSE segmentation decoder and, for training only, the depth-refinement decoder.

`forward` (training) returns the six segmentation logits, the five depth logits and the named
loss terms; `predict` (inference) runs without the depth decoder and returns s0's logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from huggingface_hub import ModelHubMixin

from pdfnet_pipeline.model.backbone import SwinEncoder, SwinSpec
from pdfnet_pipeline.model.blocks import TILES, SDPAttention, merge_tiles, split_tiles, up
from pdfnet_pipeline.model.decoders import DepthDecoder, EncodeAdapters, Features, SegmentationDecoder
from pdfnet_pipeline.model.losses import pdfnet_losses

# preset name -> (Swin shape, decoder width emb)
PRESETS: dict[str, tuple[SwinSpec, int]] = {
    "reference": (SwinSpec(), 128),
    # Same code at a CPU-test size: a 256² forward + backward takes a few seconds.
    "tiny": (SwinSpec(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, ape_grid=8), 32),
}
SIZE_MULTIPLE = TILES * 32  # every FSE stage cuts a stride-32 map into 8 x 8 tiles


@dataclass
class PDFNetConfig:
    """Model settings. `backbone_weights`: "random", a timm hub name (e.g.
    "swin_base_patch4_window12_384.ms_in22k_ft_in1k") or a local .pth/.safetensors file."""

    preset: Literal["reference", "tiny"] = "reference"
    variant: Literal["paper", "v2"] = "paper"
    backbone_weights: str = "random"
    drop_path: float = 0.1  # reference training value (eval mode ignores it)
    patch_grad: bool = False  # reference: no gradient through the patch pass and patch selection
    fused_window_attn: bool = False  # timm SDPA inside Swin windows: faster, ~1e-6 off the reference
    materialize_attention: bool = False  # CoA via explicit softmax(QK^T)V instead of SDPA (benchmark)
    # Activation checkpointing of the Swin blocks, FSE stages, decoder blocks and (CPU, dropout)
    # attention chunks while training: less memory for one more forward of those parts; same
    # loss and gradients, same weights.
    grad_checkpoint: bool = False


@dataclass
class PDFNetOutput:
    preds: list[torch.Tensor]  # 6 logits: s0 (H) first, then H/4, H/8, H/16, H/32, H/32
    depth_preds: list[torch.Tensor]  # 5 logits: H/2, H/8, H/16, H/32, H/64
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


def normalize_depth(depth: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each sample to [0, 1].

    The reference normalises over the whole batch tensor; per sample is identical at batch size 1
    and correct above it. `eps` only guards a constant map (the reference would produce NaN).
    """
    flat = depth.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (depth - lo) / (hi - lo).clamp_min(eps)


_MODEL_CARD = """
---
{{ card_data }}
---

PDFNet (Patch-Depth Fusion, dichotomous image segmentation) weights saved by pdfnet-pipeline:
`model.safetensors` is the project's checkpoint (its config also in the safetensors metadata),
loaded without unpickling by `pdfnet_pipeline.model.PDFNet.from_pretrained(...)`.
"""


class PDFNet(
    nn.Module,
    ModelHubMixin,  # save_pretrained / push_to_hub; both save and load go through model/checkpoint.py
    library_name="pdfnet-pipeline",
    pipeline_tag="image-segmentation",
    tags=["dichotomous-image-segmentation", "pdfnet"],
    model_card_template=_MODEL_CARD,
):
    def __init__(self, cfg: PDFNetConfig) -> None:
        super().__init__()
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r} (known: {', '.join(PRESETS)})")
        if cfg.variant not in ("paper", "v2"):
            raise ValueError(f"unknown variant {cfg.variant!r} (paper or v2)")
        self.cfg = cfg
        spec, emb = PRESETS[cfg.preset]
        self.encoder = SwinEncoder(spec, cfg.drop_path, cfg.fused_window_attn)
        self.adapters = EncodeAdapters(spec.channels, emb)
        self.decoder = SegmentationDecoder(emb, cfg.variant, cfg.patch_grad)
        self.depth_decoder = DepthDecoder(emb, cfg.variant)
        set_materialized_attention(self, cfg.materialize_attention)
        set_grad_checkpoint(self, cfg.grad_checkpoint)

    def encode(self, x: torch.Tensor) -> Features:
        """encode(): backbone + adapters -> (L1, L2, L3, L4, G)."""
        return self.adapters(self.encoder(x))

    def _features(self, image: torch.Tensor, depth: torch.Tensor):
        b, _, h, w = image.shape
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(
                f"input {h}x{w}: H and W must be multiples of {SIZE_MULTIPLE} (8x8 tiles of stride-32 maps)"
            )
        depth3 = normalize_depth(depth).to(image.dtype).repeat(1, 3, 1, 1)
        half = (h // 2, w // 2)
        glob = self.encode(torch.cat([up(image, half), up(depth3, half)], dim=0))
        I, D = [f[:b] for f in glob], [f[b:] for f in glob]
        # patch pass: 8x8 tiles, no gradient by default (the reference detaches it)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.patch_grad):
            P = [merge_tiles(f, b) for f in self.encode(split_tiles(image))]
        return depth3, I, D, P

    def forward(
        self,
        image: torch.Tensor,
        depth: torch.Tensor,
        mask: torch.Tensor | None = None,
        depth_target: torch.Tensor | None = None,
    ) -> PDFNetOutput:
        """Training pass. `image` ImageNet-normalised B3HW, `depth` raw B1HW (normalised here).

        With `mask` (B1HW in [0,1]) the losses are computed; `depth_target` (raw, min-max
        normalised per sample here) supervises the depth decoder and the integrity prior; without
        it the input depth is used. Targets of another size are resized (bilinear) to the mask.
        """
        depth3, I, D, P = self._features(image, depth)
        preds = self.decoder(image, depth3, I, D, P)
        depth_preds = self.depth_decoder(image, depth3, I, D, P)
        out = PDFNetOutput(preds, depth_preds)
        if mask is not None:
            target = depth if depth_target is None else depth_target
            target = normalize_depth(target.float())
            if target.shape[-2:] != mask.shape[-2:]:
                target = nn.functional.interpolate(target, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            smooth = 1.0 if self.cfg.variant == "paper" else 1e-6
            out.losses = pdfnet_losses(preds, depth_preds, mask, target, smooth)
        return out

    def predict(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Inference: B x 1 x H x W logits of s0 (no depth decoder; call under no_grad/eval)."""
        depth3, I, D, P = self._features(image, depth)
        return self.decoder(image, depth3, I, D, P)[0]

    def _save_pretrained(self, save_directory: Path) -> None:  # called by ModelHubMixin.save_pretrained
        from pdfnet_pipeline.model.checkpoint import save_pretrained

        save_pretrained(self, save_directory)

    @classmethod
    def from_pretrained(
        cls, source: str | Path, *, map_location: str | torch.device = "cpu", revision: str | None = None, **hub_kwargs
    ) -> PDFNet:
        """A `save_pretrained` folder, a Hub id or a project .safetensors file -> the model in eval mode.

        Replaces the mixin's loader so every checkpoint goes through `checkpoint.load_model`.
        """
        from pdfnet_pipeline.model.checkpoint import load_model

        return load_model(source, map_location, revision, **hub_kwargs)


def set_materialized_attention(model: nn.Module, materialize: bool) -> None:
    """Switch every CoA attention between SDPA (default) and the explicit attention matrix."""
    for m in model.modules():
        if isinstance(m, SDPAttention):
            m.materialize = materialize


def set_grad_checkpoint(model: PDFNet, enabled: bool) -> None:
    """Switch activation checkpointing of the encoder, both decoders and the CPU attention chunks."""
    for part in (model.encoder, model.decoder, model.depth_decoder):
        part.grad_checkpoint = enabled
    for m in model.modules():
        if isinstance(m, SDPAttention):
            m.grad_checkpoint = enabled


def build_pdfnet(cfg: PDFNetConfig | None = None) -> PDFNet:
    """Build the model; loads ImageNet backbone weights unless `backbone_weights == "random"`."""
    cfg = cfg or PDFNetConfig()
    model = PDFNet(cfg)
    if cfg.backbone_weights != "random":
        model.encoder.load_imagenet(cfg.backbone_weights)
    return model


def parameter_counts(model: PDFNet) -> dict[str, int]:
    """Parameters per part; "inference" leaves out the depth decoder, "training" includes it."""

    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    counts = {
        "encoder": n(model.encoder),
        "adapters": n(model.adapters),
        "decoder": n(model.decoder),
        "depth_decoder": n(model.depth_decoder),
    }
    counts["inference"] = counts["encoder"] + counts["adapters"] + counts["decoder"]
    counts["training"] = counts["inference"] + counts["depth_decoder"]
    return counts
