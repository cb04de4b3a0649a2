"""Joint augmentations: a known pattern lands where the geometry says, identically in every array."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from pdfnet_pipeline.data import augment as A

S = 128
# Two asymmetric blobs: (x, y) in pixel coordinates, so flips and turns are visible.
BLOBS = [(40.0, 30.0), (90.0, 75.0)]


def blob_image(points, size=S, sigma=3.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.zeros((size, size))
    for x, y in points:
        out += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.clip(out * 255, 0, 255)


def centroid_near(arr: np.ndarray, x: float, y: float, radius: int = 10) -> tuple[float, float]:
    a = arr.astype(np.float64)
    x0, x1 = int(max(x - radius, 0)), int(min(x + radius + 1, a.shape[1]))
    y0, y1 = int(max(y - radius, 0)), int(min(y + radius + 1, a.shape[0]))
    win = a[y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return float((win * xx).sum() / win.sum()), float((win * yy).sum() / win.sum())


def forward_point(params: A.AugParams, x: float, y: float, size=S) -> tuple[float, float]:
    """Where an input point goes, written forward (independently of inverse_matrix)."""
    c = (size - 1) / 2
    qx, qy = x - c, y - c
    if params.flip:
        qx = -qx
    if params.angle:
        a = math.radians(params.angle)
        k = size / A.inscribed_side(size, params.angle)
        # counter-clockwise as displayed, y pointing down
        qx, qy = (qx * math.cos(a) + qy * math.sin(a)) * k, (-qx * math.sin(a) + qy * math.cos(a)) * k
    if params.crop_hw:
        ch, cw = params.crop_hw
        qx, qy = qx * size / cw, qy * size / ch
    return qx + c, qy + c


def sample_arrays():
    pat = blob_image(BLOBS)
    image = np.repeat(pat.round().astype(np.uint8)[..., None], 3, axis=2)
    mask = pat.round().astype(np.uint8)
    depth = (pat / 255).astype(np.float16)
    target = (1 - pat / 255).astype(np.float16)  # inverted, to catch a swapped or skipped map
    return image, mask, [depth, target]


CASES = {
    "flip": A.AugParams(flip=True),
    "rotate+17": A.AugParams(angle=17.0),
    "rotate-29.5": A.AugParams(angle=-29.5),
    "crop": A.AugParams(crop_hw=(100, 110)),
    "all": A.AugParams(flip=True, angle=-12.0, crop_hw=(120, 99)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pattern_lands_where_expected_in_every_array(name):
    params = CASES[name]
    image, mask, depths = sample_arrays()
    img2, mask2, (d2, t2) = A.apply(params, image, mask, depths)
    assert img2.shape == image.shape and img2.dtype == np.uint8
    assert mask2.dtype == np.uint8 and d2.dtype == np.float16 and t2.dtype == np.float16
    # Alignment: every array holds the same warped pattern.
    for ch in range(3):
        np.testing.assert_array_equal(img2[..., ch], mask2)
    assert np.abs(d2.astype(np.float64) * 255 - mask2).max() <= 1.0
    assert np.abs((1 - t2.astype(np.float64)) * 255 - mask2).max() <= 1.0
    # Geometry: each blob's centroid is where the forward transform puts it.
    for x, y in BLOBS:
        ex, ey = forward_point(params, x, y)
        for arr in (img2[..., 1], mask2, d2.astype(np.float32) * 255):
            cx, cy = centroid_near(arr, ex, ey)
            assert abs(cx - ex) < 0.6 and abs(cy - ey) < 0.6, (name, (x, y), (ex, ey), (cx, cy))


def test_flip_is_exact_pil_mirror():
    image, mask, depths = sample_arrays()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, image.shape, dtype=np.uint8)
    img2, mask2, _ = A.apply(A.AugParams(flip=True), image, mask, depths)
    np.testing.assert_array_equal(img2, np.asarray(ImageOps.mirror(Image.fromarray(image))))
    np.testing.assert_array_equal(mask2, np.asarray(ImageOps.mirror(Image.fromarray(mask))))


@pytest.mark.parametrize("angle", [23.0, -8.0])
def test_rotation_matches_pil_rotate_crop_resize(angle):
    """Reference: PIL rotate (counter-clockwise), crop the inscribed square, resize back."""
    pat = blob_image(BLOBS + [(64, 100), (20, 90)], sigma=6.0).astype(np.uint8)
    ours = A.apply_geometry(A.AugParams(angle=angle), [pat])[0].astype(np.float64)
    s = A.inscribed_side(S, angle)
    lo = (S - s) / 2
    ref = Image.fromarray(pat).rotate(angle, resample=Image.BILINEAR)
    ref = ref.resize((S, S), Image.BILINEAR, box=(lo, lo, lo + s, lo + s))
    diff = np.abs(ours - np.asarray(ref, dtype=np.float64))
    # two resamplings (PIL) vs one (ours): small differences, never a misplaced pattern
    assert diff.mean() < 1.0 and diff.max() < 12, (diff.mean(), diff.max())
    wrong = A.apply_geometry(A.AugParams(angle=-angle), [pat])[0].astype(np.float64)
    assert np.abs(wrong - np.asarray(ref, dtype=np.float64)).mean() > 5 * diff.mean()


def test_photometric_is_pil_and_touches_only_the_image():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (S, S), dtype=np.uint8)
    depth = rng.random((S, S)).astype(np.float16)
    params = A.AugParams(enhance=(1.3, 0.7, 0.2, 2.5), grayscale=True)
    img2, mask2, (d2,) = A.apply(params, image, mask, [depth])
    ref = Image.fromarray(image)
    ref = ImageEnhance.Brightness(ref).enhance(1.3)
    ref = ImageEnhance.Contrast(ref).enhance(0.7)
    ref = ImageEnhance.Color(ref).enhance(0.2)
    ref = ImageEnhance.Sharpness(ref).enhance(2.5).convert("L")
    for ch in range(3):
        np.testing.assert_array_equal(img2[..., ch], np.asarray(ref))
    assert mask2 is mask and d2 is depth


def test_sample_params_is_seeded_and_follows_the_probabilities():
    cfg = A.AugmentConfig()
    a = [A.sample_params(np.random.default_rng([7, i]), cfg, 1024) for i in range(4000)]
    b = [A.sample_params(np.random.default_rng([7, i]), cfg, 1024) for i in range(4000)]
    assert a == b
    freq = lambda f: sum(map(f, a)) / len(a)  # noqa: E731
    assert abs(freq(lambda p: p.flip) - 0.5) < 0.03
    assert abs(freq(lambda p: p.angle != 0) - 0.5) < 0.03
    assert abs(freq(lambda p: p.enhance is not None) - 0.5) < 0.03
    assert abs(freq(lambda p: p.grayscale) - 0.25) < 0.03
    assert abs(freq(lambda p: p.crop_hw is not None) - 0.5) < 0.03
    angles = [p.angle for p in a if p.angle]
    assert -30 <= min(angles) < -29 and 29 < max(angles) < 30
    crops = [v for p in a if p.crop_hw for v in p.crop_hw]
    assert min(crops) == 1024 - 30 and max(crops) == 1023


def test_identity_params_return_inputs_untouched():
    image, mask, depths = sample_arrays()
    img2, mask2, d2 = A.apply(A.AugParams(), image, mask, depths)
    assert img2 is image and mask2 is mask and d2[0] is depths[0]


def test_normalize_image_matches_imagenet_formula():
    x = torch.tensor([[[[124, 116, 104], [0, 255, 10]]]], dtype=torch.uint8)  # 1 x 1 x 2 x 3
    out = A.normalize_image(x)
    assert out.shape == (1, 3, 1, 2)
    exp = (np.array([[124, 116, 104], [0, 255, 10]]) / 255 - np.array(A.IMAGENET_MEAN)) / np.array(A.IMAGENET_STD)
    np.testing.assert_allclose(out[0, :, 0, :].T.numpy(), exp, atol=1e-5)
    assert abs(out[0, 0, 0, 0].item() - (124 / 255 - 0.485) / 0.229) < 1e-5


def test_normalize_image_constants_cached_per_device_and_values_unchanged():
    """mean/std are built once per device (no host->device copy per batch) and the result equals,
    bit for bit, the per-call construction it replaced."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    xf = x.permute(0, 3, 1, 2).float()
    m = torch.tensor(A.IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(A.IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    assert torch.equal(A.normalize_image(x), (xf - m) / s)
    cpu = torch.device("cpu")
    first = A._scaled_mean_std(A.IMAGENET_MEAN, A.IMAGENET_STD, cpu)
    A.normalize_image(x)
    assert A._scaled_mean_std(A.IMAGENET_MEAN, A.IMAGENET_STD, cpu) is first
    # other constants (given as lists) are their own entry
    out = A.normalize_image(x, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert torch.equal(out, (xf - 127.5) / 127.5)


@pytest.mark.parametrize(
    "params",
    [A.AugParams(angle=17.0), A.AugParams(flip=True, angle=-23.0, crop_hw=(280, 290)), A.AugParams(crop_hw=(271, 299))],
)
def test_shared_warps_give_each_array_its_own_warp(params):
    """Image + mask share one 4-channel warp, the float16 maps one float32 warp: the bytes must be
    those of one warp per array (reference: OpenCV per array, numpy's float16 conversions)."""
    import cv2

    rng = np.random.default_rng(3)
    n = 300
    image = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (n, n), dtype=np.uint8)
    d1, d2 = (rng.random((n, n)).astype(np.float16) for _ in range(2))
    f32 = rng.random((n, n)).astype(np.float32)  # another dtype: warped on its own
    m = A.inverse_matrix(params, n)[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP

    def ref(a):
        work = a.astype(np.float32) if a.dtype == np.float16 else a
        out = cv2.warpAffine(work, m, (n, n), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        return out.astype(a.dtype)

    out = A.apply_geometry(params, [image, mask, d1, d2, f32])
    for got, a in zip(out, [image, mask, d1, d2, f32]):
        assert got.dtype == a.dtype and got.shape == a.shape and got.flags.c_contiguous
        np.testing.assert_array_equal(got, ref(a))
    for alone in (image, d1):  # an array on its own: no stack
        np.testing.assert_array_equal(A.apply_geometry(params, [alone])[0], ref(alone))
    # and the warp really moved things (a no-op would pass the dtype checks above)
    assert np.abs(out[0].astype(int) - image).mean() > 20


@pytest.mark.parametrize(
    "factors", [(1.3, 0.7, 0.2, 2.5), (0.6, 1.4, 1.9, 0.1), (0.5, 1.5, 0.0, 3.0), (1.0, 1.0, 1.0, 1.0)]
)
def test_colour_enhance_is_pil_byte_for_byte(factors):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    image[:40, :50] = rng.integers(100, 110, (40, 50, 3))  # a flat patch: smoothing keeps it
    ref = Image.fromarray(image)
    for enhancer, f in zip(
        (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color, ImageEnhance.Sharpness), factors
    ):
        ref = enhancer(ref).enhance(f)
    np.testing.assert_array_equal(A.apply_photometric(A.AugParams(enhance=factors), image), np.asarray(ref))


def test_smoothing_is_pils_smooth_filter():
    from PIL import ImageFilter

    rng = np.random.default_rng(6)
    noise = rng.integers(0, 256, (203, 157, 3), dtype=np.uint8)
    binary = (rng.integers(0, 2, (64, 65, 3)) * 255).astype(np.uint8)  # extremes: sums at both ends
    for image in (noise, binary):
        ours = A.pil_smooth(image)
        np.testing.assert_array_equal(ours, np.asarray(Image.fromarray(image).filter(ImageFilter.SMOOTH)))
        assert (ours != image).mean() > 0.5  # it smooths (the border ring alone would be ~3%)
