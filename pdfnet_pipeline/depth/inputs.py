"""Decode and resize in DataLoader workers: one manifest entry -> the store's image and mask at
S x S plus the two network inputs, so the accelerator only ever sees ready batches; and the
batches themselves (`batches`: fixed by position, grouped by input shape in the "keep" mode).

Store filters (the spec leaves them open): image and mask are resized with an antialiased
bilinear (triangle) filter and rounded, so downsizing averages thin structures instead of
aliasing them and nothing overshoots 0..255; the mask keeps fractional edge coverage as 0..255.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pdfnet_pipeline.depth import dam


@dataclass(frozen=True)
class Prep:
    """What a worker computes per sample."""

    size: int  # store side S
    input_size: int  # the input target (518): `dam.input_shape` makes the network input of it
    supervision_size: int | None  # 1024 (-> 1036), or None when large_1024 is not computed
    draft: bool = True  # JPEG draft decoding for big images
    max_pixels: int | None = None
    aspect: dam.Aspect = "square"

    def shapes(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """(h, w) of the two network inputs for a W x H image (the second None without large_1024)."""
        sup = self.supervision_size
        return (
            dam.input_shape(width, height, self.input_size, self.aspect),
            dam.input_shape(width, height, sup, self.aspect) if sup else None,
        )


def resize_u8(array: np.ndarray, size: int) -> torch.Tensor:
    """HxW or HxWxC uint8 -> size x size (x C) uint8, antialiased bilinear, rounded."""
    t = torch.from_numpy(np.require(array, requirements=["C", "W"]))  # PIL arrays are read-only
    chw = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
    out = F.interpolate(chw.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    out = out.round_().clamp_(0, 255).to(torch.uint8)[0]
    return out[0] if t.dim() == 2 else out.permute(1, 2, 0).contiguous()


def _check_image_size(path: Path, got: tuple[int, int], want: tuple[int, int]) -> None:
    """`got` (W, H) must be the manifest's size or a JPEG draft reduction of it (1/2, 1/4, 1/8)."""
    ok = [want] + [(math.ceil(want[0] / k), math.ceil(want[1] / k)) for k in (2, 4, 8)]
    if got not in ok:
        from pdfnet_pipeline.data.images import BadInputError

        raise BadInputError(
            path, f"image is {got[0]}x{got[1]} but the manifest says {want[0]}x{want[1]} (file changed?)"
        )


def prepare(entry, root: Path, prep: Prep) -> dict:
    """One sample, or {"error": message} for a bad input (the stage applies the on_error policy)."""
    from pdfnet_pipeline.data.images import DEFAULT_MAX_PIXELS, BadInputError, load_image, load_mask

    limit = prep.max_pixels or DEFAULT_MAX_PIXELS
    # From the manifest's size, not the decoded one: a draft decode must not change the shapes.
    in_shape, sup_shape = prep.shapes(entry.width, entry.height)
    try:
        need = max(prep.size, min(in_shape), min(sup_shape or in_shape))
        img = load_image(entry.image_path(root), max_pixels=limit, draft_min_side=need if prep.draft else None)
        _check_image_size(entry.image_path(root), (img.shape[1], img.shape[0]), (entry.width, entry.height))
        mask = load_mask(entry.mask_path(root), size=(entry.width, entry.height), max_pixels=limit)
    except BadInputError as err:
        return {"error": str(err)}
    chw = torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1)
    out = {
        "image": resize_u8(img, prep.size),
        "mask": resize_u8(mask, prep.size),
        "x_in": dam.to_model_input(chw, in_shape),
    }
    if sup_shape:
        out["x_sup"] = dam.to_model_input(chw, sup_shape)
    return out


class SampleSource(torch.utils.data.Dataset):
    """Manifest entries of one split by store index; items carry their index."""

    def __init__(self, entries: list, root: Path, prep: Prep) -> None:
        self.entries, self.root, self.prep = entries, Path(root), prep

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        item = prepare(self.entries[index], self.root, self.prep)
        item["index"] = index
        return item


def collate(items: list[dict]) -> dict:
    """Stack the good samples; bad ones travel as (index, message)."""
    good = [it for it in items if "error" not in it]
    out: dict = {"errors": [(it["index"], it["error"]) for it in items if "error" in it]}
    out["index"] = [it["index"] for it in good]
    if good:
        for key in good[0]:
            if key != "index":
                out[key] = torch.stack([it[key] for it in good])
    return out


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # N workers x all cores each would oversubscribe the CPU


def fixed_batches(indices: list[int], batch_size: int) -> list[list[int]]:
    """Batches fixed by position in the rank's share, so a sample is always computed in the same
    batch (batch-dependent kernels cannot make a resumed store differ from an uninterrupted one)."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def batches(indices: list[int], key: Callable[[int], Hashable], batch_size: int) -> list[list[int]]:
    """`fixed_batches` within each group of equal `key(index)` (the input shapes: only equal
    shapes stack), groups in order of first appearance. The groups and positions depend only on
    the manifest, the rank's share and the batch size, never on what is done, so a resumed run
    recomputes exactly the batches of an uninterrupted one. One key for all: `fixed_batches`."""
    groups: dict[Hashable, list[int]] = {}
    for index in indices:
        groups.setdefault(key(index), []).append(index)
    return [b for group in groups.values() for b in fixed_batches(group, batch_size)]
