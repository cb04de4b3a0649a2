"""A folder of pairs: one images folder and one masks folder, found, paired by file stem and split.

The other way to bring your own images (the split layout, ROOT/<split>/{im,gt}, is manifest.py's):
ROOT/im + ROOT/gt, ROOT/images + ROOT/masks, or any two folders named with --images / --masks.
Sub-folders are allowed on both sides: a pair is an image and a mask with the same file stem
anywhere under their folders (the stem is the sample's id), so images/field/x.jpg pairs with
masks/x.png or masks/2024/x.png. Names starting with '.' are ignored, files and folders alike
(.DS_Store, ._x.jpg, .thumbnails/ are left there by operating systems and editors).

`data manifest` splits the pairs into train / val / test after decoding them: sort the good ids,
permute them with numpy's generator seeded with --split-seed, the first round(n * val_fraction) go
to val, the next round(n * test_fraction) to test, the rest to train (halves round up). The same
files and settings give the same split on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pdfnet_pipeline.data.manifest import (
    IMAGE_DIRS,
    IMAGE_EXTS,
    MASK_DIRS,
    MASK_EXTS,
    PAIR_SPLITS,
    SPLIT_ORDER,
    ManifestEntry,
    ManifestError,
    Problem,
)

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_SEED = 0
# A split of one image is no split: its score is that one image's, and training on one image
# teaches nothing. A nonzero fraction must give at least this many, and so must train.
MIN_SPLIT_SIZE = 2
FLAGS = {
    "images": "--images",
    "masks": "--masks",
    "val_fraction": "--val-fraction",
    "test_fraction": "--test-fraction",
    "seed": "--split-seed",
}


class SplitError(ManifestError):
    """A split too small once the bad files are left out: `problems` are those files, so the
    caller can name them before this one-line error."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class PairOptions:
    """The folder-of-pairs settings as given; None = not given (defaults apply, and the split
    layout can tell the user which options it does not take)."""

    images: str | None = None
    masks: str | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    seed: int | None = None

    def given(self) -> list[str]:
        return [flag for name, flag in FLAGS.items() if getattr(self, name) is not None]


@dataclass(frozen=True)
class PairFolder:
    """Where the pairs are (absolute) and how they are split: what the manifest header records."""

    images: Path
    masks: Path
    val_fraction: float
    test_fraction: float
    seed: int

    def info(self, root: Path) -> dict:
        return {
            "pairs": {
                "images": self.images.relative_to(root).as_posix(),
                "masks": self.masks.relative_to(root).as_posix(),
                "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction,
                "seed": self.seed,
            }
        }


def _exts(exts: set[str]) -> str:
    return " ".join(sorted(exts))


def _named_dir(root: Path, name: str, flag: str) -> Path:
    folder = (root / name).resolve()
    if not folder.is_dir():
        raise ManifestError(f"{folder}: {flag} folder not found (it is taken relative to {root})")
    if not folder.is_relative_to(root):
        # Manifest paths are relative to the root, so the files must live under it.
        raise ManifestError(f"{folder}: {flag} must name a folder inside {root}")
    return folder


def _default_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def has_pair_folders(root: Path) -> bool:
    """ROOT holds an images folder and a masks folder under the default names."""
    return _default_dir(root, IMAGE_DIRS) is not None and _default_dir(root, MASK_DIRS) is not None


def _check_fractions(val: float, test: float, seed: int) -> None:
    for flag, value in (("--val-fraction", val), ("--test-fraction", test)):
        if not 0 <= value < 1:
            raise ManifestError(f"{flag} {value:g}: must be at least 0 and below 1")
    if val + test >= 1:
        raise ManifestError(f"--val-fraction {val:g} + --test-fraction {test:g} leave nothing to train on")
    if seed < 0:
        raise ManifestError(f"--split-seed {seed}: must be 0 or more")


def find_pair_folder(root: Path, options: PairOptions) -> PairFolder | None:
    """The images and masks folders of ROOT (None when it has neither under the default names and
    none was named); one side found without the other is an error that says what was looked for."""
    images = _named_dir(root, options.images, "--images") if options.images else _default_dir(root, IMAGE_DIRS)
    masks = _named_dir(root, options.masks, "--masks") if options.masks else _default_dir(root, MASK_DIRS)
    if images is None and masks is None:
        return None
    for found, missing, names, flag in ((images, masks, MASK_DIRS, "--masks"), (masks, images, IMAGE_DIRS, "--images")):
        if missing is None:
            looked = " or ".join(f"{n}/" for n in names)
            raise ManifestError(
                f"{root}: found {found.relative_to(root).as_posix()}/ but no {looked} folder "
                f"(name the other folder with {flag})"
            )
    if images == masks:
        raise ManifestError(f"{images}: --images and --masks name the same folder")
    val = DEFAULT_VAL_FRACTION if options.val_fraction is None else options.val_fraction
    test = DEFAULT_TEST_FRACTION if options.test_fraction is None else options.test_fraction
    seed = DEFAULT_SEED if options.seed is None else options.seed
    _check_fractions(val, test, seed)
    return PairFolder(images, masks, val, test, seed)


def find_files(folder: Path, exts: set[str], skip: Path | None = None) -> dict[str, list[Path]]:
    """stem -> the files with that stem under folder (sorted paths), hidden names left out;
    `skip`: the other side's folder when it lies inside this one (e.g. --images . --masks masks)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.suffix.lower() not in exts or any(part.startswith(".") for part in rel.parts):
            continue
        if (skip is not None and skip in path.parents) or not path.is_file():
            continue
        found.setdefault(path.stem, []).append(path)
    return found


def _duplicates(root: Path, files: dict[str, list[Path]], what: str) -> list[Problem]:
    return [
        Problem(
            paths[0],
            f"{len(paths)} {what} share the stem {stem!r}: "
            + ", ".join(p.relative_to(root).as_posix() for p in paths)
            + " (the stem is the sample's id: rename all but one)",
        )
        for stem, paths in sorted(files.items())
        if len(paths) > 1
    ]


def pair_files(root: Path, folder: PairFolder) -> tuple[list[tuple[str, Path, Path]], list[Problem]]:
    """(id, image, mask) for every stem found once on each side; every other file is a problem."""
    images = find_files(folder.images, IMAGE_EXTS, skip=folder.masks)
    masks = find_files(folder.masks, MASK_EXTS, skip=folder.images)
    problems = _duplicates(root, images, "images") + _duplicates(root, masks, "masks")
    # A duplicated stem is one problem, not also an unpaired file on the other side.
    dup = {s for side in (images, masks) for s, paths in side.items() if len(paths) > 1}
    im_rel, gt_rel = (f"{p.relative_to(root).as_posix()}/" for p in (folder.images, folder.masks))
    problems += [
        Problem(images[s][0], f"no mask named {s}.* under {gt_rel}") for s in sorted(set(images) - set(masks) - dup)
    ]
    problems += [
        Problem(masks[s][0], f"no image named {s}.* under {im_rel}") for s in sorted(set(masks) - set(images) - dup)
    ]
    pairs = [(s, images[s][0], masks[s][0]) for s in sorted((set(images) & set(masks)) - dup)]
    if not pairs:
        n_im, n_gt = sum(map(len, images.values())), sum(map(len, masks.values()))
        unmatched = ", no file stem on both sides" if n_im and n_gt else ""
        raise ManifestError(
            f"{root}: no image/mask pairs found: {n_im} image(s) ({_exts(IMAGE_EXTS)}) under {im_rel} and "
            f"{n_gt} mask(s) ({_exts(MASK_EXTS)}) under {gt_rel}{unmatched}"
        )
    return pairs, problems


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # halves up, as counted by hand (Python's round() goes to even)


def split_counts(n: int, folder: PairFolder) -> dict[str, int]:
    """{"train": ..., "val": ..., "test": ...} for n pairs."""
    val, test = _round(n * folder.val_fraction), _round(n * folder.test_fraction)
    return {"train": n - val - test, "val": val, "test": test}


def check_split_sizes(n: int, folder: PairFolder, bad: list[Problem] | None = None) -> None:
    """Every split asked for holds >= MIN_SPLIT_SIZE pairs, or a one-line error naming the
    fraction to change. `bad`: files already left out (counted in the message, kept on the error)."""
    counts = split_counts(n, folder)
    left_out = f"; {len(bad)} bad file(s) left out" if bad else ""
    for name, flag, fraction in (
        ("val", "--val-fraction", folder.val_fraction),
        ("test", "--test-fraction", folder.test_fraction),
    ):
        if fraction > 0 and counts[name] < MIN_SPLIT_SIZE:
            raise SplitError(
                f"{name} would hold {counts[name]} of {n} pairs ({flag} {fraction:g}{left_out}): "
                "raise the fraction, set it to 0, or add images",
                bad or [],
            )
    if counts["train"] < MIN_SPLIT_SIZE:
        raise SplitError(
            f"train would hold {counts['train']} of {n} pairs (--val-fraction {folder.val_fraction:g}, "
            f"--test-fraction {folder.test_fraction:g}{left_out}): lower the fractions or add images",
            bad or [],
        )


def assign_splits(entries: list[ManifestEntry], folder: PairFolder) -> list[ManifestEntry]:
    """Entries with their split set, ordered train, val, test and by id within each."""
    ids = sorted(e.id for e in entries)
    counts = split_counts(len(ids), folder)
    order = [ids[i] for i in np.random.default_rng(folder.seed).permutation(len(ids))]
    split_of = dict.fromkeys(order[: counts["val"]], PAIR_SPLITS[1])
    split_of |= dict.fromkeys(order[counts["val"] : counts["val"] + counts["test"]], PAIR_SPLITS[2])
    out = [replace(e, split=split_of.get(e.id, PAIR_SPLITS[0])) for e in entries]
    return sorted(out, key=lambda e: (SPLIT_ORDER[e.split], e.id))
