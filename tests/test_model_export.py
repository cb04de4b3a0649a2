"""ONNX export: onnxruntime's logits match torch's `PDFNet.predict` (tiny preset, 256 and 512),
the batch axis is dynamic, and the command refuses what it cannot export."""

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from pdfnet_pipeline.cli import app
from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet
from pdfnet_pipeline.model.export import export_onnx, onnx_logits, onnx_session

TOL = 1e-4  # max abs logit difference allowed (float32 graph vs eager; observed ~1e-5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_pdfnet(PDFNetConfig(preset="tiny")).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(folder)
    return folder


def _torch_logits(model, image, depth):
    with torch.no_grad():
        return model.predict(torch.from_numpy(image), torch.from_numpy(depth)).numpy()


def _inputs(batch, size, seed):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    depth = (rng.random((batch, 1, size, size), dtype=np.float32) * 7 + 2).astype(np.float32)  # raw, not [0, 1]
    return image, depth


@pytest.fixture(scope="module")
def exported256(checkpoint, tmp_path_factory):
    """The CLI's export at 256 and what it printed."""
    out = tmp_path_factory.mktemp("onnx") / "tiny256.onnx"
    res = CliRunner().invoke(app, ["model", "export", str(checkpoint), "--format", "onnx", str(out), "--size", "256"])
    assert res.exit_code == 0, res.output
    return out, res


@pytest.mark.slow
def test_cli_export_256_matches_torch_at_any_batch(model, exported256):
    out, res = exported256
    reported = float(res.output.split("max abs logit difference ")[1])
    assert 0 <= reported <= TOL

    proto = onnx.load(str(out))
    (image_in, depth_in), (logits_out,) = proto.graph.input, proto.graph.output
    assert [image_in.name, depth_in.name, logits_out.name] == ["image", "depth", "logits"]
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (image_in, depth_in)]
    assert isinstance(dims[0][0], str) and dims[0][0] == dims[1][0]  # one symbolic batch axis
    assert dims[0][1:] == [3, 256, 256] and dims[1][1:] == [1, 256, 256]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["pdfnet.config"])["preset"] == "tiny" and meta["pdfnet.size"] == "256"

    session = onnx_session(out)
    for batch, seed in ((1, 0), (2, 1), (3, 2)):
        image, depth = _inputs(batch, 256, seed)
        got = onnx_logits(session, image, depth)
        expected = _torch_logits(model, image, depth)
        assert got.shape == expected.shape == (batch, 1, 256, 256)
        diff = float(np.abs(got - expected).max())
        print(f"onnx vs torch, tiny, 256, batch {batch}: max abs diff {diff:.3g}")
        assert diff <= TOL
    # each sample is its own: the batch-3 logits of sample 0 are its batch-1 logits
    single = onnx_logits(session, image[:1], depth[:1])
    np.testing.assert_allclose(single, got[:1], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_export_512_matches_torch(model, tmp_path):
    out = export_onnx(model, tmp_path / "tiny512.onnx", size=512)
    image, depth = _inputs(2, 512, 3)
    diff = float(np.abs(onnx_logits(onnx_session(out), image, depth) - _torch_logits(model, image, depth)).max())
    print(f"onnx vs torch, tiny, 512, batch 2: max abs diff {diff:.3g}")
    assert diff <= TOL


def test_cli_export_refuses_unknown_format_and_bad_size(checkpoint, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["model", "export", str(checkpoint), str(tmp_path / "m.tflite"), "--format", "tflite"])
    assert res.exit_code == 2 and "unknown format 'tflite' (known: onnx)" in res.output
    res = runner.invoke(app, ["model", "export", str(checkpoint), str(tmp_path / "m.onnx"), "--size", "300"])
    assert res.exit_code == 2 and "size 300: must be a multiple of 256" in res.output
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_segmenter_and_predict_backend_onnx_match_torch(checkpoint, exported256, real_dir, tmp_path):
    """The Python API on both backends (tiny, 256, random DAM): masks at the photo's size that
    differ by at most one grey level (logits agree to 1e-4, then x255 and truncation), the same
    mask from a PIL image, an array and a file, and `predict --backend onnx` writing exactly the
    ONNX segmenter's mask."""
    from PIL import Image

    from pdfnet_pipeline import Segmenter

    onnx_path = exported256[0]
    kw = dict(depth_weights="random", depth_arch="tiny", device="cpu")
    seg_torch = Segmenter.from_pretrained(checkpoint, size=256, **kw)
    seg_onnx = Segmenter.from_pretrained(onnx_path, backend="onnx", **kw)
    assert seg_torch.random_depth and seg_onnx.predictor.size == 256
    photo = real_dir / "images" / "car-1.jpg"
    pil = Image.open(photo)
    m_torch, m_onnx = seg_torch.predict(pil), seg_onnx.predict(pil)
    assert m_torch.mode == m_onnx.mode == "L" and m_torch.size == m_onnx.size == pil.size
    a, b = np.asarray(m_torch).astype(int), np.asarray(m_onnx).astype(int)
    assert np.abs(a - b).max() <= 1 and a.std() > 0  # a real map, not a constant
    np.testing.assert_array_equal(np.asarray(seg_torch.predict(photo)), a)
    np.testing.assert_array_equal(np.asarray(seg_torch.predict(np.asarray(pil.convert("RGB")))), a)

    args = ["predict", str(photo), "--checkpoint", str(onnx_path), "--backend", "onnx", "--out", str(tmp_path)]
    args += ["--dam-weights", "random", "--dam-arch", "tiny", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "car-1.png")), b)
    for extra, message in ((["--tta"], "no --tta"), (["--size", "512"], "exported at 256px, not --size 512")):
        res = CliRunner().invoke(app, args + extra)
        assert res.exit_code == 2 and message in res.output, res.output
    with pytest.raises(FileNotFoundError, match="needs an exported .onnx file"):
        Segmenter.from_pretrained(checkpoint, backend="onnx", **kw)
