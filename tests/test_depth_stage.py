"""Stage depth end to end on generated DIS-layout data with tiny random-weight DAM models (CPU):
store content against an independent per-image computation, resume after kill -9, refusal of a
second writer and of a foreign manifest, bad-input policy, torchrun with 2 gloo processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from pdfnet_pipeline import config as cfgmod
from pdfnet_pipeline import store
from pdfnet_pipeline.data.manifest import read_manifest, scan, write_manifest
from pdfnet_pipeline.data.sample import generate_sample
from pdfnet_pipeline.depth import dam, stage

N = 5
ARRAYS = ["image", "mask", "depth/small", "depth/base", "depth/large", "depth/large_1024", "done", "ids", "orig_size"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dis")
    generate_sample(root / "ds", per_split=N, seed=1, train=0)
    result = scan(root / "ds", ["DIS-VD"], workers=1, progress=False)
    write_manifest(result.manifest, root / "m.jsonl")
    return root


def small_cfg(data: Path, stores: Path, **over) -> stage.Config:
    tiny = stage.ModelSpec("tiny", "random")
    base = stage.Config(
        manifest=data / "m.jsonl",
        stores=stores,
        splits=["DIS-VD"],
        size=32,
        input_size=28,
        supervision_size=50,
        models=stage.Models(tiny, tiny, tiny),
        batch_size=2,
        workers=0,
        write_threads=2,
        device="cpu",
        precision="fp32",
        progress=False,
        draft=False,
    )
    return replace(base, **over)


@pytest.fixture(scope="module")
def reference(data):
    """An uninterrupted run: the store every other run must reproduce."""
    stores = data / "ref_stores"
    stage.run(small_cfg(data, stores))
    return stores / "DIS-VD.zarr"


def _on_disk(path):
    """The store as written, read with zarr itself (independent of store.py)."""
    return zarr.open_group(str(path), mode="r")


def _arrays(path: Path) -> dict:
    g = _on_disk(path)
    return {k: g[k][:] for k in ARRAYS}


def test_store_matches_an_independent_per_image_computation(data, reference):
    g = _on_disk(reference)
    m = read_manifest(data / "m.jsonl")
    entries = m.split("DIS-VD")
    assert g["done"][:].tolist() == [True] * N
    assert list(g["ids"][:]) == [e.id for e in entries]
    assert g["orig_size"][:].tolist() == [[e.height, e.width] for e in entries]
    assert dam.input_side(50) == 56
    models = {name: dam.load_dam("tiny", "random", seed=k)[0] for k, name in enumerate(("small", "base", "large"))}
    rgb = [np.asarray(Image.open(e.image_path(m.root)).convert("RGB")) for e in entries]
    chw = [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in rgb]
    for batch in ([0, 1], [2, 3], [4]):  # the stage's fixed batches (batch_size 2)
        for name, side, model in [(n, 28, models[n]) for n in ("small", "base", "large")] + [
            ("large_1024", 56, models["large"])
        ]:
            x = torch.stack([dam.to_model_input(chw[i], side) for i in batch])
            with torch.inference_mode():
                want, _ = dam.predict(model, x, 32)
            got = g[f"depth/{name}"][batch[0] : batch[-1] + 1]
            assert np.array_equal(got, want.numpy().astype(np.float16)), (batch, name)
            # Alone (batch 1), the CPU kernels may round differently: equal within float16 steps.
            with torch.inference_mode():
                alone, _ = dam.predict(model, x[:1], 32)
            np.testing.assert_allclose(got[0], alone[0].numpy(), atol=2e-3)
    for i, e in enumerate(entries):
        img = rgb[i]
        # Image: antialiased bilinear, as PIL's BILINEAR resize computes it (within rounding).
        pil = np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR), dtype=np.int16)
        assert np.abs(g["image"][i].astype(np.int16) - pil).max() <= 1
        mask = np.asarray(Image.open(e.mask_path(m.root)).convert("L").resize((32, 32), Image.BILINEAR), dtype=np.int16)
        assert np.abs(g["mask"][i].astype(np.int16) - mask).max() <= 1
        for name in store.DEPTH_MAPS:
            d = g[f"depth/{name}"][i]
            assert d.dtype == np.float16 and d.min() == 0.0 and d.max() == 1.0
    attrs = dict(g.attrs)
    assert attrs["manifest_sha256"] == m.split_hash("DIS-VD")
    assert attrs["models"]["small"] == {"arch": "tiny", "weights": "random", "seed": 0}
    assert attrs["models"]["large_1024"]["input_side"] == 56
    assert attrs["preprocessing"]["input_side"] == 28 and attrs["skipped"] == []


def test_jpeg_draft_decoding_changes_inputs_only_slightly(data):
    from pdfnet_pipeline.depth import inputs

    m = read_manifest(data / "m.jsonl")
    e = m.split("DIS-VD")[0]
    assert min(e.width, e.height) >= 2 * 56  # big enough for a draft reduction
    full = inputs.prepare(e, m.root, inputs.Prep(32, 28, 56, draft=False))
    draft = inputs.prepare(e, m.root, inputs.Prep(32, 28, 56, draft=True))
    assert not torch.equal(full["x_sup"], draft["x_sup"])  # the reduced decode was used
    diff = (full["image"].float() - draft["image"].float()).abs().mean().item()
    assert diff < 3.0, diff


def test_rerun_of_a_complete_store_writes_nothing(data, reference):
    before = {p: p.stat().st_mtime_ns for p in (reference / "depth" / "small").rglob("*") if p.is_file()}
    out = stage.run(small_cfg(data, reference.parent))
    assert out[0]["written"] == 0 and out[0]["done"] == N
    after = {p: p.stat().st_mtime_ns for p in (reference / "depth" / "small").rglob("*") if p.is_file()}
    assert before == after


CRASH = """
import json, os, signal, sys, threading
from pdfnet_pipeline import config, store
from pdfnet_pipeline.depth import stage
original, lock, count = store.Store.write_sample, threading.Lock(), [0]
def crashing(*args, **kwargs):
    original(*args, **kwargs)
    with lock:
        count[0] += 1
        if count[0] >= int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-run: other writer threads may be mid-sample
store.Store.write_sample = crashing
stage.run(config.from_dict(stage.Config, json.loads(sys.argv[1])))
"""


def test_resume_after_kill_9_equals_an_uninterrupted_run(data, reference, tmp_path):
    cfg = small_cfg(data, tmp_path / "stores")
    raw = json.dumps(cfgmod.to_dict(cfg))
    proc = subprocess.run([sys.executable, "-c", CRASH, raw, "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    done = _on_disk(tmp_path / "stores" / "DIS-VD.zarr")["done"][:]
    assert 3 <= done.sum() < N  # really interrupted
    out = stage.run(cfg)  # the kernel dropped the dead run's lock
    assert out[0]["written"] == N - done.sum() and out[0]["done"] == N
    got, want = _arrays(tmp_path / "stores" / "DIS-VD.zarr"), _arrays(reference)
    for k in ARRAYS:
        assert np.array_equal(got[k], want[k]), k


def test_a_second_concurrent_run_is_refused(data, reference):
    with store.writer_lock(reference):
        with pytest.raises(stage.DepthStageError, match="being written by another run"):
            stage.run(small_cfg(data, reference.parent))


def test_a_store_from_another_manifest_is_refused(data, reference, tmp_path):
    m = read_manifest(data / "m.jsonl")
    m.entries = m.entries[:-1]
    write_manifest(m, tmp_path / "other.jsonl")
    with pytest.raises(stage.DepthStageError, match="another manifest: this split.s entries"):
        stage.run(small_cfg(data, reference.parent, manifest=tmp_path / "other.jsonl"))
    # untouched: still the first manifest's store
    assert _on_disk(reference).attrs["manifest_sha256"] == read_manifest(data / "m.jsonl").split_hash("DIS-VD")
    assert store.split_status(reference)["done"] == N


def _corrupt_copy(data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The dataset and manifest with sample 2's JPEG truncated after the manifest was written."""
    shutil.copytree(data / "ds", tmp_path / "ds")
    m = read_manifest(data / "m.jsonl")
    m.root = tmp_path / "ds"
    write_manifest(m, tmp_path / "m.jsonl")
    bad = m.split("DIS-VD")[2].image_path(m.root)
    bad.write_bytes(bad.read_bytes()[:2000])
    return tmp_path / "m.jsonl", bad


def test_bad_input_stop_names_the_file_and_keeps_what_was_written(data, tmp_path):
    manifest, bad = _corrupt_copy(data, tmp_path)
    cfg = small_cfg(data, tmp_path / "stores", manifest=manifest, on_error="stop")
    with pytest.raises(stage.DepthStageError, match=str(bad)):
        stage.run(cfg)
    done = _on_disk(tmp_path / "stores" / "DIS-VD.zarr")["done"][:]
    assert done[:2].tolist() == [True, True] and not done[2]  # batch [0,1] was kept


def test_bad_input_skip_reports_it_and_finishes_the_rest(data, reference, tmp_path):
    manifest, bad = _corrupt_copy(data, tmp_path)
    out = stage.run(small_cfg(data, tmp_path / "stores", manifest=manifest, on_error="skip"))
    g = _on_disk(tmp_path / "stores" / "DIS-VD.zarr")
    assert g["done"][:].tolist() == [True, True, False, True, True]
    assert len(g.attrs["skipped"]) == 1 and g.attrs["skipped"][0].startswith(str(bad))
    assert out[0]["done"] == N - 1
    ref = _on_disk(reference)
    for i in (0, 1, 4):  # batches without the bad sample: bit-identical to the reference
        assert np.array_equal(g["depth/large_1024"][i], ref["depth/large_1024"][i])
    # Sample 3 shared its batch with the bad one, so it ran alone: equal within float16 steps.
    np.testing.assert_allclose(g["depth/large_1024"][3], ref["depth/large_1024"][3], atol=2e-3)
    assert np.array_equal(g["image"][3], ref["image"][3])


TORCHRUN = """
import json, os, sys
from pdfnet_pipeline import config, store
from pdfnet_pipeline.depth import stage
original = store.Store.write_sample
def logged(self, index, *args):
    original(self, index, *args)
    with open(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.log"), "a") as f:
        f.write(f"{index}\\n")
store.Store.write_sample = logged
stage.run(config.from_dict(stage.Config, json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_write_each_sample_exactly_once(data, reference, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN)
    cfg = small_cfg(data, tmp_path / "stores", batch_size=1)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        json.dumps(cfgmod.to_dict(cfg)),
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = {r: [int(x) for x in (tmp_path / f"rank{r}.log").read_text().split()] for r in (0, 1)}
    assert sorted(logs[0]) == [0, 2, 4] and sorted(logs[1]) == [1, 3]  # strided, disjoint
    g = _on_disk(tmp_path / "stores" / "DIS-VD.zarr")
    assert g["done"][:].all()
    ref = _on_disk(reference)
    for k in ("image", "mask", "depth/small", "depth/large_1024"):
        # Other batch composition (batch 1) and thread count: equal up to float16 rounding.
        np.testing.assert_allclose(g[k][:].astype(np.float32), ref[k][:].astype(np.float32), atol=2e-3)


# -- aspect = "keep": the official infer_image per image, batched by input shape

# (W, H) of DIS-like aspect ratios, small for the CPU. At input 28 / supervision 50 their keep
# shapes are (h, w): 120x90 and 150x100 -> (28, 42) / (56, 70); 90x120 -> (42, 28) / (70, 56);
# 160x90 -> (28, 56) / (56, 84); 90x160 -> (56, 28) / (84, 56).
KEEP_SIZES = [(120, 90), (90, 120), (160, 90), (120, 90), (150, 100), (90, 160)]


@pytest.fixture(scope="module")
def keep_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep")
    rng = np.random.default_rng(4)
    for split_dir in ("im", "gt"):
        (root / "ds" / "DIS-VD" / split_dir).mkdir(parents=True)
    for i, (w, h) in enumerate(KEEP_SIZES):
        coarse = rng.integers(0, 256, size=(h // 10, w // 10, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(root / "ds" / "DIS-VD" / "im" / f"k{i}.jpg")
        mask = (rng.random((h, w)) > 0.5).astype(np.uint8) * 255
        Image.fromarray(mask).save(root / "ds" / "DIS-VD" / "gt" / f"k{i}.png")
    write_manifest(scan(root / "ds", ["DIS-VD"], workers=1, progress=False).manifest, root / "m.jsonl")
    cfg = small_cfg(root, root / "keep_stores", manifest=root / "m.jsonl", aspect="keep")
    stage.run(cfg)
    return root, cfg


def test_keep_batches_group_equal_input_shapes_by_position():
    from pdfnet_pipeline.depth import inputs

    keys = "abaacba"
    assert inputs.batches(list(range(7)), keys.__getitem__, 2) == [[0, 2], [3, 6], [1, 5], [4]]
    assert inputs.batches([1, 3, 5], lambda i: 0, 2) == inputs.fixed_batches([1, 3, 5], 2) == [[1, 3], [5]]
    prep = inputs.Prep(32, 28, 50, aspect="keep")
    assert [prep.shapes(w, h) for w, h in KEEP_SIZES] == [
        ((28, 42), (56, 70)),
        ((42, 28), (70, 56)),
        ((28, 56), (56, 84)),
        ((28, 42), (56, 70)),
        ((28, 42), (56, 70)),
        ((56, 28), (84, 56)),
    ]


def test_keep_gives_the_infer_image_input_shape_of_a_dis_photo(tmp_path):
    from pdfnet_pipeline.data.manifest import ManifestEntry
    from pdfnet_pipeline.depth import inputs

    Image.new("RGB", (2592, 1944), (90, 120, 200)).save(tmp_path / "photo.jpg")
    Image.new("L", (2592, 1944), 255).save(tmp_path / "photo.png")
    entry = ManifestEntry("DIS-VD", "photo", "photo.jpg", "photo.png", 2592, 1944, "", "")
    out = inputs.prepare(entry, tmp_path, inputs.Prep(1024, 518, 1024, aspect="keep"))
    assert out["x_in"].shape == (3, 518, 686) and out["x_sup"].shape == (3, 1036, 1372)
    assert out["image"].shape == (1024, 1024, 3) and out["mask"].shape == (1024, 1024)
    square = inputs.prepare(entry, tmp_path, inputs.Prep(1024, 518, 1024))
    assert square["x_in"].shape == (3, 518, 518) and square["x_sup"].shape == (3, 1036, 1036)


def test_keep_store_equals_the_retyped_infer_image(keep_data):
    import cv2
    from test_depth_dam import official_model, reference_infer_image

    root, cfg = keep_data
    g = _on_disk(cfg.stores / "DIS-VD.zarr")
    m = read_manifest(root / "m.jsonl")
    assert g["done"][:].all() and g["orig_size"][:].tolist() == [[h, w] for w, h in KEEP_SIZES]
    assert g.attrs["preprocessing"]["aspect"] == "keep"
    assert g.attrs["preprocessing"]["posemb"].startswith("DINOv2 official")
    models = {name: official_model(k) for k, name in enumerate(("small", "base", "large"))}
    worst = 0.0
    for i, e in enumerate(m.split("DIS-VD")):
        bgr = cv2.imread(str(e.image_path(m.root)))
        for name, target, model in [(n, 28, models[n]) for n in ("small", "base", "large")] + [
            ("large_1024", 50, models["large"])
        ]:
            want = reference_infer_image(model, bgr, target, 32).numpy()
            got = g[f"depth/{name}"][i].astype(np.float32)
            worst = max(worst, float(np.abs(got - want).max()))
    # Measured 2.4e-4: float16 storage (half a step below 1), plus batched vs single kernels and
    # cv2 float64 vs torch float32 input resizing (each ~1e-6).
    assert worst <= 3e-4, worst


def test_a_keep_store_refuses_a_square_run(keep_data):
    _, cfg = keep_data
    with pytest.raises(stage.DepthStageError, match="preprocessing.aspect: store has 'keep', this run 'square'"):
        stage.run(replace(cfg, aspect="square"))
    with pytest.raises(stage.DepthStageError, match="preprocessing.posemb: store has 'DINOv2 official"):
        stage.run(replace(cfg, posemb="transformers"))
    assert store.split_status(cfg.stores / "DIS-VD.zarr")["done"] == len(KEEP_SIZES)


def test_keep_resume_recomputes_whole_shape_batches_bit_identically(keep_data, tmp_path):
    _, cfg = keep_data
    shutil.copytree(cfg.stores, tmp_path / "stores")
    g = zarr.open_group(str(tmp_path / "stores" / "DIS-VD.zarr"), mode="r+")
    for i in (3, 5):  # one of the (28, 42) batch [0, 3] and the lone (56, 28) batch [5]
        g["done"][i] = False
        for name in store.DEPTH_MAPS:
            g[f"depth/{name}"][i] = np.zeros((32, 32), np.float16)
    out = stage.run(replace(cfg, stores=tmp_path / "stores"))
    assert out[0]["written"] == 2 and out[0]["done"] == len(KEEP_SIZES)
    got, want = _arrays(tmp_path / "stores" / "DIS-VD.zarr"), _arrays(cfg.stores / "DIS-VD.zarr")
    for k in ARRAYS:
        assert np.array_equal(got[k], want[k]), k
