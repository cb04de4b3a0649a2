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
