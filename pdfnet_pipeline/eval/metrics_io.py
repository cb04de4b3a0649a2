"""Pair prediction PNGs with GT masks by file stem and print metric tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pdfnet_pipeline.eval.metrics import Pair

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Matched:
    pairs: list[Pair] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # GT stems with no prediction
    extra: list[str] = field(default_factory=list)  # prediction stems with no GT


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in files:
                raise ValueError(f"{folder}: two images share the stem {path.stem!r} "
                                 f"({files[path.stem].name}, {path.name})")  # fmt: skip
            files[path.stem] = path
    return files


def match_dirs(pred_dir: Path, gt_dir: Path) -> Matched:
    """Pairs (pred path, GT path, stem) in GT stem order, plus the unmatched stems by name."""
    preds, gts = _by_stem(Path(pred_dir)), _by_stem(Path(gt_dir))
    return Matched(
        pairs=[(preds[s], gts[s], s) for s in sorted(gts) if s in preds],
        missing=sorted(set(gts) - set(preds)),
        extra=sorted(set(preds) - set(gts)),
    )
