"""DAM v2 wrapper: architectures, weights, the resize rule and preprocessing against references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pdfnet_pipeline.depth import dam


def official_get_size(width: int, height: int, target: int, multiple: int = 14) -> tuple[int, int]:
    """Depth-Anything-V2 `infer_image` sizing (util/transform.py Resize: keep_aspect_ratio=True,
    resize_method="lower_bound", ensure_multiple_of=14), re-typed here as the reference."""

    def constrain(x: float, min_val: int) -> int:
        y = int(np.round(x / multiple) * multiple)
        if y < min_val:
            y = int(np.ceil(x / multiple) * multiple)
        return y

    scale_h, scale_w = target / height, target / width
    if scale_w > scale_h:
        scale_h = scale_w
    else:
        scale_w = scale_h
    return constrain(scale_w * width, target), constrain(scale_h * height, target)


def reference_infer_image(model, bgr: np.ndarray, input_size: int, store_side: int) -> torch.Tensor:
    """The reference's depth map of one image, re-typed from its description: Depth-Anything-V2
    `infer_image` (BGR -> RGB / 255 in float64, official Resize keeping the aspect with cv2
    INTER_CUBIC, ImageNet normalisation, forward, bilinear align_corners=True back to the image's
    size), min-max, then the PDFNet loader's bilinear (align_corners=True) resize to a square."""
    h, w = bgr.shape[:2]
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) / 255.0
    new_w, new_h = official_get_size(w, h, input_size)
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    image = (image - np.array(dam.IMAGENET_MEAN)) / np.array(dam.IMAGENET_STD)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32))[None]
    with torch.no_grad():
        depth = model(pixel_values=x).predicted_depth
    depth = F.interpolate(depth[:, None], (h, w), mode="bilinear", align_corners=True)[0, 0]
    depth = (depth - depth.min()) / (depth.max() - depth.min())
    return F.interpolate(depth[None, None], (store_side, store_side), mode="bilinear", align_corners=True)[0, 0]


def official_model(seed: int):
    """Tiny random DAM with the official position-embedding formula re-typed in the tests."""
    import types

    from test_depth_posemb import official_interpolate_pos_encoding

    model, _ = dam.load_dam("tiny", "random", seed=seed, posemb="transformers")
    emb = model.backbone.embeddings
    emb.interpolate_pos_encoding = types.MethodType(official_interpolate_pos_encoding, emb)
    return model


@pytest.mark.parametrize("arch,expected", [("small", 24_785_089), ("base", 97_470_785), ("large", 335_315_649)])
def test_architecture_parameter_counts_match_the_released_models(arch, expected):
    from transformers import DepthAnythingForDepthEstimation

    with torch.device("meta"):  # no memory, no init cost
        model = DepthAnythingForDepthEstimation(dam.dam_config(arch))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_input_side_follows_the_official_sizing_rule():
    for side in list(range(14, 2100, 7)) + [518, 1024]:
        w, h = official_get_size(side, side, side)
        assert w == h == dam.input_side(side), side
    assert dam.input_side(518) == 518
    assert dam.input_side(1024) == 1036
    # A non-square 1024 input (the official code keeps the aspect): its short side is 1036 too.
    w, h = official_get_size(1365, 1024, 1024)
    assert min(w, h) == 1036 and h == 1036
    w, h = official_get_size(1024, 768, 1024)
    assert min(w, h) == 1036


def test_keep_shape_is_the_official_resize_rule():
    # The example, by hand: 518 / 1944 * 2592 = 690.67 -> 14 * round(49.33) = 686.
    assert dam.input_shape(2592, 1944, 518, "keep") == (518, 686)
    assert dam.input_shape(1944, 2592, 518, "keep") == (686, 518)
    # At 1024 the short side 1024 rounds to 1022 < 1024, so up to 1036; 1365.3 -> 1372.
    assert dam.input_shape(2592, 1944, 1024, "keep") == (1036, 1372)
    # 3:2 with a half-way case: 518 / 1480 * 2220 = 777 = 14 * 55.5; numpy rounds half to even.
    w, h = official_get_size(2220, 1480, 518)
    assert dam.input_shape(2220, 1480, 518, "keep") == (h, w)
    assert dam.input_shape(2592, 1944, 518) == (518, 518)  # square: the aspect is not kept
    for width in range(100, 6001, 37):
        for height in (width * 3 // 4, width * 2 // 3, width * 9 // 16, width, width * 4 // 3, width * 16 // 9):
            for target in (518, 1024):
                w, h = official_get_size(width, height, target)
                assert dam.input_shape(width, height, target, "keep") == (h, w), (width, height, target)
    with pytest.raises(ValueError, match="unknown aspect 'crop'"):
        dam.input_shape(100, 80, 518, "crop")


def test_predict_keep_equals_the_retyped_infer_image():
    rng = np.random.default_rng(0)
    bgr = cv2.resize(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8), (410, 300))  # smooth-ish 4:3
    model, _ = dam.load_dam("tiny", "random", seed=2)  # default posemb: official
    want = reference_infer_image(official_model(2), bgr, 140, 96)
    rgb = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)
    shape = dam.input_shape(410, 300, 140, "keep")
    assert shape == (140, 196)
    with torch.no_grad():
        got, finite = dam.predict_keep(model, dam.to_model_input(rgb, shape)[None], [(300, 410)], 96)
    assert got.shape == (1, 96, 96) and bool(finite.all())
    # Measured 4.4e-6 max: torch float32 bicubic vs cv2 float64 INTER_CUBIC inputs, nothing else
    # (with transformers' position embeddings instead: 3e-2).
    torch.testing.assert_close(got[0], want, rtol=0, atol=2e-5)
    # The map is min-maxed at the image's size, not at 96²: its extremes need not reach 0 and 1.
    assert got.min().item() >= 0.0 and got.max().item() <= 1.0
    # And it is not the square mode's map.
    square, _ = dam.predict(model, dam.to_model_input(rgb, 140)[None], 96)
    assert (square[0] - got[0]).abs().mean().item() > 0.02


def test_float32_means_ieee_not_tf32_and_the_flags_are_restored(tiny):
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    seen = {}

    def hook(name):
        return lambda m, i, o: seen.__setitem__(name, (conv.fp32_precision, matmul.fp32_precision))

    h1 = tiny.backbone.encoder.layer[0].mlp.fc1.register_forward_hook(hook("backbone"))
    h2 = tiny.head.conv3.register_forward_hook(hook("head"))
    try:
        px = torch.randn(1, 3, 28, 28)
        dam.raw_depth(tiny, px)
        assert seen == {"backbone": ("ieee", "ieee"), "head": ("ieee", "ieee")}
        dam.raw_depth(tiny, px, torch.bfloat16)  # bf16 backbone: its fp32 flags untouched
        assert seen == {"backbone": before, "head": ("ieee", "ieee")}
    finally:
        h1.remove()
        h2.remove()
    assert (conv.fp32_precision, matmul.fp32_precision) == before


def test_preprocessing_matches_cv2_bicubic_and_imagenet_normalisation():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(300, 410, 3), dtype=np.uint8)
    x = dam.to_model_input(torch.from_numpy(img).permute(2, 0, 1), 518)
    ref = cv2.resize(img.astype(np.float32) / 255.0, (518, 518), interpolation=cv2.INTER_CUBIC)
    ref = (ref - np.array(dam.IMAGENET_MEAN, np.float32)) / np.array(dam.IMAGENET_STD, np.float32)
    assert x.shape == (3, 518, 518) and x.dtype == torch.float32
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), ref, atol=2e-4)
    # Downsizing also matches cv2 (no antialias on either side).
    x = dam.to_model_input(torch.from_numpy(img).permute(2, 0, 1), 140)
    ref = cv2.resize(img.astype(np.float32) / 255.0, (140, 140), interpolation=cv2.INTER_CUBIC)
    ref = (ref - np.array(dam.IMAGENET_MEAN, np.float32)) / np.array(dam.IMAGENET_STD, np.float32)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), ref, atol=2e-4)


@pytest.fixture(scope="module")
def tiny():
    model, prov = dam.load_dam("tiny", "random", seed=3)
    return model


def test_predict_equals_the_transformers_forward_then_spec_postprocessing(tiny):
    torch.manual_seed(0)
    px = torch.randn(2, 3, 70, 70)
    maps, finite = dam.predict(tiny, px, 96)
    ref = tiny(pixel_values=px).predicted_depth  # (2, 70, 70)
    ref = F.interpolate(ref[:, None], size=(96, 96), mode="bilinear", align_corners=True)[:, 0]
    lo = ref.flatten(1).min(1).values[:, None, None]
    hi = ref.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(maps, (ref - lo) / (hi - lo), rtol=0, atol=1e-6)
    assert finite.tolist() == [True, True]
    assert maps.shape == (2, 96, 96)
    assert maps.flatten(1).min(1).values.tolist() == [0.0, 0.0]
    assert maps.flatten(1).max(1).values.tolist() == [1.0, 1.0]


def test_bf16_autocast_runs_backbone_in_bf16_and_dpt_head_in_float32(tiny):
    seen = {}
    h1 = tiny.backbone.encoder.layer[0].mlp.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("backbone", o.dtype)
    )
    h2 = tiny.head.conv3.register_forward_hook(lambda m, i, o: seen.__setitem__("head", (i[0].dtype, o.dtype)))
    h3 = tiny.neck.convs[0].register_forward_hook(lambda m, i, o: seen.__setitem__("neck", o.dtype))
    try:
        torch.manual_seed(1)
        px = torch.randn(1, 3, 70, 70)
        maps, finite = dam.predict(tiny, px, 70, amp_dtype=torch.bfloat16)
    finally:
        for h in (h1, h2, h3):
            h.remove()
    assert seen == {"backbone": torch.bfloat16, "neck": torch.float32, "head": (torch.float32, torch.float32)}
    assert maps.dtype == torch.float32 and bool(finite.all())
    full, _ = dam.predict(tiny, px, 70)
    assert (maps - full).abs().max().item() < 0.1  # bf16 backbone: close, not equal


def test_minmax_of_a_constant_map_is_zero_not_nan():
    out = dam.minmax01(torch.full((1, 4, 4), 2.5))
    assert torch.equal(out, torch.zeros(1, 4, 4))


def test_predict_flags_non_finite_maps(tiny):
    px = torch.zeros(2, 3, 28, 28)
    px[1, 0, 0, 0] = float("nan")
    _, finite = dam.predict(tiny, px, 28)
    assert finite.tolist() == [True, False]


def test_random_weights_are_seeded():
    a, prov = dam.load_dam("tiny", "random", seed=5)
    b, _ = dam.load_dam("tiny", "random", seed=5)
    c, _ = dam.load_dam("tiny", "random", seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert prov == {"arch": "tiny", "weights": "random", "seed": 5}


def test_local_directory_loads_exactly_like_a_user_would(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "dam-tiny")
    model, prov = dam.load_dam("tiny", str(tmp_path / "dam-tiny"))
    ref = tiny.state_dict()
    got = model.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert prov["weights"] == str((tmp_path / "dam-tiny").resolve())
    assert model.backbone.config._attn_implementation == "sdpa"
    with pytest.raises(dam.DamWeightsError, match="not DAM v2 small"):
        dam.load_dam("small", str(tmp_path / "dam-tiny"))


def test_hub_weights_offline_give_a_clear_message():
    with pytest.raises(dam.DamWeightsError) as info:
        dam.load_dam("small", "hub", allow_download=False)
    msg = str(info.value)
    assert "depth-anything/Depth-Anything-V2-Small-hf" in msg
    assert "huggingface-cli download" in msg and '"random"' in msg


def test_unreachable_hub_fails_at_once_without_a_download_attempt(monkeypatch):
    """Weights not cached + HF_HUB_OFFLINE: one cache lookup, no network call (whose retries took
    29 s), and one line naming the caller's option."""
    from transformers import DepthAnythingForDepthEstimation

    calls = []

    def from_pretrained(source, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        raise OSError("not cached")

    monkeypatch.setattr(DepthAnythingForDepthEstimation, "from_pretrained", from_pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(dam.DamWeightsError) as info:
        dam.load_dam("large", "hub", weights_hint="--dam-weights {}")
    assert calls == [True]  # the cache only
    assert str(info.value) == (
        "cannot load DAM v2 large weights 'depth-anything/Depth-Anything-V2-Large-hf': not in the Hugging Face "
        "cache, and HF_HUB_OFFLINE is set; pass --dam-weights DIR for a local copy (`huggingface-cli download "
        "depth-anything/Depth-Anything-V2-Large-hf --local-dir DIR` on a machine with internet) or "
        "--dam-weights random to just see the pipeline"
    )
    with pytest.raises(dam.DamWeightsError, match=r"^no official hub id for DAM v2 architecture 'tiny'; pass "):
        dam.load_dam("tiny", "hub", weights_hint="--dam-weights {}")
