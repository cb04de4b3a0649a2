"""The timm-based encoder against an independent, deliberately plain Swin in the reference layout.

`PlainSwin` is written from the spec, not from timm: window attention loops over windows, pads
the token grid to a window multiple *before* the cyclic shift, builds the relative position
bias and the shifted-window mask from explicit coordinates, downsamples at the end of each stage
(reference key layout `layers.i.downsample`) and LayerNorms all four outputs (`norm0..3`).
Its state dict therefore has the reference's key names and doubles as a converter fixture.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pdfnet_pipeline.model.backbone import SwinEncoder, SwinSpec


class PlainAttention(nn.Module):
    def __init__(self, dim, heads, window):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)

    def bias(self):
        w = self.window
        pos = [(y, x) for y in range(w) for x in range(w)]
        idx = torch.tensor([[(ya - yb + w - 1) * (2 * w - 1) + (xa - xb + w - 1) for yb, xb in pos] for ya, xa in pos])
        return self.relative_position_bias_table[idx].permute(2, 0, 1)  # heads, N, N

    def forward(self, tokens, mask):  # tokens: B N C; mask: N N (0 / -100) or None
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1) + self.bias()
        if mask is not None:
            attn = attn + mask
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class PlainBlock(nn.Module):
    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PlainAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):  # B H W C
        b, h, w, c = x.shape
        win, s = self.window, self.shift
        hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
        y = F.pad(self.norm1(x), (0, 0, 0, wp - w, 0, hp - h))  # pad first ...
        if s:
            y = torch.roll(y, (-s, -s), (1, 2))  # ... then shift
            region = lambda p, size: 0 if p < size - win else (1 if p < size - s else 2)  # noqa: E731
            labels = torch.tensor([[region(i, hp) * 3 + region(j, wp) for j in range(wp)] for i in range(hp)])
        out = torch.zeros_like(y)
        for i in range(0, hp, win):
            for j in range(0, wp, win):
                tok = y[:, i : i + win, j : j + win].reshape(b, win * win, c)
                mask = None
                if s:
                    lab = labels[i : i + win, j : j + win].reshape(-1)
                    mask = (lab[:, None] != lab[None, :]).float() * -100.0
                out[:, i : i + win, j : j + win] = self.attn(tok, mask).reshape(b, win, win, c)
        if s:
            out = torch.roll(out, (s, s), (1, 2))
        x = x + out[:, :h, :w]
        return x + self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.norm2(x))))


class PlainMerge(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class PlainStage(nn.Module):
    def __init__(self, dim, depth, heads, window, last):
        super().__init__()
        self.blocks = nn.ModuleList(
            PlainBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2) for i in range(depth)
        )
        self.downsample = None if last else PlainMerge(dim)


class PlainSwin(nn.Module):
    """Reference-layout Swin backbone: patch_embed.{proj,norm}, absolute_pos_embed, layers, norm0..3."""

    def __init__(self, spec: SwinSpec):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, spec.embed_dim, 4, 4)
        self.patch_embed.norm = nn.LayerNorm(spec.embed_dim)
        self.absolute_pos_embed = nn.Parameter(torch.randn(1, spec.embed_dim, spec.ape_grid, spec.ape_grid) * 0.02)
        n = len(spec.depths)
        self.layers = nn.ModuleList(
            PlainStage(c, d, h, spec.window_size, i == n - 1)
            for i, (c, d, h) in enumerate(zip(spec.channels, spec.depths, spec.num_heads))
        )
        for i, c in enumerate(spec.channels):
            setattr(self, f"norm{i}", nn.LayerNorm(c))
        for m in self.modules():  # non-trivial norms so that a mix-up of norms shows
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 1.0, 0.1)
                nn.init.normal_(m.bias, 0.0, 0.1)

    def forward(self, x):
        x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))
        ape = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
        x = x + ape.permute(0, 2, 3, 1)
        outs = []
        for i, stage in enumerate(self.layers):
            for blk in stage.blocks:
                x = blk(x)
            outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outs


SMALL = SwinSpec(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=12, ape_grid=14)


def encoder_from_plain(plain: PlainSwin, spec: SwinSpec) -> SwinEncoder:
    """Load PlainSwin's weights into the timm wrapper through the reference-checkpoint mapping."""
    from pdfnet_pipeline.model.checkpoint import map_reference_state

    enc = SwinEncoder(spec).eval()
    ref = {f"encoder.{k}": v for k, v in plain.state_dict().items()}
    mapped, problems = map_reference_state(ref, spec.window_size)
    assert not problems
    enc.load_state_dict({k[len("encoder.") :]: v for k, v in mapped.items()}, strict=True)
    return enc


@pytest.mark.parametrize("size", [128, 96])
def test_timm_encoder_matches_plain_pad_then_shift_swin(size):
    # 128: the patch-pass tile size (token grids 32/16/8/4 padded to 36/24/12/12);
    # 96: grids 24/12/6/3, window equal to or larger than the grid
    torch.manual_seed(0)
    plain = PlainSwin(SMALL).eval()
    enc = encoder_from_plain(plain, SMALL)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours, ref = enc(x), plain(x)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_shift_then_pad_would_differ():
    """Guard that the test is sensitive: timm's own block order (shift, then pad) gives other numbers."""
    from timm.models.swin_transformer import SwinTransformerBlock

    torch.manual_seed(0)
    plain = PlainSwin(SMALL).eval()
    enc = encoder_from_plain(plain, SMALL)
    for stage in enc.swin.layers:
        for blk in stage.blocks:
            blk.__class__ = SwinTransformerBlock
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        diff = (enc(x)[0] - plain(x)[0]).abs().max().item()
    assert diff > 1e-2


def test_window_is_never_clamped():
    enc = SwinEncoder(SMALL)
    for stage in enc.swin.layers:
        for i, blk in enumerate(stage.blocks):
            assert blk.window_size == (12, 12)
            assert blk.shift_size == ((6, 6) if i % 2 else (0, 0))


def relative_position_index(w: int) -> torch.Tensor:
    pos = [(y, x) for y in range(w) for x in range(w)]
    return torch.tensor([[(ya - yb + w - 1) * (2 * w - 1) + (xa - xb + w - 1) for yb, xb in pos] for ya, xa in pos])


def reference_layout_state(plain: "PlainSwin", spec: SwinSpec, donor: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict in the released checkpoint's key layout: the Swin from `plain` (with the fixed
    buffers the reference stores), every other module from the PDFNet `donor` under reference names."""
    ref = {f"encoder.{k}": v.clone() for k, v in plain.state_dict().items()}
    for i, depth in enumerate(spec.depths):
        for j in range(depth):
            ref[f"encoder.layers.{i}.blocks.{j}.attn.relative_position_index"] = relative_position_index(
                spec.window_size
            )
    for k, v in donor.state_dict().items():
        if not k.startswith("encoder."):
            ref[k.removeprefix("adapters.")] = v.clone()
    sobel = torch.tensor([[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]])
    ref["IntegrityPriorLoss.sobel_x.weight"] = sobel
    ref["IntegrityPriorLoss.sobel_y.weight"] = sobel.transpose(-1, -2).contiguous()
    return ref


def test_uncached_hub_weights_with_the_hub_unreachable_fail_at_once(monkeypatch, tmp_path):
    """timm takes no local_files_only: with the Hub unreachable its download runs cache-only, and a
    missing file is one error naming the setting, not a traceback after download retries."""
    from huggingface_hub import constants

    from pdfnet_pipeline.model import backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(backbone.BackboneWeightsError) as info:
        backbone._hub_state("swin_tiny_patch4_window7_224.ms_in1k")
    assert str(info.value).startswith(
        "cannot load the Swin ImageNet weights 'swin_tiny_patch4_window7_224.ms_in1k': not in the Hugging Face "
        "cache, and HF_HUB_OFFLINE is set ("
    )
    assert str(info.value).endswith(
        "); set model.backbone_weights to a local .pth / .safetensors file "
        '(--set model.backbone_weights=\'"FILE"\'), or to "random" to just see the pipeline'
    )
