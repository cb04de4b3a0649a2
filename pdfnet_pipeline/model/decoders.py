"""encode() adapters, segmentation decoder and depth-refinement decoder (spec/model.md).

Lists of features are (L1, L2, L3, L4, G): index 0-3 the four levels (fine to coarse), 4 the
global map. Module indices follow the reference (FSE_mix[0] is the coarsest stage, Bside[k]
gives side output s_k) so checkpoint keys map by name.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdfnet_pipeline.model.blocks import checkpointed, crs, init_conv_weights, up, up_like
from pdfnet_pipeline.model.fse import FSE

Features = list[torch.Tensor]


def _side(emb: int) -> nn.Conv2d:
    return nn.Conv2d(emb, 1, 3, padding=1)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return up(x, (x.shape[-2] * 2, x.shape[-1] * 2))


class EncodeAdapters(nn.Module):
    """Backbone maps -> (L1..L4, G): `Lk = crs(Ck -> emb)`, `G = Glob(channel_mix(cat(up(L1..L3), L4)))`."""

    def __init__(self, channels: tuple[int, ...], emb: int) -> None:
        super().__init__()
        self.channel_mix1, self.channel_mix2, self.channel_mix3, self.channel_mix4 = (crs(c, emb) for c in channels)
        self.channel_mix = crs(4 * emb, emb)
        self.Glob = nn.Sequential(crs(emb, emb))
        init_conv_weights(self)

    def forward(self, maps: Features) -> Features:
        mixers = (self.channel_mix1, self.channel_mix2, self.channel_mix3, self.channel_mix4)
        levels = [m(x) for m, x in zip(mixers, maps)]
        l4 = levels[3]
        glob = self.Glob(self.channel_mix(torch.cat([up_like(x, l4) for x in levels[:3]] + [l4], dim=1)))
        return levels + [glob]


class SegmentationDecoder(nn.Module):
    """Six side outputs (logits) [s0..s5] at H, H/4, H/8, H/16, H/32, H/32 from I, D, P features.

    `grad_checkpoint`: each FSE stage, each level's mix + side output and the three head blocks
    run under activation checkpointing (inputs kept, rerun in backward).
    """

    grad_checkpoint = False

    def __init__(self, emb: int, variant: str = "paper", patch_grad: bool = False) -> None:
        super().__init__()
        # coarse to fine: stages at L4, L3 (pool 1) and L2, L1 (pool 2)
        self.FSE_mix = nn.ModuleList(FSE(2 * emb, emb, r, variant, patch_grad) for r in (1, 1, 2, 2))
        self.shallow = nn.Sequential(nn.Conv2d(6, emb, 4, stride=4), crs(emb, emb))
        self.upsample1 = nn.Sequential(crs(emb, emb))
        self.upsample2 = nn.Sequential(crs(emb, emb))
        self.channel_mix = nn.ModuleList(crs(3 * emb, emb) for _ in range(4))  # [k] used at level k+1
        self.Bside = nn.ModuleList(_side(emb) for _ in range(6))
        init_conv_weights(self)

    def forward(self, image: torch.Tensor, depth3: torch.Tensor, I: Features, D: Features, P: Features):
        ck = self.grad_checkpoint
        pg = P[4]
        side = self.Bside[5](up_like(I[4], pg) + up_like(D[4], pg) + pg)
        sides = [side]
        prev = (I[4], D[4], P[4])  # stage 4 fuses G with L4
        mix = None
        for stage, level in enumerate((3, 2, 1, 0)):
            feats = (I[level], D[level], P[level])
            cat = [torch.cat([up_like(p, f), f], dim=1) for p, f in zip(prev, feats)]
            prev = checkpointed(ck, self.FSE_mix[stage], *cat, side)
            mix, side = checkpointed(ck, self._level_out, level, *prev)
            sides.append(side)
        shallow = checkpointed(ck, self._shallow, image, depth3)
        f = checkpointed(ck, self._head1, mix, shallow)
        sides.append(checkpointed(ck, self._head2, f, shallow))
        return sides[::-1]  # s0 first

    def _level_out(self, level: int, i_: torch.Tensor, d_: torch.Tensor, p_: torch.Tensor):
        """mix_k = channel_mix(cat(up(I'), up(D'), P')) and its side output s_k."""
        mix = self.channel_mix[level](torch.cat([up_like(i_, p_), up_like(d_, p_), p_], dim=1))
        return mix, self.Bside[level + 1](mix)

    def _shallow(self, image: torch.Tensor, depth3: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        return self.shallow(up(torch.cat([image, depth3], dim=1), (4 * h, 4 * w)))

    def _head1(self, mix: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        size2 = (mix.shape[-2] * 2, mix.shape[-1] * 2)
        return self.upsample1(up(mix, size2) + up(shallow, size2))

    def _head2(self, f: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        return self.Bside[0](self.upsample2(_up2(f) + shallow))


class DepthDecoder(nn.Module):
    """Depth refinement (training only): five depth logits at H/2, H/8, H/16, H/32, H/64.

    Per-level inputs: paper `I + D + up(P)` (emb channels), v2 `cat(I, D, up(P))` (3 emb).
    `grad_checkpoint`: each decoder block and the head run under activation checkpointing.
    """

    grad_checkpoint = False

    def __init__(self, emb: int, variant: str = "paper") -> None:
        super().__init__()
        self.variant = variant
        width = emb if variant == "paper" else 3 * emb
        dec = [nn.Sequential(crs(2 * width, 2 * emb), crs(2 * emb, emb))]
        dec += [nn.Sequential(crs(emb + width, 2 * emb), crs(2 * emb, emb)) for _ in range(3)]
        self.Decoder = nn.ModuleList(dec)
        self.shallow = nn.Sequential(nn.Conv2d(3 if variant == "paper" else 6, emb, 3, padding=1))
        self.upsample1 = crs(emb, emb)
        self.upsample2 = crs(emb, emb)
        self.Bside = nn.ModuleList(_side(emb) for _ in range(5))
        init_conv_weights(self)

    def fuse(self, I: Features, D: Features, P: Features) -> Features:
        if self.variant == "paper":
            return [i + d + up_like(p, i) for i, d, p in zip(I, D, P)]
        return [torch.cat([i, d, up_like(p, i)], dim=1) for i, d, p in zip(I, D, P)]

    def forward(self, image: torch.Tensor, depth3: torch.Tensor, I: Features, D: Features, P: Features):
        ck = self.grad_checkpoint
        feats = self.fuse(I, D, P)
        de = [checkpointed(ck, self._block, 0, feats[4], feats[3])]
        for stage, level in enumerate((2, 1, 0), start=1):
            de.append(checkpointed(ck, self._block, stage, de[-1], feats[level]))
        final = checkpointed(ck, self._head, image, depth3, de[-1])
        # de = [De4, De3, De2, De1] -> outputs [final, De1, De2, De3, De4]
        return [final] + [self.Bside[k](de[4 - k]) for k in range(1, 5)]

    def _block(self, stage: int, prev: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Decoder[stage](cat(up(prev), f)); stage 0 takes (G, L4) at the same size."""
        return self.Decoder[stage](torch.cat([up_like(prev, f), f], dim=1))

    def _head(self, image: torch.Tensor, depth3: torch.Tensor, de1: torch.Tensor) -> torch.Tensor:
        shallow = self.shallow(image if self.variant == "paper" else torch.cat([image, depth3], dim=1))
        f = de1 + up_like(shallow, de1)
        f = self.upsample1(_up2(f))
        f = self.upsample2(_up2(f + up_like(shallow, f)))
        return self.Bside[0](f)
