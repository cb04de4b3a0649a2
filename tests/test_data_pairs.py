"""A folder of pairs: finding and pairing (extensions, sub-folders, cut-outs), the seeded split,
the one-line errors and warnings `data manifest` prints, and the generated folder sample."""

import hashlib
import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pdfnet_pipeline.cli import app
from pdfnet_pipeline.data.images import load_mask
from pdfnet_pipeline.data.manifest import ManifestEntry, read_manifest, scan
from pdfnet_pipeline.data.pairs import PairFolder, PairOptions, assign_splits, split_counts
from pdfnet_pipeline.data.sample import CUTOUT_INDEX, generate_sample

runner = CliRunner()
W, H = 24, 16
ALL_TRAIN = ("--val-fraction", "0", "--test-fraction", "0")  # every pair in train: no split to fill


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask(seed: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[2 : 6 + seed % 8, 3 : 9 + seed % 10] = 255  # some foreground, some background
    return mask


def _save(path, array, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def _folder(root, n: int, images: str = "images", masks: str = "masks"):
    """n plain pairs p000.. (jpg image, png mask) at the top of the two folders."""
    for i in range(n):
        _save(root / images / f"p{i:03d}.jpg", _rgb(i))
        _save(root / masks / f"p{i:03d}.png", _mask(i))
    return root


def _manifest(*args):
    return runner.invoke(app, ["data", "manifest", *map(str, args), "--workers", "1"])


def _error(res) -> str:
    """The CLI's error: exit 2 and one line `error: ...`, nothing else."""
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_pairs_across_extensions_nested_and_cutout(tmp_path):
    root = tmp_path / "mine"
    alpha = _mask(4)
    alpha[8:10, :] = 128  # a soft edge: the alpha is kept as is
    _save(root / "images" / "a.jpg", _rgb(0))
    _save(root / "images" / "2024" / "trip" / "b.png", _rgb(1))
    _save(root / "images" / "c.webp", _rgb(2), quality=90)
    _save(root / "images" / "d.bmp", _rgb(3))
    _save(root / "images" / "scans" / "E.TIFF", _rgb(4))
    _save(root / "masks" / "a.png", _mask(0))
    _save(root / "masks" / "b.bmp", _mask(1))  # nested image, top-level mask
    _save(root / "masks" / "sub" / "c.tif", _mask(2))
    _save(root / "masks" / "d.jpg", _mask(3), quality=100)
    _save(root / "masks" / "E.png", np.dstack([_rgb(4), alpha]))  # a cut-out: the alpha is the mask
    # Hidden files and folders, and other files, are not samples.
    _save(root / "images" / ".thumbs" / "f.jpg", _rgb(5))
    _save(root / "images" / "._a.jpg", _rgb(6))
    _save(root / "masks" / ".f.png", _mask(5))
    (root / "images" / "notes.txt").write_text("not an image")
    result = scan(root, workers=1, progress=False, pairs=PairOptions(val_fraction=0, test_fraction=0))
    assert result.problems == [] and result.warnings == []
    m = result.manifest
    assert m.splits() == ["train"]
    got = {e.id: (e.image, e.mask) for e in m.entries}
    assert got == {
        "a": ("images/a.jpg", "masks/a.png"),
        "b": ("images/2024/trip/b.png", "masks/b.bmp"),
        "c": ("images/c.webp", "masks/sub/c.tif"),
        "d": ("images/d.bmp", "masks/d.jpg"),
        "E": ("images/scans/E.TIFF", "masks/E.png"),
    }
    cutout = next(e for e in m.entries if e.id == "E")
    np.testing.assert_array_equal(load_mask(cutout.mask_path(m.root)), alpha)
    assert m.info == {"pairs": {"images": "images", "masks": "masks", "val_fraction": 0, "test_fraction": 0, "seed": 0}}


def test_named_folders_and_im_gt_names(tmp_path):
    root = _folder(tmp_path / "named", 4, images="photos/raw", masks="labels")
    res = _manifest(root, "-o", tmp_path / "m.jsonl", "--images", "photos/raw", "--masks", "labels", *ALL_TRAIN)
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "m.jsonl")
    assert m.info["pairs"]["images"] == "photos/raw" and m.entries[0].image == "photos/raw/p000.jpg"
    root = _folder(tmp_path / "dis", 4, images="im", masks="gt")
    m = scan(root, workers=1, progress=False, pairs=PairOptions(val_fraction=0, test_fraction=0)).manifest
    assert len(m.entries) == 4 and m.entries[0].mask == "gt/p000.png"


def _folder_settings(val: float, test: float, seed: int = 0) -> PairFolder:
    return PairFolder(images=None, masks=None, val_fraction=val, test_fraction=test, seed=seed)


def _entries(n: int) -> list[ManifestEntry]:
    return [ManifestEntry("", f"id{i:02d}", f"i/{i}.jpg", f"m/{i}.png", 1, 1, "", "") for i in range(n)]


def test_split_counts_by_hand():
    assert split_counts(40, _folder_settings(0.1, 0.1)) == {"train": 32, "val": 4, "test": 4}
    assert split_counts(23, _folder_settings(0.1, 0.1)) == {"train": 19, "val": 2, "test": 2}  # 2.3 -> 2
    assert split_counts(25, _folder_settings(0.1, 0.2)) == {"train": 17, "val": 3, "test": 5}  # 2.5 -> 3 (up)
    assert split_counts(12, _folder_settings(0.25, 0)) == {"train": 9, "val": 3, "test": 0}


def test_split_is_seeded_and_deterministic():
    entries = _entries(30)
    a = assign_splits(entries, _folder_settings(0.2, 0.1, seed=0))
    b = assign_splits(list(reversed(entries)), _folder_settings(0.2, 0.1, seed=0))
    assert a == b  # the input order does not matter: ids are sorted first
    by_split = {s: [e.id for e in a if e.split == s] for s in ("train", "val", "test")}
    assert [len(v) for v in by_split.values()] == [21, 6, 3]
    assert [e.split for e in a] == ["train"] * 21 + ["val"] * 6 + ["test"] * 3  # manifest order
    assert by_split["train"] == sorted(by_split["train"])
    other = assign_splits(entries, _folder_settings(0.2, 0.1, seed=1))
    assert {e.id for e in other if e.split == "val"} != set(by_split["val"])


def test_same_inputs_same_bytes_another_seed_another_split(tmp_path):
    root = _folder(tmp_path / "ds", 20)
    outs = [tmp_path / f"{name}.jsonl" for name in ("a", "b", "c")]
    for out, seed in zip(outs, (0, 0, 5), strict=True):
        res = _manifest(root, "-o", out, "--split-seed", seed)
        assert res.exit_code == 0, res.output
    assert res.output.strip().endswith(
        f"wrote {outs[2]}: 20 samples (train 16, val 2, test 2); split seeded 5, val 0.1, test 0.1"
    )
    assert outs[0].read_bytes() == outs[1].read_bytes()
    header = json.loads(outs[0].read_text().splitlines()[0])
    assert header["pairs"] == {
        "images": "images",
        "masks": "masks",
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "seed": 0,
    }
    val = [{e.id for e in read_manifest(o).entries if e.split == "val"} for o in (outs[0], outs[2])]
    assert val[0] != val[1]


def test_errors_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "m.jsonl"
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _error(_manifest(empty, "-o", out))
    assert "no dataset found" in line and "<split>/im/ + <split>/gt/" in line and "images/ + masks/" in line
    assert "--images / --masks" in line
    (empty / "images").mkdir()
    assert "found images/ but no gt/ or masks/ folder" in _error(_manifest(empty, "-o", out))
    (empty / "masks").mkdir()
    _save(empty / "images" / "x.gif", _rgb(0))  # not an image extension we read
    line = _error(_manifest(empty, "-o", out))
    assert "no image/mask pairs found: 0 image(s) (.bmp .jpeg .jpg .png .tif .tiff .webp) under images/" in line
    assert "0 mask(s) (.bmp .jpeg .jpg .png .tif .tiff) under masks/" in line
    root = _folder(tmp_path / "twelve", 12)
    assert _error(_manifest(root, "-o", out, "--images", "photos")) == (
        f"error: {root / 'photos'}: --images folder not found (it is taken relative to {root})"
    )
    assert _error(_manifest(root, "-o", out)) == (
        "error: val would hold 1 of 12 pairs (--val-fraction 0.1): raise the fraction, set it to 0, or add images"
    )
    line = _error(_manifest(root, "-o", out, "--val-fraction", "0.2"))
    assert line.startswith("error: test would hold 1 of 12 pairs (--test-fraction 0.1)")
    line = _error(_manifest(root, "-o", out, "--val-fraction", "0.5", "--test-fraction", "0.4"))
    assert line == (
        "error: train would hold 1 of 12 pairs (--val-fraction 0.5, --test-fraction 0.4): "
        "lower the fractions or add images"
    )
    assert "must be at least 0 and below 1" in _error(_manifest(root, "-o", out, "--val-fraction", "1.5"))
    assert "--split applies to the split layout" in _error(_manifest(root, "-o", out, "--split", "train"))
    assert not out.exists()
    res = _manifest(root, "-o", out, "--val-fraction", "0", "--test-fraction", "0.2")
    assert res.exit_code == 0 and "wrote" in res.output and "(train 10, test 2)" in res.output


def test_split_layout_refuses_pair_options(tmp_path):
    root = tmp_path / "splits"
    for split in ("DIS-TR", "DIS-VD"):
        _folder(root / split, 1, images="im", masks="gt")
    line = _error(_manifest(root, "-o", tmp_path / "m.jsonl", "--val-fraction", "0.2", "--masks", "gt"))
    assert (
        f"{root} has split folders (DIS-TR, DIS-VD): " in line
        and "--masks, --val-fraction only apply to a folder of pairs" in line
    )


def test_duplicates_unpaired_and_mis_sized_listed(tmp_path):
    root = _folder(tmp_path / "ds", 12)
    _save(root / "images" / "sub" / "p003.png", _rgb(30))  # a second image with stem p003
    _save(root / "masks" / "old" / "p005.png", _mask(5))  # a second mask with stem p005
    _save(root / "images" / "lonely.jpg", _rgb(31))
    _save(root / "masks" / "orphan.png", _mask(32))
    _save(root / "masks" / "p007.png", np.zeros((H + 2, W), np.uint8))  # another size than its image
    out = tmp_path / "m.jsonl"
    res = _manifest(root, "-o", out, *ALL_TRAIN)
    assert res.exit_code == 1 and not out.exists()
    assert (
        f"bad input: {root}/images/p003.jpg: 2 images share the stem 'p003': images/p003.jpg, images/sub/p003.png "
        "(the stem is the sample's id: rename all but one)"
    ) in res.output
    assert "2 masks share the stem 'p005': masks/old/p005.png, masks/p005.png" in res.output
    assert f"bad input: {root}/images/lonely.jpg: no mask named lonely.* under masks/" in res.output
    assert f"bad input: {root}/masks/orphan.png: no image named orphan.* under images/" in res.output
    assert f"bad input: {root}/masks/p007.png: mask is {W}x{H + 2} but its image is {W}x{H}" in res.output
    assert "error: no manifest written: 5 bad file(s) (--skip-bad leaves them out)" in res.output
    res = _manifest(root, "-o", out, *ALL_TRAIN, "--skip-bad")
    assert res.exit_code == 0, res.output
    assert sorted(e.id for e in read_manifest(out).entries) == [f"p{i:03d}" for i in (0, 1, 2, 4, 6, 8, 9, 10, 11)]


def test_bad_files_that_shrink_a_split_are_named_with_the_error(tmp_path):
    root = _folder(tmp_path / "ds", 15)  # val round(1.5) = 2 of 15; 14 decodable -> 1
    broken = root / "images" / "p004.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    res = _manifest(root, "-o", tmp_path / "m.jsonl", "--test-fraction", "0", "--skip-bad")
    assert res.exit_code == 2
    assert f"bad input: {broken}: " in res.output
    assert (
        "error: val would hold 1 of 14 pairs (--val-fraction 0.1; 1 bad file(s) left out): "
        "raise the fraction, set it to 0, or add images"
    ) in res.output
    # An unpaired file stops it before decoding, and is named the same way.
    broken.unlink()
    res = _manifest(root, "-o", tmp_path / "m.jsonl", "--test-fraction", "0")
    assert res.exit_code == 2
    assert f"bad input: {root}/masks/p004.png: no image named p004.* under images/" in res.output
    assert "error: val would hold 1 of 14 pairs (--val-fraction 0.1; 1 bad file(s) left out)" in res.output


def test_all_black_and_all_white_masks_warn_but_are_kept(tmp_path):
    root = _folder(tmp_path / "ds", 4)
    black = _save(root / "masks" / "p001.png", np.zeros((H, W), np.uint8))
    white = _save(root / "masks" / "p002.png", np.full((H, W), 255, np.uint8))
    out = tmp_path / "m.jsonl"
    res = _manifest(root, "-o", out, *ALL_TRAIN)
    assert res.exit_code == 0, res.output
    assert f"warning: {black}: mask is all black (no foreground)" in res.output
    assert f"warning: {white}: mask is all white (no background)" in res.output
    assert len(read_manifest(out).entries) == 4
    # The split layout warns the same way.
    split_root = tmp_path / "splits"
    _save(split_root / "s1" / "im" / "x.jpg", _rgb(0))
    _save(split_root / "s1" / "gt" / "x.png", np.zeros((H, W), np.uint8))
    result = scan(split_root, workers=1, progress=False)
    assert [str(w) for w in result.warnings] == [f"{split_root}/s1/gt/x.png: mask is all black (no foreground)"]
    assert len(result.manifest.entries) == 1 and result.manifest.info == {}


def test_generated_folder_is_found_whole(tmp_path):
    out = tmp_path / "mine"
    paths = generate_sample(out, train=7, per_split=3, seed=0, style="shapes", layout="folder")
    again = generate_sample(tmp_path / "again", train=7, per_split=3, seed=0, style="shapes", layout="folder")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert [digest(p) for p in paths] == [digest(p) for p in again]
    assert len(paths) == 22 and not (out / "DIS-TR").exists()
    assert {p.suffix for p in paths} == {".jpg", ".png", ".webp"}
    assert any(p.parent != out / "images" for p in paths)  # some nested
    manifest = tmp_path / "m.jsonl"
    res = _manifest(out, "-o", manifest)
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith(
        f"wrote {manifest}: 22 samples (train 18, val 2, test 2); split seeded 0, val 0.1, test 0.1"
    )
    m = read_manifest(manifest)
    assert sorted(e.image for e in m.entries) == sorted(p.relative_to(out).as_posix() for p in paths)
    cutout = next(e for e in m.entries if e.image == paths[CUTOUT_INDEX].relative_to(out).as_posix())
    assert Image.open(cutout.mask_path(m.root)).mode == "RGBA"
    mask = load_mask(cutout.mask_path(m.root))
    assert set(np.unique(mask)) == {0, 255}  # the alpha: the exact drawn mask, not the image's luma


def test_help_names_both_layouts():
    out = runner.invoke(app, ["data", "manifest", "--help"]).output
    assert "folder of pairs" in out and "--val-fraction" in out and "--split-seed" in out
