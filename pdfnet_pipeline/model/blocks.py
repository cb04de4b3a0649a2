"""Small building blocks shared by the PDFNet modules (spec/model.md, "Notation" and "CoA").

Parameter names follow the reference layout (Sequential indices in `crs`, nn.MultiheadAttention's
`in_proj_weight` / `out_proj`) so the released checkpoint maps onto them one to one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

TILES = 8  # the patch pass cuts the image into TILES x TILES tiles
T = TypeVar("T")


def checkpointed(enabled: bool, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)`, under activation checkpointing when `enabled` and autograd is recording.

    Only the inputs are kept; the backward pass reruns `fn`. Non-reentrant checkpointing restores
    the RNG state for the rerun, so dropout and drop-path draw the same masks: loss and gradients
    equal the plain pass (tests/test_model_checkpointing.py). Under no_grad it is a plain call.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def up(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with align_corners=True, as the reference does everywhere inside the net."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # align_corners=True at equal size is the identity; skip the copy
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def up_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return up(x, ref.shape[-2:])


class RMSNorm(nn.Module):
    """RMSNorm in float32 (cast back after), weight init 1, eps 1e-6.

    channels_first normalises over dim 1 (B C H W); channels_last over the last dim (tokens).
    """

    def __init__(self, dim: int, eps: float = 1e-6, channels_last: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = -1 if self.channels_last else 1
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(dim=dim, keepdim=True) + self.eps)).type_as(x)
        weight = self.weight if self.channels_last else self.weight[:, None, None]
        return weight * normed


def crs(in_dim: int, out_dim: int) -> nn.Sequential:
    """Conv3x3 (bias) -> RMSNorm (channels first) -> SiLU; keys `0.weight`, `0.bias`, `1.weight`."""
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, padding=1), RMSNorm(out_dim), nn.SiLU(inplace=True))


def init_conv_weights(module: nn.Module) -> None:
    """Non-backbone conv init of the reference: trunc-normal std 0.02, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SwiGLU(nn.Module):
    """`w2(silu(w1 x) * w3 x)`, no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SDPAttention(nn.Module):
    """Single-head attention without biases in nn.MultiheadAttention's parameter layout.

    Runs through `F.scaled_dot_product_attention`, so the 16k x 16k attention matrix of the
    finest FSE stage is never materialised (flash / memory-efficient kernels). `materialize=True`
    computes softmax(q k^T / sqrt(d)) v explicitly: the reference's arithmetic, for the benchmark.

    PyTorch's CPU SDPA has no fused kernel with dropout: training on the CPU falls back to its
    math kernel, which keeps the whole matrix, its dropout noise and the dropped copy for
    backward (3 GiB for the finest stage at 1024²). There, queries are attended in chunks of
    `CHUNK_ELEMS` matrix entries; with `grad_checkpoint` each chunk reruns in backward, so only
    one chunk's matrix is ever held. Rows of softmax are independent, so chunking changes
    nothing but which random numbers the dropout draws.
    """

    CHUNK_ELEMS = 2**24  # 64 MiB of float32 scores per chunk

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout
        self.materialize = False
        self.grad_checkpoint = False
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention._reset_parameters

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        wq, wk, wv = self.in_proj_weight.chunk(3)
        q, k, v = F.linear(q, wq), F.linear(kv, wk), F.linear(kv, wv)
        p = self.dropout if self.training else 0.0
        if self.materialize:
            attn = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
            out = F.dropout(attn, p) @ v
        elif p > 0 and q.device.type == "cpu" and q.shape[1] * k.shape[1] > self.CHUNK_ELEMS:
            rows = max(1, self.CHUNK_ELEMS // k.shape[1])
            out = torch.cat([checkpointed(self.grad_checkpoint, _sdpa, c, k, v, p) for c in q.split(rows, 1)], 1)
        else:
            out = _sdpa(q, k, v, p)
        return self.out_proj(out)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """Single-head SDPA on B x N x C tokens."""
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), dropout_p=p).squeeze(1)


class CoA(nn.Module):
    """Cross attention block: attention, RMSNorm, SwiGLU FFN (hidden = dim), RMSNorm, dropout 0.1.

    paper: `x = Norm1(drop(Att(q, kv))) + q; x = Norm2(drop(FFN(x))) + x`.
    v2:    `x = drop(Norm1(Att(q, kv))) + q; x = drop(Norm2(FFN(x))) + x` (same at eval).
    """

    def __init__(self, dim: int, variant: str = "paper", dropout: float = 0.1) -> None:
        super().__init__()
        self.Att = SDPAttention(dim, dropout)
        self.Norm1 = RMSNorm(dim, channels_last=True)
        self.drop1 = nn.Dropout(dropout)
        self.FFN = SwiGLU(dim, dim)
        self.Norm2 = RMSNorm(dim, channels_last=True)
        self.drop2 = nn.Dropout(dropout)
        self.norm_first = variant == "paper"  # paper: dropout inside the norm; v2: outside

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        a = self.Att(q, kv)
        x = (self.Norm1(self.drop1(a)) if self.norm_first else self.drop1(self.Norm1(a))) + q
        f = self.FFN(x)
        return (self.Norm2(self.drop2(f)) if self.norm_first else self.drop2(self.Norm2(f))) + x


def split_tiles(x: torch.Tensor, tiles: int = TILES) -> torch.Tensor:
    """B C H W -> (tiles*tiles*B) C H/t W/t, tiles row-major, batch tile-major (reference order)."""
    b, c, h, w = x.shape
    th, tw = h // tiles, w // tiles
    x = x.reshape(b, c, tiles, th, tiles, tw).permute(2, 4, 0, 1, 3, 5)
    return x.reshape(tiles * tiles * b, c, th, tw)


def merge_tiles(x: torch.Tensor, batch: int, tiles: int = TILES) -> torch.Tensor:
    """Inverse of `split_tiles`."""
    _, c, th, tw = x.shape
    x = x.reshape(tiles, tiles, batch, c, th, tw).permute(2, 3, 0, 4, 1, 5)
    return x.reshape(batch, c, tiles * th, tiles * tw)


def tokens(x: torch.Tensor) -> torch.Tensor:
    """B C H W -> B (H W) C."""
    return x.flatten(2).transpose(1, 2)


def untokens(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B (H W) C -> B C H W."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
