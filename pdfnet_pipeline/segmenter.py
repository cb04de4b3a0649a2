"""The Python API: `Segmenter.from_pretrained(checkpoint).predict(image) -> mask`.

One object holding DAM v2 (the depth input, computed as the depth stage computes it) and PDFNet,
for use from a notebook or a service; `pdfnet-pipeline predict` is the same path over files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


class Segmenter:
    """DAM v2 + PDFNet. `predict(image)` returns the mask as a PIL "L" image at the image's size."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        *,
        depth_weights: str | None = None,
        depth_arch: str | None = None,
        size: int | None = None,
        tta: bool = False,
        device: str = "auto",
        backend: str = "torch",
        **options,
    ) -> Segmenter:
        """`checkpoint`: a project .safetensors file, a `save_pretrained` folder or a Hub id (or,
        with `backend="onnx"`, an exported .onnx file). `depth_weights`: "hub" (the official DAM v2
        id for `depth_arch`), a hub id, a local folder, or "random" (shows the pipeline only).
        Left None, `depth_weights`, `depth_arch`, `size` and the DAM input options default to the
        settings the checkpoint was trained with (recorded in its model file), else DAM v2 large
        from the Hub at 518 and a 1024 network side. `options` go to `eval.predict.Predictor`
        (dam_input_size, dam_aspect, dam_posemb, precision, compile)."""
        from pdfnet_pipeline.eval.predict import Predictor

        predictor = Predictor(
            checkpoint,
            dam_arch=depth_arch,
            dam_weights=depth_weights,
            size=size,
            tta=tta,
            device=device,
            backend=backend,
            weights_hint='depth_weights="{}"',
            **options,
        )
        return cls(predictor)

    @property
    def random_depth(self) -> bool:
        """True when the depth model has random weights: masks then show the pipeline, not PDFNet."""
        return self.predictor.random

    @property
    def warning(self) -> str | None:
        """Which model in the way has random weights (DAM, or PDFNet trained from random init), as
        `pdfnet-pipeline predict` prints it; None when neither has."""
        return self.predictor.warning

    def predict(self, image: Image.Image | np.ndarray | str | Path) -> Image.Image:
        """The mask (0..255) of a PIL image, an H x W x 3 uint8 RGB array or an image file."""
        from pdfnet_pipeline.data.images import load_image

        if isinstance(image, (str, Path)):
            rgb = load_image(image)
        elif isinstance(image, Image.Image):
            from PIL import ImageOps

            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        else:
            rgb = np.asarray(image)
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
        return Image.fromarray(self.predictor(rgb), "L")
