"""`pdfnet-pipeline predict`: from photos to masks and cut-outs in one command.

Per image: decode (EXIF applied), DAM v2 depth exactly as the depth stage computed the maps the
checkpoint was trained on (the model file's recorded settings: DAM arch / weights / seed, input
size, aspect, store side; a file without them: DAM v2 large from the Hub, 518² input, 1024² output,
min-max), the image resized to the store side with the store's filter, PDFNet (optionally with
TTA), sigmoid, resize back to the photo's size. Flags override each recorded setting. Writes `<stem>.png` (8-bit mask)
and `<stem>_cutout.png` (RGBA: the photo with the mask as alpha). Bad files are reported by name
and skipped; the others still run. The command itself lives in eval/commands.py, so `--help`
does not import this module.

Backends: "torch" (a checkpoint file, `save_pretrained` folder or Hub id) or "onnx" (a graph from
`model export --format onnx`, run by onnxruntime on the CPU; DAM v2 still runs in torch). An ONNX
graph is fixed at its export size, so it sets the network side and refuses TTA's other scales.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
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


BACKENDS = ("torch", "onnx")


class OnnxPredict:
    """`(image, depth) -> logits` through onnxruntime, like `PDFNet.predict` (float32, CPU)."""

    def __init__(self, path: Path) -> None:
        from pdfnet_pipeline.model.export import onnx_session

        if Path(path).suffix != ".onnx" or not Path(path).is_file():
            raise FileNotFoundError(f"--backend onnx needs an exported .onnx file, got {path}")
        self.session = onnx_session(path)
        self.size = int(self.session.get_modelmeta().custom_metadata_map["pdfnet.size"])

    def __call__(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        from pdfnet_pipeline.model.export import onnx_logits

        logits = onnx_logits(self.session, image.float().cpu().numpy(), depth.float().cpu().numpy())
        return torch.from_numpy(logits).to(image.device)


class Predictor:
    """DAM v2 + PDFNet on one device; `__call__(rgb uint8 HxWx3) -> mask uint8 HxW`.

    The depth input is computed as the depth stage computed the checkpoint's training maps: every
    setting left None comes from the depth settings the model file records
    (`model.checkpoint.read_depth`: DAM arch, weights, revision and seed, input size, aspect,
    posemb rule, and the store side as the network side), else the paper's (`DepthSettings()`:
    DAM v2 large from the Hub at 518, 1024² network input). Arch and weights go together: an
    explicit arch other than the recorded one defaults to the "hub" weights. Then the shared
    `model_inputs` conversion. `compile`: DAM and PDFNet compiled for static shapes (square
    inputs: every photo enters them at fixed sizes). `weights_hint`: the caller's option for the
    DAM weights as a format string, for error messages."""

    def __init__(
        self,
        checkpoint: Path | str,
        dam_arch: str | None = None,
        dam_weights: str | None = None,
        size: int | None = None,
        tta: bool = False,
        device: str = "auto",
        dam_input_size: int | None = None,
        precision: str = "auto",
        dam_aspect: str | None = None,
        compile: bool = False,
        backend: str = "torch",
        dam_posemb: str | None = None,
        weights_hint: str = "--dam-weights {}",
    ) -> None:
        from pdfnet_pipeline import provenance, runtime
        from pdfnet_pipeline.depth import dam
        from pdfnet_pipeline.model.checkpoint import (
            DepthSettings,
            load_model,
            read_config,
            read_depth,
            resolve_checkpoint,
        )

        self.device = runtime.pick_device(device)
        if dam_aspect not in (None, "square", "keep"):
            raise ValueError(f"unknown DAM aspect {dam_aspect!r} (square, keep)")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
        self.trained, preset = None, "?"  # the checkpoint's recorded depth settings (None: not recorded)
        if backend == "onnx":
            if tta or compile:
                raise ValueError("--backend onnx runs the graph at its export size: no --tta scales, no --compile")
            self.predict_fn = OnnxPredict(Path(checkpoint))
            if size not in (None, self.predict_fn.size):
                raise ValueError(f"{checkpoint} was exported at {self.predict_fn.size}px, not --size {size}")
            size = self.predict_fn.size
        else:
            path = resolve_checkpoint(checkpoint)
            self.trained, preset = read_depth(path), read_config(path).preset
        rec = self.trained or DepthSettings()
        arch = dam_arch or rec.arch
        weights = dam_weights or (rec.weights if arch == rec.arch else "hub")
        same = (arch, weights) == (rec.arch, rec.weights)  # the recorded DAM: its revision and seed too
        if same and self.trained and Path(weights).is_absolute() and not Path(weights).is_dir():
            raise dam.DamWeightsError(
                f"{checkpoint} was trained on depth maps of DAM v2 {arch} weights {weights}, not a folder on this "
                f"machine: pass {weights_hint.format('DIR')} (a copy of them), {weights_hint.format('hub')} or "
                f"{weights_hint.format('random')}"
            )
        self.dam_arch, self.dam_weights = arch, weights
        self.dam_seed = rec.seed if same else 0
        self.size = size or rec.size
        self.tta, self.dam_target = tta, dam_input_size or rec.input_size
        self.dam_aspect = dam_aspect or rec.aspect
        self.precision = runtime.precision(self.device, precision)  # bf16 / fp16 on GPUs, fp32 on CPU
        self.dam, self.dam_provenance = dam.load_dam(
            arch,
            weights,
            revision=rec.revision if same else None,
            seed=self.dam_seed,
            posemb=dam_posemb or rec.posemb,
            weights_hint=weights_hint,
        )
        self.dam.to(self.device)
        if backend == "torch":  # after DAM: weights that cannot be had fail before this load
            model = load_model(path, map_location=self.device).eval()
            self.predict_fn = torch.compile(model.predict, dynamic=False) if compile else model.predict
        self.random = weights == "random"
        self.warning = provenance.predict_warning(arch, self.random, preset, self.trained)
        self.depth_fn = torch.compile(dam.predict, dynamic=False) if compile else dam.predict

    @torch.no_grad()
    def depth(self, rgb: np.ndarray) -> torch.Tensor:
        """(1, size, size) float32 DAM v2 depth in [0, 1] of an RGB uint8 image, as the stage's."""
        from pdfnet_pipeline.depth import dam

        chw = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).to(self.device)  # np.array: writable copy
        h, w = rgb.shape[:2]
        x = dam.to_model_input(chw, dam.input_shape(w, h, self.dam_target, self.dam_aspect))[None]
        if self.dam_aspect == "keep":
            depth, finite = dam.predict_keep(self.dam, x, [(h, w)], self.size, self.precision.dtype)
        else:
            depth, finite = self.depth_fn(self.dam, x, self.size, self.precision.dtype)
        if not bool(finite.all()):
            raise ValueError("DAM v2 produced non-finite depth")
        return depth

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from pdfnet_pipeline.data.batch import model_inputs
        from pdfnet_pipeline.depth.inputs import resize_u8
        from pdfnet_pipeline.eval.tta import predict_logits, to_native_uint8

        inputs = model_inputs(resize_u8(rgb, self.size)[None], self.depth(rgb), self.device)
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
