"""Running the app: the listening socket, uvicorn, the printed URL, the stop signals.

SIGTERM (or Ctrl-C) stops accepting connections, lets uvicorn answer the requests in flight (at
most `drain_s`), then the app's lifespan lets the batcher finish its queue; `serve` returns and
the command exits 0. (uvicorn re-raises a captured signal once it is done, which would end the
process with that signal instead: `Server.capture_signals` does not.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading

import uvicorn

from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.serve.app import create_app
from pdfnet_pipeline.serve.config import ServeConfig

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # a server in a thread (tests) is stopped by `should_exit`
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(cfg: ServeConfig) -> socket.socket:
    """The listening socket (port 0: a free one), or a UserError naming --host / --port."""
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    try:
        return socket.create_server((cfg.host, cfg.port), family=family)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} ({reason}): pass another --port") from None


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(cfg: ServeConfig, app) -> Server:
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=cfg.drain_s, access_log=False, lifespan="on"
    )
    return Server(config)


def serve(cfg: ServeConfig) -> None:
    """Load the models once, listen, print the URL, serve until SIGTERM / Ctrl-C, drain, return."""
    from pdfnet_pipeline.serve.engine import Engine

    sock = bind(cfg)  # first: a port in use fails before the models load (clients meanwhile wait in the backlog)
    try:
        engine = Engine.load(cfg)
    except BaseException:
        sock.close()
        raise
    if engine.warning:
        print(f"warning: {engine.warning}", file=sys.stderr, flush=True)
    app = create_app(cfg, engine)
    info = engine.info()
    print(f"model: {cfg.checkpoint} on {info['device']} ({info['precision']}, {info['size']} px, {info['batching']})")
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {cfg.host}: other machines can reach this server (no authentication)")
    print(f"serving on {url(sock)}  (Ctrl-C or SIGTERM to stop)", flush=True)
    make_server(cfg, app).run(sockets=[sock])
    print("stopped: in-flight requests answered", flush=True)
