"""The HTTP side: FastAPI routes over an engine and its batcher.

- `GET /`: the page (static/index.html, the random-weight banner filled in here) and its files
  under `/static/` (package data; nothing from elsewhere: the CSP says so too).
- `POST /predict` (multipart field `image`, or the image as the body): `?output=mask` (default,
  PNG mode L), `cutout` (RGBA: the photo with the mask as alpha), `depth` (PNG mode L), all at the
  photo's size; `all`: JSON with the three as base64 PNGs (what the page asks for). Timing in
  `Server-Timing` (decode, queue, model, encode, total; ms) and `X-Batch-Size`. Errors are JSON
  `{"error": "..."}`: 413 / 415 / 422 / 400 for uploads (`uploads`), 503 + Retry-After when the
  queue is full or the server is stopping, 500 when the model fails.
- `GET /health`: JSON: checkpoint, device, precision, queue depth, max batch, the warning ...

Decoding and encoding run in the thread pool, the model in the batcher's one thread; the event
loop only moves bytes. A request whose client hangs up before the model took it is cancelled
(`Batcher.cancel`), so it is never computed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from pdfnet_pipeline.serve.batcher import Batcher, Closed, Job, QueueFull
from pdfnet_pipeline.serve.config import ServeConfig
from pdfnet_pipeline.serve.encode import OUTPUTS, encode
from pdfnet_pipeline.serve.uploads import UploadError, decode, read_upload

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
LOOPBACK = ("127.0.0.1", "localhost")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _static(name: str) -> str:
    return (resources.files("pdfnet_pipeline.serve") / "static" / name).read_text(encoding="utf-8")


def _page(cfg: ServeConfig, warning: str | None) -> str:
    banner = f'<div id="banner" class="random" role="alert">{html.escape(warning)}</div>' if warning else ""
    return (
        _static("index.html")
        .replace("{{banner}}", banner)
        .replace("{{max_upload_bytes}}", str(cfg.max_upload_bytes))
        .replace("{{max_upload_mb}}", f"{cfg.max_upload_mb:g}")
    )


async def _hung_up(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _result(request: Request, batcher: Batcher, job: Job):
    """The job's result, or None when the client hung up first (the job is then cancelled:
    dropped from the queue if the worker has not taken it)."""
    result = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_hung_up(request))
    try:
        done, _ = await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server gave up on this request (drain timeout)
        batcher.cancel(job)
        raise
    finally:
        gone.cancel()
    if result in done:
        return result.result()
    batcher.cancel(job)
    result.cancel()
    return None


def create_app(cfg: ServeConfig, engine) -> FastAPI:
    """`engine`: `list[photo] -> list[Output]` with `.warning` and `.info()` (`engine.Engine`)."""
    batcher = Batcher(engine, max_batch=cfg.max_batch, max_wait_s=cfg.max_wait_ms / 1000, max_queue=cfg.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:  # after uvicorn answered the in-flight requests: finish the queue, stop the worker
            await asyncio.to_thread(batcher.close, cfg.drain_s)

    app = FastAPI(title="pdfnet-pipeline serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.engine, app.state.config = batcher, engine, cfg
    page = _page(cfg, engine.warning)
    files = {name: _static(name) for name in STATIC}
    security = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
    if cfg.host in LOOPBACK:  # a page elsewhere reaching this server through DNS rebinding is refused
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK))

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={**security, "Cache-Control": "no-cache"})

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in files:
            return error(404, f"no static file {name!r}")
        return Response(files[name], media_type=STATIC[name], headers={**security, "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            **engine.info(),
            "queue_depth": batcher.queue_depth,
            "in_flight": batcher.in_flight,
            "max_batch": cfg.max_batch,
            "max_wait_ms": cfg.max_wait_ms,
            "max_queue": cfg.max_queue,
            "max_upload_mb": cfg.max_upload_mb,
            "max_pixels": cfg.max_pixels,
            "batches": batcher.batches,
            "predictions": batcher.computed,
        }

    @app.post("/predict")
    async def predict(request: Request, output: str = "mask") -> Response:
        start = time.perf_counter()
        try:
            upload = await read_upload(request.headers.get("content-type"), request.stream(), cfg.max_upload_bytes)
            if output not in (*OUTPUTS, "all"):
                raise UploadError(400, f"unknown output {output!r} (mask, cutout, depth, all)")
            photo = await run_in_threadpool(decode, upload, cfg.max_pixels)
        except UploadError as err:
            return error(err.status, err.message)
        except ClientDisconnect:
            return Response(status_code=499)
        decoded = time.perf_counter()
        try:
            job = batcher.submit(photo)
        except QueueFull as full:
            return error(503, f"busy: {full}", {"Retry-After": str(full.retry_after_s)})
        except Closed as closed:
            return error(503, str(closed), {"Retry-After": "10"})
        try:
            result = await _result(request, batcher, job)
        except Exception as err:  # noqa: BLE001 - the model failed on this photo
            return error(500, f"{upload.filename}: prediction failed ({type(err).__name__}: {err})")
        if result is None:
            return Response(status_code=499)  # nobody is listening
        answered = time.perf_counter()
        if output == "all":
            body = await run_in_threadpool(
                lambda: {k: base64.b64encode(encode(k, photo, result.mask, result.depth)).decode() for k in OUTPUTS}
            )
        else:
            body = await run_in_threadpool(encode, output, photo, result.mask, result.depth)
        done = time.perf_counter()
        timing = {"decode": decoded - start, "queue": job.wait_s, "model": job.run_s, "encode": done - answered,
                  "total": done - start}  # fmt: skip
        headers = {
            "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items()),
            "X-Batch-Size": str(job.batch_size),
        }
        if output != "all":
            return Response(body, media_type="image/png", headers=headers)
        h, w = photo.shape[:2]
        about = {"filename": upload.filename, "width": w, "height": h, "batch_size": job.batch_size,
                 "timing_ms": {k: round(v * 1000, 1) for k, v in timing.items()}, "warning": engine.warning}  # fmt: skip
        return JSONResponse({**about, **body}, headers=headers)

    return app
