"""`pdfnet-pipeline serve`: the command. Imports only typer and the config at module level, so
`--help` imports neither torch nor fastapi nor uvicorn (tests/test_light_cli.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from pdfnet_pipeline.serve.config import ServeConfig

DEFAULTS = ServeConfig(checkpoint="")
MISSING_EXTRA = "pdfnet-pipeline serve needs the [serve] extra: pip install 'pdfnet-pipeline[serve]' ({})"


def serve(
    checkpoint: Annotated[
        str, typer.Option(help="PDFNet checkpoint: a .safetensors file, a save_pretrained folder or a Hub id.")
    ],
    dam_weights: Annotated[
        str | None,
        typer.Option(
            help="DAM v2 weights: hub, a hub id, a local folder, or random. Default: those the checkpoint's "
            "training maps came from (recorded in the model file), else hub."
        ),
    ] = None,
    dam_arch: Annotated[
        str | None, typer.Option(help="DAM v2 size (small, base, large, tiny). Default: the recorded one, else large.")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; the default is this machine only (0.0.0.0: every network).")
    ] = DEFAULTS.host,
    port: Annotated[int, typer.Option(help="Port (0: any free one; the URL is printed).")] = DEFAULTS.port,
    max_batch: Annotated[int, typer.Option(help="Photos computed together at most.")] = DEFAULTS.max_batch,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long the oldest queued photo waits for others to join its batch.")
    ] = DEFAULTS.max_wait_ms,
    max_queue: Annotated[
        int, typer.Option(help="Photos that may wait; more are answered 503 with Retry-After.")
    ] = DEFAULTS.max_queue,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest upload in MB (MiB); larger ones are answered 413.")
    ] = DEFAULTS.max_upload_mb,
    max_pixels: Annotated[
        float,
        typer.Option(help="Largest photo in pixels (W x H, from the header: decompression bombs stop there); 413."),
    ] = DEFAULTS.max_pixels,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = DEFAULTS.device,
    drain_s: Annotated[
        float, typer.Option(help="On SIGTERM / Ctrl-C: how long in-flight requests may take to be answered.")
    ] = DEFAULTS.drain_s,
    stack: Annotated[
        bool | None,
        typer.Option(
            "--stack/--no-stack",
            help="A batch's photos through the network as one tensor (faster; a mask may differ from predict's "
            "by one level on a few pixels) or one by one (bit-identical to predict). Default: stack on CUDA only.",
        ),
    ] = DEFAULTS.stack,
) -> None:
    """A local web page and HTTP API for a model: drop photos on the page, or POST /predict.

    Loads DAM v2 + PDFNet once (the checkpoint's recorded depth settings, as `predict`), batches
    concurrent requests onto the device, and answers each with the mask, the RGBA cut-out or the
    depth map at the photo's own size. GET /health reports the model and the queue."""
    try:
        cfg = ServeConfig(
            checkpoint=checkpoint, dam_weights=dam_weights, dam_arch=dam_arch, host=host, port=port,
            max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, max_upload_mb=max_upload_mb,
            max_pixels=int(max_pixels), device=device, drain_s=drain_s, stack=stack,
        )  # fmt: skip
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        from pdfnet_pipeline.serve.server import serve as run
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("fastapi", "uvicorn", "starlette", "python_multipart"):
            typer.echo(f"error: {MISSING_EXTRA.format(err)}", err=True)
            raise typer.Exit(1) from None
        raise
    from pdfnet_pipeline.errors import UserError

    try:
        run(cfg)
    except UserError:  # weights or checkpoint that cannot be had: one line, exit 1 (cli.main)
        raise
    except (FileNotFoundError, ValueError) as err:  # options that do not go together (as predict)
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
