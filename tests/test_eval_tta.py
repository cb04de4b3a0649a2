import torch

from pdfnet_pipeline.eval.tta import predict_logits, scaled_size, to_native_uint8


def identity(image, depth):
    return image[:, :1] + 0 * depth


def test_scaled_sizes_are_network_multiples():
    assert [scaled_size((1024, 1024), s) for s in (0.75, 1.0, 1.25)] == [(768, 768), (1024, 1024), (1280, 1280)]
    assert scaled_size((512, 256), 0.75) == (512, 256)  # 384 -> 512, 192 -> 256 (nearest multiple)


def test_flip_is_undone_exactly():
    x = torch.rand(2, 3, 64, 128)  # asymmetric
    out = predict_logits(identity, x, x[:, :1], tta=True, scales=(1.0,))
    torch.testing.assert_close(out, x[:, :1], rtol=0, atol=1e-7)


def test_tta_is_identity_for_a_symmetric_smooth_input():
    # Left-right symmetric, vertically linear: bilinear down/up-sampling reproduces it away from
    # the border rows, so every de-augmented view equals the input there.
    h, w = 256, 256
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    img = (ys + 0 * xs.abs()).expand(1, 3, h, w).contiguous()
    out = predict_logits(identity, img, img[:, :1], tta=True)
    torch.testing.assert_close(out[..., 8:-8, :], img[:, :1, 8:-8, :], rtol=0, atol=2e-3)
    # A model that is not flip-equivariant would break it: TTA really runs the flipped views.
    lopsided = lambda im, d: im[:, :1] * torch.linspace(0, 1, im.shape[-1])  # noqa: E731
    assert not torch.allclose(predict_logits(lopsided, img, img[:, :1], tta=True), lopsided(img, img))


def test_native_uint8_rule():
    logits = torch.tensor([[[[0.0, 100.0], [-100.0, 0.0]]]])
    out = to_native_uint8(logits, (2, 2))
    assert out.dtype == torch.uint8
    assert out.flatten().tolist() == [127, 255, 0, 127]  # 0.5 * 255 = 127.5 truncates to 127
