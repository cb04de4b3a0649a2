"""`pdfnet-pipeline predict`: from photos to masks and cut-outs in one command.

Per image: decode (EXIF applied), DAM v2 large depth exactly as the depth stage computes it
(518² input, 1024² output, min-max), the image resized to 1024² with the store's filter, PDFNet
(optionally with TTA), sigmoid, resize back to the photo's size. Writes `<stem>.png` (8-bit mask)
and `<stem>_cutout.png` (RGBA: the photo with the mask as alpha). Bad files are reported by name
and skipped; the others still run. The command itself lives in eval/commands.py, so `--help`
does not import this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pdfnet_pipeline.data.manifest import IMAGE_EXTS
from pdfnet_pipeline.device import pick_device, precision


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
    """DAM v2 + PDFNet on one device; `__call__(rgb uint8 HxWx3) -> mask uint8 HxW`."""

    def __init__(self, checkpoint: Path, dam_arch: str = "large", dam_weights: str = "hub",
                 size: int = 1024, tta: bool = False, device: str = "auto") -> None:  # fmt: skip
        from pdfnet_pipeline.depth import dam
        from pdfnet_pipeline.model.checkpoint import load_model

        self.device = pick_device(device)
        self.size, self.tta = size, tta
        self.amp, _ = precision(self.device)  # bf16 where supported, fp16 on older GPUs, fp32 on CPU
        self.dam, self.dam_provenance = dam.load_dam(dam_arch, dam_weights)
        self.dam.to(self.device)
        self.model = load_model(checkpoint, map_location=self.device).eval()
        self.random = dam_weights == "random"

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from pdfnet_pipeline.data.augment import normalize_image
        from pdfnet_pipeline.depth import dam
        from pdfnet_pipeline.depth.inputs import resize_u8
        from pdfnet_pipeline.eval.tta import predict_logits, to_native_uint8

        chw = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).to(self.device)  # np.array: writable copy
        x = dam.to_model_input(chw, dam.input_side(518))[None]
        depth, finite = dam.predict(self.dam, x, self.size, self.amp)
        if not bool(finite.all()):
            raise ValueError("DAM v2 produced non-finite depth")
        image = normalize_image(resize_u8(rgb, self.size)[None].to(self.device))
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits = predict_logits(self.model.predict, image, depth[:, None], tta=self.tta)
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
