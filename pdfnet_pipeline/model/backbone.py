"""Swin encoder: timm's SwinTransformer made to compute exactly what the reference backbone does.

The reference uses the Swin *detection* backbone. timm's classification Swin matches it bit for
bit (spec/model.md, "Matching the reference encoder with timm") once we:

1. build it with `always_partition=True` + `dynamic_img_size=True`, so a 12-token window is never
   clamped on small grids (the patch pass sees 32x32 ... 4x4 token grids);
2. pad the token grid to a multiple of the window *before* the cyclic shift (`PadThenShiftBlock`);
   timm shifts first and pads after, which puts the zero tokens in other windows;
3. add an absolute position embedding (1 x C x 56 x 56, bicubic-resized to the token grid)
   after the patch embedding, outside timm;
4. LayerNorm each of the four stage outputs (timm only has one after the last stage).

Stage i of timm (downsample, then blocks) equals the reference's layer i output before its
trailing downsample, so the four outputs are the stage outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, checkpoint_filter_fn, window_partition, window_reverse

from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.model.blocks import checkpointed


@dataclass(frozen=True)
class SwinSpec:
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    ape_grid: int = 56  # reference: pretrain_img_size 224 / patch 4

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


TIMM_NAME = "swin_base_patch4_window12_384"


class PadThenShiftBlock(SwinTransformerBlock):
    """timm Swin block whose window attention pads to a window multiple first, then shifts.

    Only `_attn` changes; the mask is built on the padded grid exactly as the reference does
    (padded tokens are not masked, in either implementation). Masked pairs get -inf instead of
    the reference's -100: exp(-100) = 3.7e-44 is a float32 denormal, and denormals made the CPU
    matmuls of the padded patch-pass windows 10-100x slower (a 512² forward took minutes). Those
    weights are below float32 resolution next to the unmasked ones (every token sees at least
    itself), so outputs agree with the -100 mask (checked in tests/test_model_refswin.py).
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, C = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        _, Hp, Wp, _ = x.shape
        has_shift = any(self.shift_size)
        if has_shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
            mask = self.get_attn_mask(x)
            mask = mask.masked_fill(mask != 0, float("-inf"))
        else:
            mask = None
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=mask).view(-1, wh, ww, C)
        x = window_reverse(windows, self.window_size, Hp, Wp)
        if has_shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


class SwinEncoder(nn.Module):
    """Four feature maps (strides 4/8/16/32, NCHW) from timm Swin + the reference's additions.

    `grad_checkpoint`: keep only each Swin block's input and rerun the block in backward.
    """

    grad_checkpoint = False

    def __init__(self, spec: SwinSpec, drop_path: float = 0.0, fused_window_attn: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.swin = timm.create_model(
            TIMM_NAME,
            pretrained=False,
            num_classes=0,
            embed_dim=spec.embed_dim,
            depths=spec.depths,
            num_heads=spec.num_heads,
            window_size=spec.window_size,
            always_partition=True,
            dynamic_img_size=True,
            drop_path_rate=drop_path,  # per-block linear ramp, as the reference's dpr
        )
        self.swin.norm = nn.Identity()  # replaced by the four output norms below
        for stage in self.swin.layers:
            for block in stage.blocks:
                block.__class__ = PadThenShiftBlock
                # timm's fused path adds the bias inside SDPA: ~1e-6 different from the reference
                block.attn.fused_attn = fused_window_attn
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, spec.embed_dim, spec.ape_grid, spec.ape_grid))
        nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in spec.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.swin.patch_embed(x)  # B H W C
        ape = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
        x = x + ape.permute(0, 2, 3, 1)
        # The permuted B H W C map *is* a channels-last B C H W tensor: a channels-last model
        # (CUDA training) takes it as is; the default NCHW model gets the copy it always had.
        keep_channels_last = self.swin.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
        outs = []
        for stage, norm in zip(self.swin.layers, self.norms):
            x = self._stage(stage, x)
            out = norm(x).permute(0, 3, 1, 2)
            outs.append(out if keep_channels_last else out.contiguous())
        return outs

    def _stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpoint and torch.is_grad_enabled()):
            return stage(x)
        x = stage.downsample(x)  # what timm's stage does, with one checkpoint per block
        for block in stage.blocks:
            x = checkpointed(True, block, x)
        return x

    def load_imagenet(self, weights: str) -> None:
        """Load ImageNet Swin weights: a local .pth/.safetensors file or a timm hub name.

        Original Swin checkpoints go through timm's filter (`layers.i.downsample` ->
        `layers.(i+1).downsample`). The classifier head and final norm are dropped; the position
        embedding and the four output norms are not in ImageNet checkpoints and stay as
        initialised, as in the reference.
        """
        path = Path(weights)
        if path.is_file():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            state = _hub_state(weights)
        state = checkpoint_filter_fn(state, self.swin)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "norm."))}
        missing, unexpected = self.swin.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"ImageNet weights {weights!r} do not fit: missing {missing}, unexpected {unexpected}")


class BackboneWeightsError(UserError, RuntimeError):
    """Swin ImageNet weights that are neither a local file nor cached while the Hub cannot be reached."""


def _hub_state(name: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights of `name`: from the Hugging Face cache first (no network), then a
    download only when the Hub answers (`hub.unreachable`), so an offline machine fails at once
    instead of after download retries and a cached run never asks the network."""
    from pdfnet_pipeline.hub import cache_only, unreachable

    try:
        with cache_only():
            return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    except Exception as err:  # timm / huggingface_hub raise several types for a missing cached file
        missing = type(err).__name__
    reason = unreachable()
    if reason is None:
        return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    raise BackboneWeightsError(
        f"cannot load the Swin ImageNet weights {name!r}: not in the Hugging Face cache, and {reason} "
        f"({missing}); set model.backbone_weights to a local .pth / .safetensors file "
        f'(--set model.backbone_weights=\'"FILE"\'), or to "random" to just see the pipeline'
    )
