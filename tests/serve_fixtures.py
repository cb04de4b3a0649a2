"""Shared pieces of the serve tests: a tiny random-weight model file that records its depth
settings (tiny random DAM v2, 256 px, as the demo's), generated photos, a server running in a
thread on a free loopback port, and a plain HTTP client (http.client: nothing to install)."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pdfnet_pipeline.serve.config import ServeConfig

SIZE = 256
DAM_INPUT = 112  # the tiny DAM's input side: fast, and a real 8 x 8 patch grid


def tiny_checkpoint(path):
    """A random tiny PDFNet whose file records a tiny random DAM v2 at 112 -> 256 (no flags needed)."""
    import torch

    from pdfnet_pipeline.model.checkpoint import DepthSettings, save_model
    from pdfnet_pipeline.model.pdfnet import PDFNetConfig, build_pdfnet

    torch.manual_seed(0)
    depth = DepthSettings(
        arch="tiny", weights="random", seed=3, input_size=DAM_INPUT, size=SIZE, pdfnet_random_init=True
    )
    save_model(build_pdfnet(PDFNetConfig(preset="tiny")), path, depth)
    return path


def photo(index: int, family: str = "demo") -> np.ndarray:
    """A generated scene (352-480 px a side), different for every index."""
    from pdfnet_pipeline.data.scenes import make_scene

    return make_scene(family, 11, "DIS-VD", index)[0]


def encoded(rgb: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **save)
    return buf.getvalue()


def form(data: bytes, filename: str = "photo.png", field: str = "image") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.body))


def request(port: int, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
            timeout: float = 60) -> Answer:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        res = conn.getresponse()
        return Answer(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
    finally:
        conn.close()


def post_image(port: int, data: bytes, output: str | None = None, filename: str = "photo.png", **kw) -> Answer:
    body, ctype = form(data, filename)
    path = "/predict" + (f"?output={output}" if output else "")
    return request(port, "POST", path, body, ctype, **kw)


@contextlib.contextmanager
def running(cfg: ServeConfig, engine):
    """The app on a free 127.0.0.1 port in a thread; yields (port, app); stopped (and drained) after."""
    from pdfnet_pipeline.serve.app import create_app
    from pdfnet_pipeline.serve.server import bind, make_server

    cfg = cfg.replace(host="127.0.0.1", port=0)
    app = create_app(cfg, engine)
    sock = bind(cfg)
    port = sock.getsockname()[1]
    server = make_server(cfg, app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port, app
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"
