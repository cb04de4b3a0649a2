"""`pdfnet-pipeline serve`'s HTTP API on generated photos, with a tiny random-weight model: the
masks equal `Segmenter.predict`'s on the same photo (bit for bit), the cut-out is the photo with
the mask as alpha, the depth map has the photo's size; each bad upload gets its status and a JSON
message naming the problem; /health reports the model and the queue."""

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from serve_fixtures import encoded, form, photo, post_image, request, running, tiny_checkpoint

from pdfnet_pipeline.data.images import load_image
from pdfnet_pipeline.segmenter import Segmenter
from pdfnet_pipeline.serve.config import ServeConfig
from pdfnet_pipeline.serve.engine import Engine

LIMITS = {"max_upload_mb": 1, "max_pixels": 2_000_000}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.safetensors")


@pytest.fixture(scope="module")
def segmenter(ckpt):
    return Segmenter.from_pretrained(ckpt, device="cpu")  # the checkpoint's recorded tiny random DAM, 256 px


@pytest.fixture(scope="module")
def server(ckpt, segmenter):
    cfg = ServeConfig(checkpoint=str(ckpt), **LIMITS)
    with running(cfg, Engine(segmenter.predictor, checkpoint=str(ckpt))) as (port, app):
        yield port


def _exif_rotated_jpeg(rgb: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encoded(rgb, "JPEG", quality=92, exif=exif.tobytes())


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, a few bytes of data: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_masks_cutouts_and_depth_equal_predict_at_the_photo_size(server, segmenter, tmp_path):
    files = {
        "scene.png": encoded(photo(0)),
        "scene.jpg": encoded(photo(1), "JPEG", quality=90),
        "rotated.jpg": _exif_rotated_jpeg(photo(2)),  # EXIF orientation 6: served upright, W and H swapped
    }
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        rgb = load_image(path)
        want = np.asarray(segmenter.predict(path))
        h, w = rgb.shape[:2]
        if name == "rotated.jpg":
            assert (w, h) == Image.open(io.BytesIO(data)).size[::-1]

        mask = post_image(server, data, filename=name)
        assert mask.status == 200, mask.body
        assert mask.headers["content-type"] == "image/png"
        assert [k for k, _ in (p.split(";") for p in mask.headers["server-timing"].split(", "))] == [
            "decode", "queue", "model", "encode", "total"
        ]  # fmt: skip
        assert mask.headers["x-batch-size"] == "1"
        got = mask.image()
        assert got.mode == "L" and got.size == (w, h)
        np.testing.assert_array_equal(np.asarray(got), want)  # bit-identical to Segmenter.predict

        cutout = post_image(server, data, "cutout", filename=name).image()
        assert cutout.mode == "RGBA" and cutout.size == (w, h)
        np.testing.assert_array_equal(np.asarray(cutout)[..., 3], want)
        np.testing.assert_array_equal(np.asarray(cutout)[..., :3], rgb)

        depth = post_image(server, data, "depth", filename=name).image()
        assert depth.mode == "L" and depth.size == (w, h)
        assert np.asarray(depth).std() > 5  # a map, not a constant

    raw = request(server, "POST", "/predict", files["scene.png"], "image/png")  # the image as the body
    np.testing.assert_array_equal(np.asarray(raw.image()), np.asarray(segmenter.predict(tmp_path / "scene.png")))


def test_output_all_is_the_three_pngs_as_json(server, tmp_path):
    data = encoded(photo(3))
    answer = post_image(server, data, "all", filename="three.png")
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    got = answer.json()
    h, w = photo(3).shape[:2]
    assert (got["filename"], got["width"], got["height"], got["batch_size"]) == ("three.png", w, h, 1)
    assert set(got["timing_ms"]) == {"decode", "queue", "model", "encode", "total"}
    assert got["warning"].startswith("RANDOM-WEIGHT MODELS: depth: DAM v2 tiny with random weights")
    for key in ("mask", "cutout", "depth"):
        single = post_image(server, data, key).body
        assert base64.b64decode(got[key]) == single


def test_health_reports_model_queue_and_warning(server, ckpt):
    health = request(server, "GET", "/health").json()
    assert health["status"] == "ok" and health["checkpoint"] == str(ckpt)
    assert (health["device"], health["precision"], health["size"]) == ("cpu", "float32", 256)
    assert health["dam"] == {"arch": "tiny", "weights": "random", "input_size": 112, "aspect": "square"}
    assert (health["queue_depth"], health["in_flight"], health["max_batch"], health["max_queue"]) == (0, 0, 4, 16)
    assert health["random_weights"] is True
    assert health["warning"] == (
        "RANDOM-WEIGHT MODELS: depth: DAM v2 tiny with random weights; PDFNet tiny preset trained from random init "
        "on depth maps of a random-weight DAM v2: these masks show the pipeline, not a trained PDFNet"
    )


def _truncated_jpeg() -> bytes:
    data = encoded(photo(4), "JPEG", quality=95)
    return data[: len(data) // 2]


BAD = {
    "too many bytes": (
        lambda: (np.random.default_rng(0).bytes(1536 * 1024), "big.png"),
        413,
        "upload of 1.5 MB exceeds the limit of 1.0 MB (--max-upload-mb)",
    ),
    "too many pixels": (
        lambda: (encoded(np.zeros((1500, 2000, 3), np.uint8)), "wide.png"),
        413,
        "wide.png: 2000x1500 = 3,000,000 pixels exceeds the limit of 2,000,000 (--max-pixels)",
    ),
    "bomb header": (
        lambda: (_png_header(100_000, 100_000), "bomb.png"),
        413,
        "bomb.png: 100000x100000 = 10,000,000,000 pixels exceeds the limit of 2,000,000 (--max-pixels)",
    ),
    "text file": (
        lambda: (b"not an image, just words\n" * 10, "notes.txt"),
        415,
        "notes.txt: not a readable image (cannot identify image file)",
    ),
    "truncated jpeg": (
        lambda: (_truncated_jpeg(), "cut.jpg"),
        422,
        "cut.jpg: corrupt or truncated image data (image file is truncated",
    ),
    "empty file": (lambda: (b"", "empty.png"), 415, "empty.png: empty upload, not an image"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_uploads_get_their_status_and_a_message(server, case):
    make, status, message = BAD[case]
    data, name = make()
    answer = post_image(server, data, filename=name)
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"].startswith(message)
    print(f"{case}: {status} {answer.json()['error']}")


def test_bad_requests(server):
    data = encoded(photo(0))
    answer = request(server, "POST", "/predict", json.dumps({"image": "x"}).encode(), "application/json")
    assert answer.status == 415
    assert answer.json()["error"].startswith("expected a multipart/form-data form with an 'image' file field")
    body, ctype = form(data, field="photo")
    answer = request(server, "POST", "/predict", body, ctype)
    assert (answer.status, answer.json()) == (415, {"error": "no 'image' file field in the form (multipart/form-data)"})
    answer = post_image(server, data, "thumbnail")
    assert (answer.status, answer.json()) == (400, {"error": "unknown output 'thumbnail' (mask, cutout, depth, all)"})
    assert request(server, "GET", "/static/../app.py").status == 404
    assert request(server, "GET", "/health").status == 200  # still serving


def test_cli_refuses_bad_limits_and_a_port_in_use(ckpt):
    import socket

    from typer.testing import CliRunner

    from pdfnet_pipeline.cli import app
    from pdfnet_pipeline.errors import UserError

    res = CliRunner().invoke(app, ["serve", "--checkpoint", str(ckpt), "--max-batch", "0", "--max-queue", "0"])
    assert res.exit_code == 2
    assert "error: --max-batch must be >= 1, got 0; --max-queue must be >= 1, got 0" in res.output
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        res = CliRunner().invoke(app, ["serve", "--checkpoint", str(ckpt), "--port", port])
    assert isinstance(res.exception, UserError)  # cli.main prints it as one line, exit 1
    assert str(res.exception) == f"cannot listen on 127.0.0.1:{port} (Address already in use): pass another --port"
