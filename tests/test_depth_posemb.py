"""The documented difference between transformers' DINOv2 position-embedding interpolation and the
official DINOv2 code (which Depth-Anything-V2's own `infer_image` runs), measured rather than
assumed: none at 518 (the trained 37 x 37 grid), small but non-zero at 1036."""

import math
import types

import pytest
import torch
import torch.nn as nn

from pdfnet_pipeline.depth import dam


def official_interpolate_pos_encoding(self, embeddings, height, width):
    """facebookresearch/dinov2 `interpolate_pos_encoding` with its defaults (interpolate_offset
    0.1, antialias off), re-typed from the published formula: bicubic by a scale factor of
    (grid + 0.1) / 37 instead of to an explicit size."""
    n = self.position_embeddings.shape[1] - 1
    if embeddings.shape[1] - 1 == n and height == width:
        return self.position_embeddings
    cls, pos = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
    dim, p, m = embeddings.shape[-1], self.patch_embeddings.patch_size[0], int(math.sqrt(n))
    pos = nn.functional.interpolate(
        pos.reshape(1, m, m, dim).permute(0, 3, 1, 2).float(),
        mode="bicubic",
        antialias=False,
        scale_factor=((height // p + 0.1) / m, (width // p + 0.1) / m),
    )
    return torch.cat((cls, pos.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


@pytest.mark.parametrize("side, low, high", [(518, 0.0, 0.0), (1036, 1e-4, 1e-2)])
def test_position_embedding_difference_to_the_official_code(side, low, high):
    torch.manual_seed(0)
    model, _ = dam.load_dam("tiny", "random", seed=0)
    x = dam.to_model_input((torch.rand(1, 3, 300, 400) * 255).to(torch.uint8), side)
    emb = model.backbone.embeddings
    with torch.no_grad():
        ours = dam.raw_depth(model, x)
        emb.interpolate_pos_encoding = types.MethodType(official_interpolate_pos_encoding, emb)
        official = dam.raw_depth(model, x)
    rel = ((ours - official).abs().mean() / ours.abs().mean()).item()
    assert low <= rel <= high, rel
