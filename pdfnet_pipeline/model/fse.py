"""FSE: feature selection and extraction (paper sec. 3.3, eqs. 3-9; spec/model.md "FSE").

Boundary-integrity separation (BIS) splits the previous prediction into a boundary map B and an
integrity map S; patch selection up-weights the patch-pass tiles that contain boundary; four
cross-attention blocks (CoA) exchange information between image, depth and patch features.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pdfnet_pipeline.model.blocks import TILES, CoA, crs, tokens, untokens, up, up_like


def _boundary_pool(q: torch.Tensor) -> torch.Tensor:
    """Local mean of q over a window of about 1/8 of the map (odd kernel, same-size output)."""
    kh, kw = q.shape[-2] // 8, q.shape[-1] // 8
    kernel = (kh + 1 if kh % 2 == 0 else kh, kw + 1 if kw % 2 == 0 else kw)
    return F.avg_pool2d(q, kernel, stride=1, padding=(kh // 2, kw // 2))


def boundary_integrity(pred: torch.Tensor, variant: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """BIS on logits `pred` -> (boundary B, integrity S), both B x 1 x H x W.

    q = sigmoid(sigmoid(pred)): the reference applies the sigmoid twice (caller and callee) and
    the released weights depend on it. paper: B = 2|q - avg(q)|, S = relu(sigmoid(pred) - 5B).
    v2: B = (|q - avg(q)| > 0.1), S = relu(sigmoid(pred) - B); like the v2 reference, the threshold
    is only applied when (H // 8) is even (always the case at 1024 input).
    """
    q = pred.sigmoid().sigmoid()
    diff = (q - _boundary_pool(q)).abs()
    if variant == "paper":
        boundary = 2 * diff
        return boundary, F.relu(pred.sigmoid() - 5 * boundary)
    boundary = (diff > 0.1).to(diff.dtype) if (pred.shape[-2] // 8) % 2 == 0 else diff
    return boundary, F.relu(pred.sigmoid() - boundary)


def patch_weights(boundary: torch.Tensor, variant: str = "paper", tiles: int = TILES) -> torch.Tensor:
    """Per-tile weight from the boundary map: B x 1 x tiles x tiles.

    score = mean of B over each of the tiles x tiles tiles; paper: 1 + 5 score; v2: 1 + [score > 0].
    """
    h, w = boundary.shape[-2:]
    score = F.avg_pool2d(boundary, (h // tiles, w // tiles))
    return 1 + 5 * score if variant == "paper" else 1 + (score > 0).to(score.dtype)


def select_patches(patch: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each tile of `patch` (B C H W) by its weight (B 1 t t)."""
    t = weights.shape[-1]
    b, c, h, w = patch.shape
    scaled = patch.reshape(b, c, t, h // t, t, w // t) * weights[:, :, :, None, :, None]
    return scaled.reshape(b, c, h, w)


def _pool_tokens(x: torch.Tensor, ratio: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return tokens(F.adaptive_avg_pool2d(x, (h // ratio, w // ratio)) if ratio > 1 else x)


class FSE(nn.Module):
    """One FSE stage. Inputs: image / depth / patch features (in_dim channels) and the previous
    prediction (logits). Returns the three refined feature maps (emb channels each).

    `patch_grad=False` detaches the selected patch features, as the reference does by running the
    tile split/merge under no_grad (no gradient flows into the patch input or into B).
    """

    def __init__(self, in_dim: int, emb: int, pool_ratio: int, variant: str = "paper", patch_grad: bool = False):
        super().__init__()
        self.pool_ratio = pool_ratio
        self.variant = variant
        self.patch_grad = patch_grad
        self.I_channelswich = crs(in_dim, emb)
        self.P_channelswich = crs(in_dim, emb)
        self.D_channelswich = crs(in_dim, emb)
        self.IP = CoA(emb, variant)
        self.PI = CoA(emb, variant)
        self.ID = CoA(emb, variant)
        self.DI = CoA(emb, variant)

    def forward(self, img: torch.Tensor, depth: torch.Tensor, patch: torch.Tensor, pred: torch.Tensor):
        # BIS in float32: under bf16 autocast the logits arrive in bf16, where sigmoid(sigmoid(p))
        # lies in [0.5, 0.73] with steps of 2^-8 and B = 2|q - avg q| (x5 in S) is mostly rounding
        # error. The maps are cast back to the features' dtype where they scale them (a no-op in
        # float32, so the float32 path is unchanged).
        pred = pred.float()
        boundary, integrity = boundary_integrity(pred, self.variant)
        gate = pred.sigmoid()
        img = img * up_like(gate, img).to(img.dtype)
        depth = depth * up_like(gate, depth).to(depth.dtype)
        patch = patch * up_like(gate, patch).to(patch.dtype)
        r = self.pool_ratio

        img_cs = self.I_channelswich(img)
        img_tok, img_pool = tokens(img_cs), _pool_tokens(img_cs, r)

        depth_gate = up_like(pred, depth).sigmoid() + up_like(integrity, depth)
        depth_cs = self.D_channelswich(depth * depth_gate.to(depth.dtype))
        depth_pool = _pool_tokens(depth_cs, r)

        selected = select_patches(patch, patch_weights(boundary, self.variant).to(patch.dtype))
        if not self.patch_grad:
            selected = selected.detach()
        patch_cs = self.P_channelswich(selected)
        patch_pool = _pool_tokens(patch_cs, r)

        patch_att = self.PI(patch_pool, torch.cat([img_pool, depth_pool], dim=1))
        img_att = self.IP(img_tok, patch_att)
        depth_att = self.DI(depth_pool, torch.cat([img_pool, patch_pool], dim=1))
        img_att = self.ID(img_att, depth_att)

        (ih, iw), (dh, dw), (ph, pw) = img.shape[-2:], depth.shape[-2:], patch.shape[-2:]
        img_out = untokens(img_att, ih, iw) + img_cs
        depth_out = up((untokens(depth_att, dh // r, dw // r)), (dh, dw)) + depth_cs
        patch_out = up(untokens(patch_att, ph // r, pw // r), (ph, pw)) + patch_cs
        return img_out, depth_out, patch_out
