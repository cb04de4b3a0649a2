"""Joint training augmentations: one geometric warp shared by image, mask and every depth map.

The spec's geometric steps (horizontal flip; rotation by an angle in [-30, 30) followed by a crop
of the largest inscribed square and a resize back; a slight centre crop and resize back) are all
affine maps of the output grid onto the input grid. They are composed into one 2x3 matrix and
applied with a single `cv2.warpAffine`: one interpolation instead of three (less blur, about 3x
less work) and alignment between the arrays holds by construction; image + mask share one
4-channel warp and the depth maps another. The photometric steps (PIL ImageEnhance brightness /
contrast / colour / sharpness, grayscale) touch the image only and are PIL's byte for byte (PIL
itself, but for sharpness's smoothing filter, computed by OpenCV to the same bytes). ImageNet normalisation happens on the device
(`normalize_image`), never here: the data path stays uint8 / float16.

Parameters are drawn (`sample_params`) separately from being applied (`apply`) so tests can force
each transform and the dataset can draw them from a per-sample seeded generator.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageEnhance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Probabilities and ranges; defaults follow spec/pipeline.md "Stage train"."""

    hflip: float = 0.5
    rotate: float = 0.5
    max_angle: float = 30.0  # angle uniform in [-max_angle, max_angle)
    enhance: float = 0.5
    # Factor ranges of the SOD-family `colorEnhance` (uniform here instead of steps of 0.1).
    brightness: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.5, 1.5)
    color: tuple[float, float] = (0.0, 2.0)
    sharpness: tuple[float, float] = (0.0, 3.0)
    grayscale: float = 0.25
    crop: float = 0.5
    max_crop: int = 30  # the crop window is S - k wide and S - j high, k, j in [1, max_crop]


@dataclass(frozen=True)
class AugParams:
    """One sample's drawn augmentation (identity by default)."""

    flip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise as displayed; 0 = no rotation
    crop_hw: tuple[int, int] | None = None  # centre crop (height, width) resized back to S
    enhance: tuple[float, float, float, float] | None = None  # brightness, contrast, colour, sharpness
    grayscale: bool = False

    @property
    def is_geometric(self) -> bool:
        return self.flip or self.angle != 0.0 or self.crop_hw is not None


def sample_params(rng: np.random.Generator, cfg: AugmentConfig, size: int) -> AugParams:
    """Draw every decision in a fixed order so a seed always gives the same parameters."""
    u = rng.random(5)
    flip = bool(u[0] < cfg.hflip)
    angle = float(rng.uniform(-cfg.max_angle, cfg.max_angle)) if u[1] < cfg.rotate else 0.0
    enhance = None
    if u[2] < cfg.enhance:
        enhance = tuple(float(rng.uniform(*r)) for r in (cfg.brightness, cfg.contrast, cfg.color, cfg.sharpness))
    gray = bool(u[3] < cfg.grayscale)
    crop_hw = None
    if u[4] < cfg.crop and cfg.max_crop > 0:
        k = min(cfg.max_crop, size - 1)
        crop_hw = (size - int(rng.integers(1, k + 1)), size - int(rng.integers(1, k + 1)))
    return AugParams(flip=flip, angle=angle, crop_hw=crop_hw, enhance=enhance, grayscale=gray)


def inscribed_side(size: float, angle_deg: float) -> float:
    """Side of the largest axis-aligned square inside a size x size square rotated by angle."""
    a = math.radians(angle_deg)
    return size / (abs(math.cos(a)) + abs(math.sin(a)))


def inverse_matrix(params: AugParams, size: int) -> np.ndarray:
    """3x3 map from output pixel coordinates to input pixel coordinates (pixel centres at ints).

    Forward order: flip, rotate + inscribed crop + resize, centre crop + resize; so the inverse
    is crop, then rotation, then flip: M = F @ R @ C.
    """
    c = (size - 1) / 2.0
    centre = np.array([[1, 0, c], [0, 1, c], [0, 0, 1]], dtype=np.float64)
    uncentre = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]], dtype=np.float64)
    m = np.eye(3)
    if params.crop_hw is not None:
        ch, cw = params.crop_hw
        m = np.diag([cw / size, ch / size, 1.0]) @ m
    if params.angle != 0.0:
        a = math.radians(params.angle)
        s = inscribed_side(size, params.angle) / size
        # Image y points down: a counter-clockwise turn as displayed samples the input at
        # R(-a) in y-up terms, i.e. this matrix in y-down pixel coordinates.
        rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        m = (rot * np.array([[s, s, 1], [s, s, 1], [1, 1, 1]])) @ m
    if params.flip:
        m = np.diag([-1.0, 1.0, 1.0]) @ m
    return centre @ m @ uncentre


def _warp(arr: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(
        arr, m[:2], (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def _warp_stacked(arrays: list[np.ndarray], m: np.ndarray, size: int) -> list[np.ndarray]:
    """Warp arrays of one dtype as one multi-channel image (at most 4 channels, OpenCV's remap
    limit). The interpolation weights depend on the pixel, not on the channel count, so each array
    gets the bytes its own warp would give (tested), for one coordinate pass instead of one each:
    image + mask and the depth maps cost two warps instead of four."""
    if len(arrays) == 1:
        stack = arrays[0]
    else:
        stack = cv2.merge([p for a in arrays for p in ([a] if a.ndim == 2 else cv2.split(a))])
    half = stack.dtype == np.float16
    if half:  # OpenCV has no float16 warp; F16C conversions (numpy's astype is ~10x slower)
        stack = cv2.convertFp16(stack.view(np.int16))
    warped = _warp(stack, m, size)
    if half:
        warped = cv2.convertFp16(warped).view(np.float16)
    if len(arrays) == 1:
        return [warped]
    # Contiguous results (OpenCV's split and merge, under a millisecond): a strided view of the
    # stack cost PIL 16 ms to read.
    planes, out = list(cv2.split(warped)), []
    for a in arrays:
        out.append(planes[0] if a.ndim == 2 else cv2.merge(planes[: _channels(a)]))
        planes = planes[_channels(a) :]
    return out


def _channels(a: np.ndarray) -> int:
    return 1 if a.ndim == 2 else a.shape[2]


def _stacks(arrays: list[np.ndarray]) -> list[list[int]]:
    """Indices of `arrays` grouped by dtype, each group cut into stacks of at most 4 channels."""
    stacks = []
    for dtype in dict.fromkeys(a.dtype for a in arrays):
        stack, used = [], 0
        for i in (i for i, a in enumerate(arrays) if a.dtype == dtype):
            if stack and used + _channels(arrays[i]) > 4:
                stacks.append(stack)
                stack, used = [], 0
            stack.append(i)
            used += _channels(arrays[i])
        stacks.append(stack)
    return stacks


def apply_geometry(params: AugParams, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The same geometric transform on every HxW or HxWxC array (any of uint8 / float16 / float32)."""
    if not params.is_geometric:
        return arrays
    size = arrays[0].shape[0]
    if params.angle == 0.0 and params.crop_hw is None:  # flip only: exact, no resampling
        return [np.ascontiguousarray(a[:, ::-1]) for a in arrays]
    m = inverse_matrix(params, size)
    out: list = [None] * len(arrays)
    for stack in _stacks(arrays):
        for i, w in zip(stack, _warp_stacked([arrays[i] for i in stack], m, size)):
            out[i] = w
    return out


def apply_photometric(params: AugParams, image: np.ndarray) -> np.ndarray:
    """PIL ImageEnhance brightness -> contrast -> colour -> sharpness, then grayscale (image only).

    Bit-identical to PIL's ImageEnhance (tested); only sharpness's smoothing, 85% of PIL's time
    here, is computed by OpenCV (`pil_smooth`)."""
    if params.enhance is None and not params.grayscale:
        return image
    pil = Image.fromarray(image)
    if params.enhance is not None:
        *factors, sharpness = params.enhance
        for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), factors):
            pil = enhancer(pil).enhance(factor)
        # ImageEnhance.Sharpness is exactly blend(image.filter(SMOOTH), image, factor)
        pil = Image.blend(Image.fromarray(pil_smooth(np.asarray(pil))), pil, sharpness)
    if params.grayscale:
        pil = pil.convert("L").convert("RGB")
    return np.asarray(pil)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13  # PIL's ImageFilter.SMOOTH


def pil_smooth(image: np.ndarray) -> np.ndarray:
    """PIL's `filter(ImageFilter.SMOOTH)` of an H x W x 3 uint8 image, byte for byte, ~6x faster.

    PIL rounds its float sum half up; the exact sum is an integer / 13, never within 1/26 of a
    half, far beyond float error, so OpenCV's round-to-nearest gives the same bytes. PIL leaves
    the outer ring of pixels as it was."""
    out = cv2.filter2D(image, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    out[0], out[-1], out[:, 0], out[:, -1] = image[0], image[-1], image[:, 0], image[:, -1]
    return out


def apply(
    params: AugParams, image: np.ndarray, mask: np.ndarray, depths: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Augment one sample: image HxWx3 uint8, mask HxW uint8, depth maps HxW float16."""
    out = apply_geometry(params, [image, mask, *depths])
    return apply_photometric(params, out[0]), out[1], out[2:]


def normalize_image(image_u8, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """B x H x W x 3 uint8 tensor (on the device) -> B x 3 x H x W float32, ImageNet-normalised.

    The permute makes a channels-last tensor without a copy; arithmetic keeps that layout.
    """
    x = image_u8.permute(0, 3, 1, 2).float()
    m, s = _scaled_mean_std(tuple(mean), tuple(std), x.device)
    return (x - m) / s


@functools.cache
def _scaled_mean_std(mean: tuple[float, ...], std: tuple[float, ...], device):
    """mean * 255 and std * 255 as 1 x 3 x 1 x 1 float32 tensors, made once per device.

    Cached so that a CUDA step does not make two blocking host-to-device copies per batch. The
    cache is process-wide and its tensors are shared: never modify them in place.
    """
    import torch

    return (
        (torch.tensor(mean).view(1, 3, 1, 1) * 255.0).to(device),
        (torch.tensor(std).view(1, 3, 1, 1) * 255.0).to(device),
    )
