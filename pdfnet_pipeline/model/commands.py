"""`pdfnet-pipeline model info` and `pdfnet-pipeline model convert`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("convert")(convert)


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
