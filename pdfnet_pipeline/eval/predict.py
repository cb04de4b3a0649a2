"""`pdfnet-pipeline predict`: from photos to masks and cut-outs in one command.

Per image: decode (EXIF applied), DAM v2 large depth exactly as the depth stage computes it
(518² input, 1024² output, min-max), the image resized to 1024² with the store's filter, PDFNet
(optionally with TTA), sigmoid, resize back to the photo's size. Writes `<stem>.png` (8-bit mask)
and `<stem>_cutout.png` (RGBA: the photo with the mask as alpha). Bad files are reported by name
and skipped; the others still run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from PIL import Image
from tqdm import tqdm

from pdfnet_pipeline.data.manifest import IMAGE_EXTS


def collect_images(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted, not recursive)."""
    out = []
    for p in inputs:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        else:
            out.append(p)
    return out


class Predictor:
    """DAM v2 + PDFNet on one device; `__call__(rgb uint8 HxWx3) -> mask uint8 HxW`.

    The depth input is computed as the depth stage computes it (`dam_input_size`, default the
    paper's 518; its store side `size`), then the shared `model_inputs` conversion. `compile`:
    DAM and PDFNet compiled for static shapes (every photo enters them at fixed square sizes)."""

    def __init__(
        self,
        checkpoint: Path,
        dam_arch: str = "large",
        dam_weights: str = "hub",
        size: int = 1024,
        tta: bool = False,
        device: str = "auto",
        dam_input_size: int = 518,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        from pdfnet_pipeline import runtime
        from pdfnet_pipeline.depth import dam
        from pdfnet_pipeline.model.checkpoint import load_model

        self.device = runtime.pick_device(device)
        self.size, self.tta, self.dam_side = size, tta, dam.input_side(dam_input_size)
        self.precision = runtime.precision(self.device, precision)  # bf16 / fp16 on GPUs, fp32 on CPU
        self.dam, self.dam_provenance = dam.load_dam(dam_arch, dam_weights)
        self.dam.to(self.device)
        self.model = load_model(checkpoint, map_location=self.device).eval()
        self.random = dam_weights == "random"
        self.depth_fn, self.predict_fn = dam.predict, self.model.predict
        if compile:
            self.depth_fn = torch.compile(dam.predict, dynamic=False)
            self.predict_fn = torch.compile(self.model.predict, dynamic=False)

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from pdfnet_pipeline.data.batch import model_inputs
        from pdfnet_pipeline.depth import dam
        from pdfnet_pipeline.depth.inputs import resize_u8
        from pdfnet_pipeline.eval.tta import predict_logits, to_native_uint8

        chw = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).to(self.device)  # np.array: writable copy
        x = dam.to_model_input(chw, self.dam_side)[None]
        depth, finite = self.depth_fn(self.dam, x, self.size, self.precision.dtype)
        if not bool(finite.all()):
            raise ValueError("DAM v2 produced non-finite depth")
        inputs = model_inputs(resize_u8(rgb, self.size)[None], depth, self.device)
        with self.precision.autocast(self.device):
            logits = predict_logits(self.predict_fn, inputs["image"], inputs["depth"], tta=self.tta)
        return to_native_uint8(logits, rgb.shape[:2])[0, 0].cpu().numpy()


def predict_files(paths: list[Path], out: Path, predictor: Predictor) -> tuple[list[Path], list[str]]:
    """Masks and cut-outs for each readable image; returns (written mask paths, error lines)."""
    from pdfnet_pipeline.data.images import BadInputError, load_image

    out.mkdir(parents=True, exist_ok=True)
    written, errors = [], []
    for path in tqdm(paths, desc="predict", unit="img"):
        try:
            rgb = load_image(path)
        except BadInputError as err:
            errors.append(str(err))
            continue
        mask = predictor(rgb)
        Image.fromarray(mask, "L").save(out / f"{path.stem}.png")
        Image.fromarray(np.dstack([rgb, mask]), "RGBA").save(out / f"{path.stem}_cutout.png")
        written.append(out / f"{path.stem}.png")
    return written, errors


def predict_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    checkpoint: Annotated[
        Path, typer.Option(help="PDFNet checkpoint (.safetensors; convert a .pth with `model convert`).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for <stem>.png masks and <stem>_cutout.png RGBA cut-outs.")] = Path(
        "predictions"
    ),
    dam_weights: Annotated[
        str, typer.Option(help="DAM v2 large weights: hub, a hub id, a local folder, or random.")
    ] = "hub",
    dam_arch: Annotated[str, typer.Option(help="DAM v2 size for the depth input.")] = "large",
    dam_input_size: Annotated[int, typer.Option(help="DAM v2 input side (the depth stage's input_size).")] = 518,
    size: Annotated[int, typer.Option(help="Network input side (multiple of 256).")] = 1024,
    tta: Annotated[bool, typer.Option(help="Flip x 3 scales test-time augmentation.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    compile: Annotated[
        bool, typer.Option(help="torch.compile DAM and PDFNet (static shapes; pays off over many images).")
    ] = False,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any image could not be read.")] = False,
) -> None:
    """Predict a mask and an RGBA cut-out for each image at the image's own resolution."""
    from pdfnet_pipeline.depth.dam import DamWeightsError

    paths = collect_images(images)
    if not paths:
        typer.echo("error: no images found", err=True)
        raise typer.Exit(2)
    try:
        predictor = Predictor(checkpoint, dam_arch, dam_weights, size, tta, device, dam_input_size, compile=compile)
    except (DamWeightsError, FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if predictor.random:
        typer.echo("warning: RANDOM-WEIGHT depth model: these masks show the pipeline, not PDFNet", err=True)
    written, errors = predict_files(paths, out, predictor)
    for line in errors:
        typer.echo(f"skipped: {line}", err=True)
    typer.echo(f"wrote {len(written)} masks and cut-outs to {out} ({len(errors)} skipped)")
    if errors and strict:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
