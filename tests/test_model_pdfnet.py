"""Full model: parameter counts, output shapes (1024 on meta, 256 real), gradients, switches."""

import pytest
import torch

from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet, normalize_depth, parameter_counts
from pdfnet_pipeline.model.pdfnet import PDFNet

# spec/model.md "Size and speed anchors", measured on the reference code
REFERENCE_COUNTS = {
    "paper": {
        "encoder": 87_281_784,
        "adapters": 2_950_656,
        "decoder": 7_614_086,
        "depth_decoder": 3_846_789,
        "inference": 97_846_526,
        "training": 101_693_315,
    },
    "v2": {"depth_decoder": 6_799_365, "inference": 97_846_526, "training": 104_645_891},
}


def _meta_model(variant):
    with torch.device("meta"):
        return PDFNet(PDFNetConfig(variant=variant))


@pytest.mark.parametrize("variant", ["paper", "v2"])
def test_reference_parameter_counts(variant):
    counts = parameter_counts(_meta_model(variant))
    for key, value in REFERENCE_COUNTS[variant].items():
        assert counts[key] == value, key


@pytest.mark.parametrize("variant", ["paper", "v2"])
def test_shapes_at_1024_on_meta(variant):
    model = _meta_model(variant)
    with torch.device("meta"):
        out = model(torch.zeros(1, 3, 1024, 1024), torch.zeros(1, 1, 1024, 1024))
        logits = model.predict(torch.zeros(1, 3, 1024, 1024), torch.zeros(1, 1, 1024, 1024))
    assert [p.shape[-1] for p in out.preds] == [1024, 256, 128, 64, 32, 32]
    assert [p.shape[-1] for p in out.depth_preds] == [512, 128, 64, 32, 16]
    assert all(p.shape[:2] == (1, 1) for p in out.preds + out.depth_preds)
    assert logits.shape == (1, 1, 1024, 1024)
    assert out.losses == {}


@pytest.fixture(scope="module")
def tiny_batch():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 256, 256)
    depth = torch.rand(2, 1, 256, 256) * 5 + 1
    mask = (torch.rand(2, 1, 256, 256) > 0.5).float()
    return image, depth, mask


def test_tiny_forward_backward_at_256(tiny_batch):
    image, depth, mask = (t[:1] for t in tiny_batch)
    torch.manual_seed(0)
    model = build_pdfnet(PDFNetConfig(preset="tiny"))
    out = model(image, depth, mask, depth_target=depth)
    assert [tuple(p.shape) for p in out.preds] == [(1, 1, s, s) for s in (256, 64, 32, 16, 8, 8)]
    assert [tuple(p.shape) for p in out.depth_preds] == [(1, 1, s, s) for s in (128, 32, 16, 8, 4)]
    assert set(out.losses) == {"structure", "ssim", "integrity", "depth", "total"}
    total = out.losses["total"]
    assert torch.isfinite(total) and total.item() > 0
    parts = sum(v.detach() for k, v in out.losses.items() if k != "total")
    torch.testing.assert_close(total.detach(), parts)
    total.backward()
    params = dict(model.named_parameters())
    for name in (
        "encoder.swin.patch_embed.proj.weight",
        "decoder.FSE_mix.3.IP.Att.in_proj_weight",
        "decoder.Bside.0.weight",
        "depth_decoder.Bside.4.weight",
        "adapters.Glob.0.0.weight",
    ):
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # patch pass detached: the patch-only encoder features get no gradient from it
    _, _, _, P = model._features(image, depth)
    assert not any(p.requires_grad for p in P)


def test_predict_is_s0_and_samples_are_independent(tiny_batch):
    image, depth, _ = tiny_batch
    torch.manual_seed(0)
    model = build_pdfnet(PDFNetConfig(preset="tiny")).eval()
    with torch.no_grad():
        both = model.predict(image, depth)
        # forward's s0 for sample 0 alone, depth rescaled (min-max per sample removes the scale)
        first = model(image[:1], depth[:1] * 3 + 7).preds[0]
    assert both.shape == (2, 1, 256, 256)
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("patch_grad", [False, True])
def test_patch_selection_detached_unless_patch_grad(patch_grad):
    from pdfnet_pipeline.model.fse import FSE

    torch.manual_seed(0)
    fse = FSE(16, 8, 1, patch_grad=patch_grad)
    seen = []
    fse.P_channelswich.register_forward_hook(lambda m, i, o: seen.append(i[0].requires_grad))
    img, dep = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    patch = torch.randn(1, 16, 16, 16, requires_grad=True)
    pred = torch.randn(1, 1, 16, 16, requires_grad=True)
    out = fse(img, dep, patch, pred)
    assert seen == [patch_grad]
    assert [tuple(o.shape) for o in out] == [(1, 8, 8, 8), (1, 8, 8, 8), (1, 8, 16, 16)]
    out[2].sum().backward()
    assert (patch.grad is not None and patch.grad.abs().sum() > 0) == patch_grad


def test_depth_is_normalised_per_sample():
    d = torch.stack([torch.linspace(0, 1, 16).view(1, 4, 4), torch.linspace(10, 30, 16).view(1, 4, 4)])
    n = normalize_depth(d)
    torch.testing.assert_close(n[0], n[1])
    assert n.amin().item() == 0.0 and n.amax().item() == 1.0
    # batch of one: identical to the reference's whole-tensor min-max
    one = d[1:]
    torch.testing.assert_close(normalize_depth(one), (one - one.min()) / (one.max() - one.min()))


def test_rejects_sizes_the_tiling_cannot_cut():
    model = build_pdfnet(PDFNetConfig(preset="tiny"))
    with pytest.raises(ValueError, match="multiples of 256"):
        model.predict(torch.zeros(1, 3, 320, 320), torch.zeros(1, 1, 320, 320))
