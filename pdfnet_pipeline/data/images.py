"""Safe decoding of dataset images and masks.

Every failure is a `BadInputError` whose message starts with the file's path, so a long run can
report it by name and carry on (or stop) as the user chose. What is handled and how:

- truncated / corrupt files: decoded fully here (Pillow decodes lazily) so the error surfaces now;
- EXIF orientation: applied to image and mask alike (DIS-5K masks carry none, photos often do);
- CMYK, palette, LA/RGBA, 16-bit and grayscale images: converted to 8-bit RGB (alpha dropped:
  these are photos, not cut-outs);
- masks: any mode to 8-bit single channel (16-bit scaled, RGB averaged to luma, palette via RGB);
- cut-out masks: a mask file with an alpha channel (RGBA, LA, PA, or palette / grey / RGB with a
  transparent colour) whose alpha is not all 255 is a cut-out exported from an editor (the object
  on a transparent background): its alpha IS the mask, whatever the colours. A fully opaque alpha
  carries nothing, so such a mask is read from its colours (luma) like any other;
- decompression bombs: a pixel limit checked from the header before any decoding.

`decode_image(data)` applies the same rules to bytes in memory (an upload), naming it by a label.
`BadInputError.kind` says which problem it is, for callers that answer each differently (the
server's HTTP statuses): "missing", "pixels" (over the limit, or a bomb), "format" (not an image
Pillow reads), "corrupt" (truncated or broken data), else "invalid".
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pdfnet_pipeline.errors import UserError

# DIS-5K's largest images are ~ 6000 x 9000 (54 MP); 200 MP leaves room and stops bombs.
DEFAULT_MAX_PIXELS = 200_000_000
# Our `max_pixels` check (from the header, before decoding) replaces Pillow's global limit, which
# would otherwise refuse anything over ~179 MP at open time whatever the caller allowed.
Image.MAX_IMAGE_PIXELS = None


class BadInputError(UserError, ValueError):
    """An input file that cannot be used; `str()` is one line starting with the path."""

    def __init__(self, path: Path | str, reason: str, kind: str = "invalid"):
        self.path = Path(path)
        self.reason = reason
        self.kind = kind  # missing | pixels | format | corrupt | invalid (module docstring)
        super().__init__(f"{path}: {reason}")


def _open(path: Path, max_pixels: int, data: bytes | None = None) -> Image.Image:
    """The file at `path`, or `data` (bytes in memory, `path` then only names them)."""
    if data is None and not path.is_file():
        raise BadInputError(path, "file not found", "missing")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns/raises with its global limit; we apply ours instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path if data is None else io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise BadInputError(path, f"too many pixels ({err})", "pixels") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = "cannot identify image file" if data is not None and "cannot identify" in str(err) else err
        raise BadInputError(path, f"not a readable image ({reason})", "format") from None
    w, h = im.size
    if w * h > max_pixels:
        raise BadInputError(path, f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,}", "pixels")
    return im


def _decode(path: Path, im: Image.Image) -> Image.Image:
    """Force the full decode (catches truncation), then apply EXIF orientation."""
    try:
        im.load()
        return ImageOps.exif_transpose(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise BadInputError(path, f"corrupt or truncated image data ({err})", "corrupt") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit / 32-bit integer grayscale: scale to 8 bits by the type's range.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 or im.mode.startswith("I;16") else 255.0
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        gray = np.clip(np.round(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)), 0, 255)
        return Image.fromarray(gray.astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA").convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def _cutout_alpha(im: Image.Image) -> np.ndarray | None:
    """The alpha channel of a cut-out mask, or None for a mask without a (non-opaque) alpha."""
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)
    if not has_alpha:
        return None
    alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    # An opaque alpha (a grey mask saved as RGBA) says nothing: read the colours as before.
    return None if alpha.min(initial=255) == 255 else alpha


def load_image(
    path: Path | str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_min_side: int | None = None,
) -> np.ndarray:
    """Decode an image as H x W x 3 uint8 RGB with EXIF orientation applied.

    `draft_min_side`: for JPEGs, let libjpeg decode at a reduced scale (1/2, 1/4, 1/8) as long as
    both sides stay >= this; much faster for big photos that are resized down anyway.
    """
    path = Path(path)
    return _rgb(path, _open(path, max_pixels), draft_min_side)


def decode_image(
    data: bytes,
    *,
    name: str = "upload",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_min_side: int | None = None,
) -> np.ndarray:
    """`load_image` of bytes in memory (nothing written); errors start with `name`."""
    return _rgb(Path(name), _open(Path(name), max_pixels, data), draft_min_side)


def _rgb(path: Path, im: Image.Image, draft_min_side: int | None) -> np.ndarray:
    if draft_min_side and im.format == "JPEG":
        w, h = im.size
        scale = min(w, h) / draft_min_side
        if scale >= 2:
            im.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
    return np.asarray(_to_rgb(_decode(path, im)))


def load_mask(
    path: Path | str,
    *,
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a mask as H x W uint8 in 0..255. `size=(W, H)` must match (the image's size)."""
    path = Path(path)
    im = _decode(path, _open(path, max_pixels))
    if size is not None and im.size != tuple(size):
        raise BadInputError(path, f"mask is {im.size[0]}x{im.size[1]} but its image is {size[0]}x{size[1]}")
    alpha = _cutout_alpha(im)
    if alpha is not None:
        return alpha
    if im.mode == "L":
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    return np.asarray(_to_rgb(im).convert("L"))


def image_size(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(W, H) after EXIF orientation, from the header only (no pixel decoding)."""
    path = Path(path)
    im = _open(path, max_pixels)
    w, h = im.size
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block means no orientation
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_pair(
    image_path: Path | str, mask_path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray]:
    """Image and its mask, checked to be the same size after orientation."""
    image = load_image(image_path, max_pixels=max_pixels)
    mask = load_mask(mask_path, size=(image.shape[1], image.shape[0]), max_pixels=max_pixels)
    return image, mask
