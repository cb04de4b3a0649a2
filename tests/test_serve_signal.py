"""`pdfnet-pipeline serve` as a user runs it (a subprocess, the demo's kind of model file: no flag
but --checkpoint): SIGTERM while a request is in flight (its body half sent) stops new
connections, answers that request 200 with its mask, and the process exits 0."""

import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from serve_fixtures import encoded, form, photo, tiny_checkpoint


def test_sigterm_answers_the_request_in_flight_then_exits_0(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "pdfnet_pipeline.cli", "serve", "--checkpoint", str(ckpt), "--port", "0"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        lines = []
        while not (lines and lines[-1].startswith("serving on ")):
            line = proc.stdout.readline()
            assert line, f"the server ended: {''.join(lines)} {proc.stderr.read()}"
            lines.append(line)
        url = lines[-1].split()[2]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")  # loopback by default
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        assert "on cpu (float32, 256 px, one photo at a time)" in "".join(lines)  # the recorded settings

        rgb = photo(7)
        body, ctype = form(encoded(rgb))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.putrequest("POST", "/predict")
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[: len(body) // 2])  # the request is in flight: headers and half its body
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # the listening socket closes: new clients are refused
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
            time.sleep(0.1)
        conn.send(body[len(body) // 2 :])
        res = conn.getresponse()
        data = res.read()
        assert res.status == 200, data
        mask = Image.open(io.BytesIO(data))
        assert mask.mode == "L" and mask.size == (rgb.shape[1], rgb.shape[0])
        assert proc.wait(timeout=60) == 0
        out, err = proc.stdout.read(), proc.stderr.read()
        assert "stopped: in-flight requests answered" in out, (out, err)
        assert "warning: RANDOM-WEIGHT MODELS" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
