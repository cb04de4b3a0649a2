"""The model side of the server: a `Predictor` (DAM v2 + PDFNet) run on a batch of photos.

Per photo the path is `Predictor.__call__`'s (depth as the depth stage computed it, the photo
resized to the network side, PDFNet, sigmoid, back to the photo's size), so a mask equals
`Segmenter.predict`'s on the same photo; the depth map comes along (the photo's size, 0..255).

`stack`: several photos go through DAM and PDFNet as one tensor batch (the GPU's gain), else one
after the other. PDFNet and DAM never mix the samples of a batch, but the CPU's kernels may
round a batch differently from one photo (oneDNN picks by shape: a pixel may move by one level),
so stacking is the default on CUDA only; on the CPU, one at a time keeps every mask bit-identical
to `Segmenter.predict` and costs little (tiny preset at 256 px on 2 cores, batches of 4: 289 ms a
photo one at a time, 250 ms stacked, with ~1e-5 of the pixels one level off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pdfnet_pipeline.eval.predict import Predictor
    from pdfnet_pipeline.serve.config import ServeConfig


@dataclass(frozen=True)
class Output:
    mask: np.ndarray  # H x W uint8, the photo's size
    depth: np.ndarray  # H x W uint8: DAM v2's relative depth (near = bright), the photo's size


class Engine:
    def __init__(self, predictor: Predictor, *, checkpoint: str = "", stack: bool | None = None) -> None:
        self.predictor = predictor
        self.checkpoint = checkpoint
        self.stack = predictor.device.type == "cuda" if stack is None else stack

    @classmethod
    def load(cls, cfg: ServeConfig) -> Engine:
        """The models, once, as `predict` would load them (the checkpoint's depth settings unless
        `dam_weights` / `dam_arch` say otherwise)."""
        from pdfnet_pipeline.eval.predict import Predictor

        predictor = Predictor(cfg.checkpoint, dam_arch=cfg.dam_arch, dam_weights=cfg.dam_weights, device=cfg.device)
        return cls(predictor, checkpoint=str(cfg.checkpoint), stack=cfg.stack)

    @property
    def warning(self) -> str | None:
        """The random-weight line (`provenance.predict_warning`), None for trained models."""
        return self.predictor.warning

    def info(self) -> dict:
        p = self.predictor
        return {
            "checkpoint": self.checkpoint,
            "device": str(p.device),
            "precision": p.precision.name,
            "size": p.size,
            "tta": p.tta,
            "dam": {"arch": p.dam_arch, "weights": p.dam_weights, "input_size": p.dam_target, "aspect": p.dam_aspect},
            "batching": "stacked" if self.stack else "one photo at a time",
            "random_weights": p.warning is not None,
            "warning": p.warning,
        }

    def __call__(self, photos: list[np.ndarray]) -> list[Output]:
        """H x W x 3 uint8 RGB photos -> their masks and depth maps."""
        if self.stack and len(photos) > 1:
            return self._run(photos)
        return [self._run([photo])[0] for photo in photos]

    @torch.no_grad()
    def _run(self, photos: list[np.ndarray]) -> list[Output]:
        from pdfnet_pipeline.data.batch import model_inputs
        from pdfnet_pipeline.depth.inputs import resize_u8
        from pdfnet_pipeline.eval.tta import predict_logits, to_native_uint8

        p = self.predictor
        depth = self._depth(photos)
        images = torch.stack([resize_u8(photo, p.size) for photo in photos])
        inputs = model_inputs(images, depth, p.device)
        with p.precision.autocast(p.device):
            logits = predict_logits(p.predict_fn, inputs["image"], inputs["depth"], tta=p.tta)
        out = []
        for i, photo in enumerate(photos):
            hw = photo.shape[:2]
            mask = to_native_uint8(logits[i : i + 1], hw)[0, 0].cpu().numpy()
            out.append(Output(mask, _depth_u8(depth[i], hw)))
        return out

    def _depth(self, photos: list[np.ndarray]) -> torch.Tensor:
        """B x size x size depth in [0, 1], as `Predictor.depth` computes it for each photo."""
        from pdfnet_pipeline.depth import dam

        p = self.predictor
        if len(photos) == 1 or p.dam_aspect == "keep":  # "keep": each photo has its own input shape
            return torch.cat([p.depth(photo) for photo in photos])
        x = torch.cat([
            dam.to_model_input(
                torch.from_numpy(np.array(photo)).permute(2, 0, 1).to(p.device),
                dam.input_shape(photo.shape[1], photo.shape[0], p.dam_target, p.dam_aspect),
            )[None]
            for photo in photos
        ])  # fmt: skip
        depth, finite = p.depth_fn(p.dam, x, p.size, p.precision.dtype)
        if not bool(finite.all()):
            raise ValueError("DAM v2 produced non-finite depth")
        return depth


def _depth_u8(depth: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """A size x size map in [0, 1] -> H x W uint8 (bilinear, rounded)."""
    full = F.interpolate(depth[None, None].float(), size=hw, mode="bilinear", align_corners=False)[0, 0]
    return (full * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
