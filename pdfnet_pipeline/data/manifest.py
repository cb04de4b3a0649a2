"""Dataset manifests: scan a dataset root, verify every file, write / read JSONL.

Two layouts. The split layout: ROOT/<split>/{im,gt} (DIS-5K as distributed) or
ROOT/<split>/{images,masks} (the PDFNet reference's naming); images and masks pair by file stem.
Any split folder in that layout is accepted (custom datasets); the DIS-VD / DIS-TE1..4 folders are
also checked against the official name lists shipped in data_manifests/official.
A folder of pairs (ROOT with one images and one masks folder, no split folders): paired and split
into train / val / test by pairs.py; the manifest's header line records how (`Manifest.info`).

Every mask is decoded here anyway, so one with no foreground or no background (all black / all
white) is flagged as a warning: usually a mis-exported file, though it can be meant.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from pdfnet_pipeline.data.images import DEFAULT_MAX_PIXELS, BadInputError, load_pair
from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.repo_data import repo_dir

if TYPE_CHECKING:
    from pdfnet_pipeline.data.pairs import PairFolder, PairOptions

FORMAT = "pdfnet-manifest"
VERSION = 1
DIS_SPLITS = ("DIS-TR", "DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")
PAIR_SPLITS = ("train", "val", "test")  # a folder of pairs, split by `data manifest`
SPLIT_ORDER = {s: i for i, s in enumerate(DIS_SPLITS + PAIR_SPLITS)}
IMAGE_DIRS = ("im", "images")
MASK_DIRS = ("gt", "masks")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MASK_EXTS = {".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"}
OFFICIAL_DIR = repo_dir("data_manifests/official", "official_lists")
# What a split is for, by name: DIS-5K's names, and those `data manifest` gives a folder of pairs.
# Split folders of one's own data go by these names too (any case).
TRAIN_SPLITS = ("dis-tr", "train", "training", "trn")
VAL_SPLITS = ("dis-vd", "val", "valid", "validation", "dev")


def split_role(name: str) -> str:
    """The split's use: "train", "val", or "test" (any other name: held out for evaluation)."""
    low = name.lower()
    return "train" if low in TRAIN_SPLITS else "val" if low in VAL_SPLITS else "test"


class ManifestError(UserError, ValueError):
    """The dataset on disk does not match what was asked; the message lists every problem."""


@dataclass(frozen=True)
class ManifestEntry:
    split: str
    id: str
    image: str  # relative to the manifest root
    mask: str
    width: int  # after EXIF orientation
    height: int
    image_sha256: str
    mask_sha256: str

    def image_path(self, root: Path) -> Path:
        return root / self.image

    def mask_path(self, root: Path) -> Path:
        return root / self.mask


@dataclass
class Manifest:
    root: Path
    entries: list[ManifestEntry] = field(default_factory=list)
    # Header keys beyond format / version / root, e.g. {"pairs": {...}}: how a folder of pairs was
    # split. Empty for the split layout, whose header stays as it always was.
    info: dict = field(default_factory=dict)

    def splits(self) -> list[str]:
        return sorted({e.split for e in self.entries}, key=lambda s: (SPLIT_ORDER.get(s, 99), s))

    def split(self, name: str) -> list[ManifestEntry]:
        entries = [e for e in self.entries if e.split == name]
        if not entries:
            raise ManifestError(f"split {name!r} is not in the manifest (splits: {self.splits()})")
        return entries

    def split_hash(self, name: str) -> str:
        """sha256 of the split's entries (ids, paths, sizes, file hashes): what a store records."""
        lines = [json.dumps(asdict(e), sort_keys=True) for e in self.split(name)]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find_dir(split_dir: Path, names: tuple[str, ...]) -> Path | None:
    return next((split_dir / n for n in names if (split_dir / n).is_dir()), None)


def _by_stem(folder: Path, exts: set[str]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in exts and p.is_file()}


def find_splits(root: Path) -> list[str]:
    """Sub-folders of root in the split layout, DIS-5K order first."""
    found = [d.name for d in root.iterdir() if d.is_dir() and _find_dir(d, IMAGE_DIRS) and _find_dir(d, MASK_DIRS)]
    return sorted(found, key=lambda s: (SPLIT_ORDER.get(s, 99), s))


def official_names(split: str, official_dir: Path = OFFICIAL_DIR) -> set[str] | None:
    path = official_dir / f"{split}.txt"
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def is_custom_split(split: str, stems: set[str], official_dir: Path = OFFICIAL_DIR) -> bool:
    """A folder named like an official split that holds none of its official names is a custom
    dataset in the DIS-5K layout (e.g. the generated sample), not a damaged DIS-5K copy."""
    names = official_names(split, official_dir)
    return names is not None and bool(stems) and not (names & stems)


def check_official(split: str, stems: set[str], official_dir: Path = OFFICIAL_DIR) -> list[str]:
    """Missing / extra names of a split against the official list (empty when it matches, when
    there is no official list, or for a custom split: see `is_custom_split`)."""
    names = official_names(split, official_dir)
    if names is None or is_custom_split(split, stems, official_dir):
        return []
    out = [f"{split}: missing official sample {n}" for n in sorted(names - stems)]
    out += [f"{split}: extra sample {n} (not in the official list)" for n in sorted(stems - names)]
    return out


def _pair_split(root: Path, split: str) -> tuple[list[tuple[str, Path, Path]], list[Problem]]:
    split_dir = root / split
    im_dir, gt_dir = _find_dir(split_dir, IMAGE_DIRS), _find_dir(split_dir, MASK_DIRS)
    if im_dir is None or gt_dir is None:
        return [], [Problem(split_dir, "expected im/ + gt/ (or images/ + masks/) folders")]
    images, masks = _by_stem(im_dir, IMAGE_EXTS), _by_stem(gt_dir, MASK_EXTS)
    problems = [Problem(images[s], "mask missing") for s in sorted(set(images) - set(masks))]
    problems += [Problem(masks[s], "mask without image") for s in sorted(set(masks) - set(images))]
    pairs = [(s, images[s], masks[s]) for s in sorted(set(images) & set(masks))]
    return pairs, problems


def mask_warning(mask: np.ndarray) -> str | None:
    """Why a mask looks wrong though it decodes (a uniform mask has nothing to segment)."""
    if mask.max(initial=0) == 0:
        return "mask is all black (no foreground)"
    if mask.min(initial=255) == 255:
        return "mask is all white (no background)"
    return None


@dataclass(frozen=True)
class _Checked:
    """One verified pair: an entry (maybe with a warning: kept) or a problem (left out)."""

    entry: ManifestEntry | None = None
    problem: Problem | None = None
    warning: Problem | None = None


def _verify(job: tuple[str, str, Path, Path, Path, int]) -> _Checked:
    split, stem, root, image, mask, max_pixels = job
    try:
        img, gt = load_pair(image, mask, max_pixels=max_pixels)
    except BadInputError as err:
        return _Checked(problem=Problem(err.path, err.reason))
    reason = mask_warning(gt)
    entry = ManifestEntry(
        split=split,
        id=stem,
        image=image.relative_to(root).as_posix(),
        mask=mask.relative_to(root).as_posix(),
        width=int(img.shape[1]),
        height=int(img.shape[0]),
        image_sha256=_sha256(image),
        mask_sha256=_sha256(mask),
    )
    return _Checked(entry=entry, warning=Problem(mask, reason) if reason else None)


def _verify_all(
    jobs: list[tuple[str, str, Path, Path, Path, int]], workers: int | None, progress: bool
) -> tuple[list[ManifestEntry], list[Problem], list[Problem]]:
    """(entries, problems, warnings) of the jobs, decoded in worker processes."""
    workers = workers or min(8, os.cpu_count() or 1)
    bar = dict(total=len(jobs), desc="verify", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_verify, jobs, chunksize=4), **bar))
    else:
        results = [_verify(j) for j in tqdm(jobs, **bar)]
    entries = [r.entry for r in results if r.entry is not None]
    problems = [r.problem for r in results if r.problem is not None]
    warnings = [r.warning for r in results if r.warning is not None]
    return entries, problems, warnings


@dataclass
class ScanResult:
    manifest: Manifest
    problems: list[Problem]  # bad or unpaired files: excluded from the manifest
    mismatches: list[str]  # differences to the official lists
    notes: list[str] = field(default_factory=list)  # e.g. splits taken as custom datasets
    warnings: list[Problem] = field(default_factory=list)  # suspicious but kept (all-black masks)


def scan(
    root: Path,
    splits: list[str] | None = None,
    *,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    official_dir: Path = OFFICIAL_DIR,
    progress: bool = True,
    pairs: PairOptions | None = None,
) -> ScanResult:
    """Pair, fully decode and hash every sample (decoding catches truncated files now).

    ROOT in the split layout is scanned split by split; a ROOT without split folders is read as a
    folder of pairs (`pairs`: its folders and split settings; the split layout refuses them)."""
    from pdfnet_pipeline.data import pairs as pair_folder  # pairs.py builds on this module

    root = Path(root).resolve()
    if not root.is_dir():
        raise ManifestError(f"{root}: dataset root not found")
    options = pairs or pair_folder.PairOptions()
    found = find_splits(root)
    if splits or found:
        if options.given():
            raise ManifestError(
                f"{root} has split folders ({', '.join(splits or found)}): {', '.join(options.given())} "
                "only apply to a folder of pairs (ROOT/images/ + ROOT/masks/ without split folders)"
            )
        if splits and not found and pair_folder.has_pair_folders(root):
            raise ManifestError(
                f"{root} is a folder of pairs (no split folders): --split applies to the split layout; "
                "its pairs are split by --val-fraction / --test-fraction"
            )
        return _scan_splits(root, splits or found, workers, max_pixels, official_dir, progress)
    folder = pair_folder.find_pair_folder(root, options)
    if folder is None:
        raise ManifestError(
            f"{root}: no dataset found: looked for split folders (<split>/im/ + <split>/gt/, or "
            "<split>/images/ + <split>/masks/) and for a folder of pairs (im/ + gt/, or images/ + masks/, "
            "or folders named with --images / --masks)"
        )
    return _scan_pairs(root, folder, workers, max_pixels, progress)


def _scan_splits(
    root: Path, splits: list[str], workers: int | None, max_pixels: int, official_dir: Path, progress: bool
) -> ScanResult:
    jobs, problems, mismatches, notes = [], [], [], []
    for split in splits:
        pairs, split_problems = _pair_split(root, split)
        problems += split_problems
        stems = {s for s, _, _ in pairs} | {p.path.stem for p in split_problems if p.path.is_file()}
        mismatches += check_official(split, stems, official_dir)
        if is_custom_split(split, stems, official_dir):
            notes.append(
                f"{split}: none of the {len(official_names(split, official_dir))} official names: checked as a custom split"
            )
        jobs += [(split, s, root, im, gt, max_pixels) for s, im, gt in pairs]
    entries, bad, warnings = _verify_all(jobs, workers, progress)
    return ScanResult(Manifest(root, entries), problems + bad, mismatches, notes, warnings)


def _scan_pairs(root: Path, folder: PairFolder, workers: int | None, max_pixels: int, progress: bool) -> ScanResult:
    from pdfnet_pipeline.data import pairs as pair_folder

    pairs, problems = pair_folder.pair_files(root, folder)
    # Before the slow part (decoding); the files left out so far explain a count below the user's.
    pair_folder.check_split_sizes(len(pairs), folder, problems)
    # The split is drawn after decoding, over the pairs that decoded: "" until then.
    jobs = [("", s, root, im, gt, max_pixels) for s, im, gt in pairs]
    entries, bad, warnings = _verify_all(jobs, workers, progress)
    pair_folder.check_split_sizes(len(entries), folder, problems + bad)
    entries = pair_folder.assign_splits(entries, folder)
    return ScanResult(Manifest(root, entries, folder.info(root)), problems + bad, [], [], warnings)


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Atomic: a crash never leaves a half-written manifest where a good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        header = {"format": FORMAT, "version": VERSION, "root": str(manifest.root), **manifest.info}
        f.write(json.dumps(header) + "\n")
        for e in manifest.entries:
            f.write(json.dumps(asdict(e)) + "\n")
    os.replace(tmp, path)


def read_manifest(path: Path | str, root: Path | str | None = None) -> Manifest:
    """Read a manifest; `root` overrides the recorded one (a dataset moved to another disk)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (make one with `pdfnet-pipeline data manifest`)")
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a pdfnet-pipeline manifest (bad header line)")
    if header.get("version") != VERSION:
        raise ManifestError(f"{path}: manifest version {header.get('version')}, expected {VERSION}")
    entries = []
    for n, line in enumerate(lines[1:], start=2):
        try:
            entries.append(ManifestEntry(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as err:
            raise ManifestError(f"{path}:{n}: bad manifest line ({err})") from None
    # Older manifests have no extra header keys; newer ones may (see `Manifest.info`).
    info = {k: v for k, v in header.items() if k not in ("format", "version", "root")}
    return Manifest(Path(root) if root else Path(header["root"]), entries, info)
