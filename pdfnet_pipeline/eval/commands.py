"""Top-level evaluation commands: `pdfnet-pipeline metrics` and `pdfnet-pipeline predict`.

Heavy imports stay inside the commands so `--help` imports neither torch nor cv2
(tests/test_light_cli.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import typer


def default_skeleton_cache() -> Path:
    """GT skeletons for HCE are cached by content under the user's cache folder."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pdfnet-pipeline" / "gt-skeletons"


def metrics(
    pred: Annotated[Path, typer.Option(help="Folder of prediction images (uint8, 0..255).")],
    gt: Annotated[Path, typer.Option(help="Folder of GT masks (foreground > 128).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all values here.")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
    hce_binarize: Annotated[
        str, typer.Option(help="HCE prediction mask: 'dis' (> 128) or 'pysodmetrics' (> 0.5 after min-max).")
    ] = "dis",
    skeleton_cache: Annotated[
        Path | None, typer.Option(help="GT skeleton cache folder (default: ~/.cache/pdfnet-pipeline/gt-skeletons).")
    ] = None,
    no_skeleton_cache: Annotated[
        bool, typer.Option("--no-skeleton-cache", help="Keep GT skeletons in memory only.")
    ] = False,
) -> None:
    """Evaluate prediction images against GT masks matched by file stem (Fmax Fw Em Sa MAE HCE)."""
    from pdfnet_pipeline import workers as processes

    if (workers or processes.default_workers()) > 1:  # the pool's server imports the metric modules
        processes.context(preload=("pdfnet_pipeline.eval.metrics",))  # while this process does too
    processes.keep_freed_memory()  # this process only measures images (in-process with 1 worker)
    from pdfnet_pipeline.eval.metrics import MetricsConfig, evaluate_pairs
    from pdfnet_pipeline.eval.metrics_io import match_dirs
    from pdfnet_pipeline.eval.report import markdown_table

    if hce_binarize not in ("dis", "pysodmetrics"):
        raise typer.BadParameter("expected 'dis' or 'pysodmetrics'", param_hint="--hce-binarize")
    mode: Literal["dis", "pysodmetrics"] = hce_binarize  # type: ignore[assignment]
    try:
        matched = match_dirs(pred, gt)
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if matched.missing:
        typer.echo(f"warning: {len(matched.missing)} GT mask(s) have no prediction: "
                   + ", ".join(matched.missing), err=True)  # fmt: skip
    if matched.extra:
        typer.echo(f"warning: {len(matched.extra)} prediction(s) have no GT mask: "
                   + ", ".join(matched.extra), err=True)  # fmt: skip
    if not matched.pairs:
        typer.echo("error: no prediction matches a GT mask by file stem", err=True)
        raise typer.Exit(1)
    cache = None if no_skeleton_cache else (skeleton_cache or default_skeleton_cache())
    config = MetricsConfig(hce_binarize=mode, skeleton_cache=cache)
    try:
        results = evaluate_pairs(matched.pairs, workers=workers, config=config)
    except (ValueError, TypeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    resized = [im.name for im in results.images if im.resized]
    if resized:
        typer.echo(f"warning: {len(resized)} prediction(s) resized to their GT's size: "
                   + ", ".join(resized), err=True)  # fmt: skip
    n_gt = len(matched.pairs) + len(matched.missing)
    name = pred.name or str(pred)
    typer.echo(markdown_table({name: {**results.summary(), "count": len(results.images)}}))
    typer.echo(f"{len(matched.pairs)} of {n_gt} GT masks evaluated")
    if json_out:
        data = results.to_dict()
        data.update(pred_dir=str(pred), gt_dir=str(gt), missing=matched.missing,
                    extra=matched.extra, hce_binarize=mode)  # fmt: skip
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=1))
        typer.echo(f"wrote {json_out}")


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    checkpoint: Annotated[
        str,
        typer.Option(
            help="PDFNet checkpoint: a .safetensors file (convert a .pth with `model convert`), a "
            "save_pretrained folder or a Hub id; with --backend onnx an exported .onnx file."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for <stem>.png masks and <stem>_cutout.png RGBA cut-outs.")] = Path(
        "predictions"
    ),
    dam_weights: Annotated[
        str | None,
        typer.Option(
            help="DAM v2 weights: hub, a hub id, a local folder, or random (just shows the pipeline). Default: "
            "those the checkpoint's training maps came from (recorded in the model file), else hub."
        ),
    ] = None,
    dam_arch: Annotated[
        str | None, typer.Option(help="DAM v2 size (small, base, large, tiny). Default: the recorded one, else large.")
    ] = None,
    dam_input_size: Annotated[
        int | None, typer.Option(help="DAM v2 input side (the depth stage's input_size). Default: recorded, else 518.")
    ] = None,
    dam_aspect: Annotated[
        str | None,
        typer.Option(
            help="square (paper text) or keep (official infer_image): the depth stage's aspect. "
            "Default: recorded, else square."
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            help="Network input side (multiple of 256). Default: the side the checkpoint was trained at "
            "(recorded), else 1024; an ONNX graph's own."
        ),
    ] = None,
    tta: Annotated[bool, typer.Option(help="Flip x 3 scales test-time augmentation.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    compile: Annotated[
        bool, typer.Option(help="torch.compile DAM and PDFNet (static shapes; pays off over many images).")
    ] = False,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any image could not be read.")] = False,
    backend: Annotated[
        str, typer.Option(help="torch, or onnx (onnxruntime on the CPU; needs the [onnx] extra).")
    ] = "torch",
) -> None:
    """Predict a mask and an RGBA cut-out for each image at the image's own resolution.

    DAM v2 and the network side default to the settings the checkpoint was trained with (recorded
    in its model file by the train stage); every flag overrides its setting."""
    from pdfnet_pipeline.errors import UserError
    from pdfnet_pipeline.eval.predict import Predictor, collect_images, predict_files

    paths = collect_images(images)
    if not paths:
        typer.echo("error: no images found", err=True)
        raise typer.Exit(2)
    try:
        predictor = Predictor(
            checkpoint,
            dam_arch,
            dam_weights,
            size,
            tta,
            device,
            dam_input_size,
            dam_aspect=dam_aspect,
            compile=compile,
            backend=backend,
        )
    except UserError as err:  # weights or checkpoint that cannot be used (offline, missing, mismatched)
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except (FileNotFoundError, ValueError) as err:  # options that do not go together
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if predictor.warning:
        typer.echo(f"warning: {predictor.warning}", err=True)
    written, errors = predict_files(paths, out, predictor)
    for line in errors:
        typer.echo(f"skipped: {line}", err=True)
    typer.echo(f"wrote {len(written)} masks and cut-outs to {out} ({len(errors)} skipped)")
    if errors and strict:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
    app.command("predict")(predict)
