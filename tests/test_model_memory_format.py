"""Channels-last: the encoder hands its stage outputs over in the model's memory format."""

import copy

import torch

from pdfnet_pipeline.model.backbone import SwinEncoder
from pdfnet_pipeline.model.pdfnet import PRESETS


def _is_channels_last_only(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_channels_last_encoder_keeps_the_format_and_the_values():
    """A channels-last model gets channels-last stage outputs (the B H W C map permuted, no NCHW
    copy) equal to the default model's NCHW outputs to float rounding; the default stays NCHW.
    Bit for bit on the Intel VMs of earlier sessions; on an AMD EPYC oneDNN's channels-last patch
    convolution sums in another order (measured: <= 6.1e-7 of each stage's max)."""
    torch.manual_seed(0)
    enc = SwinEncoder(PRESETS["tiny"][0]).eval()
    enc_cl = copy.deepcopy(enc).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        plain = enc(x)
        for inp in (x.contiguous(memory_format=torch.channels_last), x):  # the patch pass input is NCHW
            kept = enc_cl(inp)
            for a, b in zip(kept, plain):
                assert _is_channels_last_only(a), a.stride()
                torch.testing.assert_close(a, b, rtol=0, atol=2e-6 * b.abs().max().item())
    assert all(t.is_contiguous() for t in plain)
