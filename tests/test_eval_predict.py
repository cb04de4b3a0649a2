"""`pdfnet-pipeline predict` end to end on real photos with tiny random-weight models."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pdfnet_pipeline.cli import app


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pdfnet_pipeline.model.checkpoint import save_model
    from pdfnet_pipeline.model.pdfnet import PDFNetConfig, build_pdfnet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(build_pdfnet(PDFNetConfig(preset="tiny")), path)
    return path


def test_predict_writes_native_size_masks_and_cutouts(tmp_path, real_dir, tiny_checkpoint):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("car-1.jpg", "arc2017.png"):
        (images / name).write_bytes((real_dir / "images" / name).read_bytes())
    (images / "broken.jpg").write_bytes((real_dir / "images" / "car-1.jpg").read_bytes()[:3000])
    out = tmp_path / "out"
    args = [
        "predict",
        str(images),
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--dam-weights",
        "random",
        "--dam-arch",
        "tiny",
        "--size",
        "256",
        "--device",
        "cpu",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "broken.jpg" in res.output and "RANDOM-WEIGHT" in res.output
    for name, size in (("car-1", (480, 360)), ("arc2017", (640, 480))):
        mask = Image.open(out / f"{name}.png")
        cut = Image.open(out / f"{name}_cutout.png")
        assert mask.mode == "L" and mask.size == size
        assert cut.mode == "RGBA" and cut.size == size
        src = np.asarray(Image.open(images / (name + (".jpg" if name == "car-1" else ".png"))).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(cut)[..., :3], src)
        np.testing.assert_array_equal(np.asarray(cut)[..., 3], np.asarray(mask))
    assert not (out / "broken.png").exists()
    assert CliRunner().invoke(app, args + ["--strict"]).exit_code == 1


def test_predict_keep_aspect_depth_is_the_retyped_infer_image(real_dir, tiny_checkpoint):
    import cv2
    from test_depth_dam import official_model, reference_infer_image

    from pdfnet_pipeline.eval.predict import Predictor

    bgr = cv2.imread(str(real_dir / "images" / "car-1.jpg"))  # 480 x 360
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    kwargs = dict(dam_arch="tiny", dam_weights="random", size=256, device="cpu", dam_input_size=140)
    keep = Predictor(tiny_checkpoint, dam_aspect="keep", **kwargs)
    want = reference_infer_image(official_model(0), bgr, 140, 256)  # load_dam's default seed 0
    torch.testing.assert_close(keep.depth(rgb)[0], want, rtol=0, atol=2e-5)
    square = Predictor(tiny_checkpoint, **kwargs).depth(rgb)[0]
    assert (square - want).abs().mean().item() > 0.02
    assert keep(rgb).shape == (360, 480)
    with pytest.raises(ValueError, match="unknown DAM aspect 'crop'"):
        Predictor(tiny_checkpoint, dam_aspect="crop", **kwargs)


@pytest.fixture(scope="module")
def trained_on_store(tmp_path_factory):
    """A DIS-VD store from the depth stage (tiny random DAM, seed 5: the large map's model gets
    seed 7) and a tiny model file recording its depth settings, as the trainer writes it."""
    from pdfnet_pipeline import provenance
    from pdfnet_pipeline.data.manifest import scan, write_manifest
    from pdfnet_pipeline.data.sample import generate_sample
    from pdfnet_pipeline.depth import stage
    from pdfnet_pipeline.model.checkpoint import save_model
    from pdfnet_pipeline.model.pdfnet import PDFNetConfig, build_pdfnet

    root = tmp_path_factory.mktemp("trained")
    generate_sample(root / "ds", per_split=1, seed=3, train=0)
    write_manifest(scan(root / "ds", ["DIS-VD"], workers=1, progress=False).manifest, root / "m.jsonl")
    tiny = stage.ModelSpec("tiny", "random")
    cfg = stage.Config(
        manifest=root / "m.jsonl", stores=root / "stores", splits=["DIS-VD"], size=256, input_size=28,
        maps=["large"], models=stage.Models(tiny, tiny, tiny), seed=5, batch_size=1, workers=0,
        write_threads=1, device="cpu", precision="fp32", progress=False, draft=False,
    )  # fmt: skip
    stage.run(cfg)
    st = root / "stores" / "DIS-VD.zarr"
    depth = provenance.trained_depth([st], {"preset": "tiny", "backbone_weights": "random"})
    torch.manual_seed(0)
    save_model(build_pdfnet(PDFNetConfig(preset="tiny")), root / "best.safetensors", depth)
    photo = next((root / "ds" / "DIS-VD" / "im").iterdir())
    return root / "best.safetensors", st, photo


def test_predict_defaults_to_the_checkpoint_depth_settings(trained_on_store, tmp_path):
    """No flags: the DAM (arch, random weights with the stage's seed), its input size and the network
    side come from the model file, and the depth map equals the store's (float16 rounding)."""
    from pdfnet_pipeline.data.images import load_image
    from pdfnet_pipeline.eval.predict import Predictor
    from pdfnet_pipeline.store import open_read

    ckpt, st_path, photo = trained_on_store
    p = Predictor(ckpt, device="cpu")
    assert (p.dam_arch, p.dam_weights, p.dam_seed, p.dam_target, p.dam_aspect, p.size) == (
        "tiny", "random", 7, 28, "square", 256
    )  # fmt: skip
    assert p.dam.config.backbone_config.hidden_size == 32 and p.trained.map == "large"
    rgb = load_image(photo)
    st = open_read(st_path)
    stored = torch.from_numpy(st.sample(0, ("large",)).depth["large"].astype(np.float32))
    got = p.depth(rgb)[0]
    assert got.shape == (256, 256) and stored.std() > 0.05
    torch.testing.assert_close(got, stored, rtol=0, atol=5e-4)  # the store keeps float16
    other = Predictor(ckpt, device="cpu", dam_input_size=56, size=512)  # flags override
    assert (other.dam_target, other.size, other.dam_seed) == (56, 512, 7)

    res = CliRunner().invoke(app, ["predict", str(photo), "--checkpoint", str(ckpt), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (
        "warning: RANDOM-WEIGHT MODELS: depth: DAM v2 tiny with random weights; PDFNet tiny preset trained from "
        "random init on depth maps of a random-weight DAM v2: these masks show the pipeline, not a trained PDFNet"
    ) in res.output
    assert Image.open(tmp_path / f"{photo.stem}.png").size == Image.open(photo).size


def test_offline_hub_weights_fail_at_once_naming_the_flag(tiny_checkpoint, real_dir, tmp_path):
    """An unreachable Hub (loopback endpoint, empty cache), from the CLI: exit 1 and one line naming
    --dam-weights, instead of the download's retries."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(Path(__file__).parents[1])
    )
    photo = real_dir / "images" / "car-1.jpg"
    args = ["predict", str(photo), "--checkpoint", str(tiny_checkpoint), "--dam-weights", "hub", "--device", "cpu"]
    res = subprocess.run(
        [sys.executable, "-m", "pdfnet_pipeline.cli", *args, "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and not (tmp_path / "out").exists()
    assert lines[0].startswith(
        "error: cannot load DAM v2 large weights 'depth-anything/Depth-Anything-V2-Large-hf': not in the Hugging "
        "Face cache, and http://127.0.0.1:9 cannot be reached ("
    )
    assert lines[0].endswith(
        "; pass --dam-weights DIR for a local copy (`huggingface-cli download depth-anything/Depth-Anything-V2-"
        "Large-hf --local-dir DIR` on a machine with internet) or --dam-weights random to just see the pipeline"
    )
