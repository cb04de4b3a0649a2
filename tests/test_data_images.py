"""Bad-input handling of the decoder, on real photos (tests/data/real) and files made from them."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pdfnet_pipeline.data.images import BadInputError, image_size, load_image, load_mask, load_pair


@pytest.fixture()
def car(real_dir):
    return real_dir / "images" / "car-1.jpg"


@pytest.fixture()
def car_rgb(car):
    return np.asarray(Image.open(car).convert("RGB"))


def test_real_pairs_load_with_matching_sizes(real_dir):
    for name in ("car-1.jpg", "cloth-1.jpg", "plants-1.png", "arc2017.png"):
        image, mask = load_pair(real_dir / "images" / name, real_dir / "masks" / (name.rsplit(".", 1)[0] + ".png"))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
    assert load_image(real_dir / "images" / "car-1.jpg").shape == (360, 480, 3)


def test_truncated_jpeg_is_named(tmp_path, car):
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(car.read_bytes()[: car.stat().st_size // 2])
    with pytest.raises(BadInputError) as err:
        load_image(bad)
    assert str(err.value).startswith(str(bad)) and "truncated" in str(err.value)


def test_garbage_file_is_named(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"\x89PNG not really" * 10)
    with pytest.raises(BadInputError, match="garbage.png: not a readable image"):
        load_image(bad)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="file not found"):
        load_mask(tmp_path / "nope.png")


def test_mask_of_another_size(tmp_path, car):
    mask = tmp_path / "m.png"
    Image.new("L", (100, 80)).save(mask)
    with pytest.raises(BadInputError, match=r"m.png: mask is 100x80 but its image is 480x360"):
        load_pair(car, mask)


def test_cmyk_converted_to_rgb(tmp_path, car_rgb):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(car_rgb).convert("CMYK").save(path, quality=100)
    out = load_image(path)
    assert out.shape == car_rgb.shape
    # CMYK JPEG round trip is lossy but close: mean abs error of a few levels.
    assert np.abs(out.astype(int) - car_rgb.astype(int)).mean() < 4


def test_palette_converted_exactly(tmp_path, car_rgb):
    path = tmp_path / "pal.png"
    pal = Image.fromarray(car_rgb).quantize(64)
    pal.save(path)
    np.testing.assert_array_equal(load_image(path), np.asarray(pal.convert("RGB")))


def test_16bit_grayscale_scaled_to_8bit(tmp_path):
    values = np.arange(256, dtype=np.uint16).reshape(16, 16)
    path = tmp_path / "g16.png"
    Image.fromarray(values * 257).save(path)  # full 16-bit range: v * 257
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    np.testing.assert_array_equal(out[..., 0], values.astype(np.uint8))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_array_equal(load_mask(path), values.astype(np.uint8))


def test_grayscale_and_rgba(tmp_path, car_rgb):
    gray = tmp_path / "g.png"
    Image.fromarray(car_rgb[..., 1]).save(gray)
    out = load_image(gray)
    np.testing.assert_array_equal(out, np.repeat(car_rgb[..., 1:2], 3, axis=2))
    rgba = tmp_path / "a.png"
    alpha = np.full(car_rgb.shape[:2], 7, np.uint8)
    Image.fromarray(np.dstack([car_rgb, alpha])).save(rgba)
    np.testing.assert_array_equal(load_image(rgba), car_rgb)  # alpha dropped, colours intact


def test_rgb_mask_becomes_single_channel(tmp_path):
    path = tmp_path / "rgbmask.png"
    arr = np.zeros((10, 12, 3), np.uint8)
    arr[2:5, 3:7] = 255
    Image.fromarray(arr).save(path)
    out = load_mask(path)
    assert out.shape == (10, 12) and out.max() == 255 and (out > 0).sum() == 12


def test_exif_orientation_applied_consistently(tmp_path, car_rgb):
    """A portrait photo stored landscape + orientation 6 (rotate 90 CW for display); its mask was
    drawn on the displayed picture. Both must line up after loading."""
    raw = car_rgb.copy()
    raw[0:20, 0:30] = (255, 0, 0)  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(raw).save(path, exif=exif.tobytes(), quality=100)
    shown = np.rot90(raw, k=-1)  # 90 degrees clockwise
    mask = np.zeros(shown.shape[:2], np.uint8)
    mask[0:30, -20:] = 255  # where the marker is displayed: top-right
    mask_path = tmp_path / "rot.png"
    Image.fromarray(mask).save(mask_path)
    assert image_size(path) == (360, 480)
    image, loaded_mask = load_pair(path, mask_path)
    assert image.shape == (480, 360, 3)
    marker = image[loaded_mask > 0]
    assert marker[:, 0].mean() > 200 and marker[:, 1].mean() < 60  # red under the mask


def _header_only_png(path, width: int, height: int):
    """A PNG whose header claims width x height, with (almost) no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + chunk(b"IEND", b"")
    )
    return path


def test_pixel_limit_from_header_only(tmp_path, car):
    with pytest.raises(BadInputError, match="exceeds the limit of 100,000"):
        load_image(car, max_pixels=100_000)
    # A 40000 x 40000 PNG header with no pixel data: refused before any decoding.
    bomb = _header_only_png(tmp_path / "bomb.png", 40000, 40000)
    with pytest.raises(BadInputError) as err:
        load_image(bomb)
    assert str(err.value).startswith(str(bomb)) and "pixels" in str(err.value)


def test_our_pixel_limit_replaces_pillows(tmp_path):
    """195 MP is over Pillow's own default (~179 MP) but under ours (200 MP): the header passes,
    and the (missing) pixel data is what fails."""
    path = _header_only_png(tmp_path / "tall.png", 15000, 13000)
    with pytest.raises(BadInputError, match="corrupt or truncated"):
        load_image(path)
    with pytest.raises(BadInputError, match="exceeds the limit of 100,000,000"):
        load_image(path, max_pixels=100_000_000)


def test_draft_mode_decodes_big_jpeg_smaller(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(big)
    out = load_image(big, draft_min_side=1000)
    assert out.shape == (1500, 2000, 3)  # libjpeg scale 1/2 keeps the short side >= 1000
    assert abs(int(out[10, 10, 1]) - 200) <= 2


def test_cutout_mask_alpha_is_the_mask(tmp_path, car_rgb):
    """A mask exported as a cut-out (the photo's colours, the object in the alpha) reads as its
    alpha; an opaque alpha carries nothing, so that mask reads from its colours as before."""
    h, w = car_rgb.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    alpha[50:200, 100:300] = 255
    alpha[60:70, 100:300] = 128  # a soft edge survives as is
    cutout = tmp_path / "cutout.png"
    Image.fromarray(np.dstack([car_rgb, alpha])).save(cutout)
    np.testing.assert_array_equal(load_mask(cutout), alpha)
    _, mask = load_pair(_save_jpg(tmp_path, car_rgb), cutout)  # sizes checked as for any mask
    np.testing.assert_array_equal(mask, alpha)
    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([car_rgb[..., 0], alpha]), "LA").save(la)
    np.testing.assert_array_equal(load_mask(la), alpha)
    # A palette mask whose background colour is transparent (index 0): foreground = opaque.
    pal = Image.fromarray((alpha > 0).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 200, 30, 30])
    pal.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png"), np.where(alpha > 0, 255, 0))
    # Opaque alpha: the grey values are the mask (today's behaviour for RGBA-saved grey masks).
    grey = np.where(alpha > 0, 255, 0).astype(np.uint8)
    opaque = tmp_path / "opaque.png"
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)])).save(opaque)
    np.testing.assert_array_equal(load_mask(opaque), grey)


def _save_jpg(folder, rgb):
    path = folder / "photo.jpg"
    Image.fromarray(rgb).save(path)
    return path
