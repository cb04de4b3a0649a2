"""`pdfnet-pipeline model info`, `model convert` and `model export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("convert")(convert)
    app.command("export")(export)


def info(
    variant: Annotated[str, typer.Option(help="paper (released checkpoint) or v2.")] = "paper",
    preset: Annotated[str, typer.Option(help="reference or tiny.")] = "reference",
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Parameter counts per part, from a model built on the meta device (no weights, no download)."""
    import torch

    from pdfnet_pipeline.model.pdfnet import PDFNet, PDFNetConfig, parameter_counts

    try:
        with torch.device("meta"):
            model = PDFNet(PDFNetConfig(preset=preset, variant=variant))
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    counts = parameter_counts(model)
    if as_json:
        typer.echo(json.dumps({"variant": variant, "preset": preset, **counts}))
        return
    typer.echo(f"PDFNet {preset} / {variant} variant")
    for key, value in counts.items():
        typer.echo(f"  {key:<14} {value:>13,}")


def convert(
    reference: Annotated[Path, typer.Argument(help="Checkpoint in the reference layout (.pth).", exists=True)],
    out: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    variant: Annotated[str, typer.Option(help="Variant the checkpoint was trained as.")] = "paper",
    preset: Annotated[str, typer.Option(help="reference or tiny.")] = "reference",
) -> None:
    """Map a reference checkpoint strictly onto this project's model and write safetensors."""
    from pdfnet_pipeline.model.checkpoint import CheckpointError, convert_reference
    from pdfnet_pipeline.model.pdfnet import PDFNetConfig

    try:
        stats = convert_reference(reference, out, PDFNetConfig(preset=preset, variant=variant))
    except CheckpointError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out}: {stats['tensors']} tensors, {stats['parameters']:,} parameters")


def export(
    checkpoint: Annotated[str, typer.Argument(help="Project .safetensors file, save_pretrained folder or Hub id.")],
    out: Annotated[Path, typer.Argument(help="Output file, e.g. pdfnet.onnx.")],
    format_: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    size: Annotated[
        int, typer.Option(help="Input height = width (a multiple of 256); the batch stays dynamic.")
    ] = 1024,
    check: Annotated[bool, typer.Option(help="Compare onnxruntime's logits with torch's on one random sample.")] = True,
) -> None:
    """Export PDFNet inference (normalised image + raw depth -> logits) with a dynamic batch axis."""
    if format_ != "onnx":
        typer.echo(f"error: unknown format {format_!r} (known: onnx)", err=True)
        raise typer.Exit(2)
    from pdfnet_pipeline.model.checkpoint import load_model
    from pdfnet_pipeline.model.export import export_onnx, parity

    model = load_model(checkpoint)
    try:
        export_onnx(model, out, size)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB; inputs image, depth at {size}x{size}, batch dynamic)"
    )
    if check:
        # one sample: the reference preset at 1024 peaks at 5.8 GiB so; a batch of 2 passed 12.9 GiB
        diff = parity(out, model, size, batch=1)
        typer.echo(f"onnxruntime vs torch, one sample at {size}: max abs logit difference {diff:.3g}")
