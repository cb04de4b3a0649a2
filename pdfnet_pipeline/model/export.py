"""ONNX export of PDFNet inference: what `PDFNet.predict` computes, with a dynamic batch axis.

Inputs `image` (B x 3 x H x W, ImageNet-normalised RGB, float32) and `depth` (B x 1 x H x W, raw:
the graph min-max normalises it per sample, as the model does); output `logits` (B x 1 x H x W,
s0 before the sigmoid). H and W are fixed at export (`size`, a multiple of 256); B is free.

Uses torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, which needs onnxscript): the
TorchScript exporter stops at the FSE decoder's size arithmetic. The model's config and the
input convention are written into the ONNX metadata (`pdfnet.*` keys) for whoever runs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pdfnet_pipeline.model.pdfnet import SIZE_MULTIPLE, PDFNet

INPUTS = ("image", "depth")
OUTPUT = "logits"
OPSET = 18


class _Predict(nn.Module):
    """`PDFNet.predict` as a forward: the exporter traces `forward`."""

    def __init__(self, model: PDFNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return self.model.predict(image, depth)


def example_inputs(size: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised-image-like and a depth-like input (raw depth: any range, here [0, 1))."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g), torch.rand(batch, 1, size, size, generator=g)


@contextmanager
def _quiet_constant_folding():
    """onnxscript's optimizer warns once per multi-output Split it leaves unfolded (hundreds of
    lines); an unfolded Split computes the same (the parity checks run through them): noise here."""
    log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export_onnx(model: PDFNet, out: str | Path, size: int = 1024, opset: int = OPSET) -> Path:
    """Write `model`'s inference graph at H = W = `size` to `out` (one file, weights inside)."""
    if size % SIZE_MULTIPLE:
        raise ValueError(f"size {size}: must be a multiple of {SIZE_MULTIPLE}")
    batch = torch.export.Dim("batch", min=1, max=1024)
    # Example batch 2: a size-1 axis would be specialised to 1 by torch.export.
    with torch.no_grad(), _quiet_constant_folding():
        program = torch.onnx.export(
            _Predict(model).eval(),
            example_inputs(size, batch=2),
            dynamo=True,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_shapes={"image": {0: batch}, "depth": {0: batch}},
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    program.model.metadata_props.update(
        {
            "pdfnet.config": json.dumps(dataclasses.asdict(model.cfg)),
            "pdfnet.size": str(size),
            "pdfnet.inputs": "image: B x 3 x H x W ImageNet-normalised RGB; depth: B x 1 x H x W raw depth",
            "pdfnet.output": "logits: B x 1 x H x W (sigmoid gives the mask)",
        }
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out), external_data=False)  # the reference model's ~390 MB fit the 2 GB protobuf limit
    return out


def onnx_session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session of an exported model (`threads` 0: onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_logits(session, image: np.ndarray, depth: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT], {"image": image, "depth": depth})[0]


def parity(path: str | Path, model: PDFNet, size: int, batch: int = 1) -> float:
    """Max abs difference of onnxruntime's logits from torch's on seeded random inputs."""
    image, depth = example_inputs(size, batch, seed=1)
    with torch.no_grad():
        expected = model.eval().predict(image, depth).numpy()
    got = onnx_logits(onnx_session(path), image.numpy(), depth.numpy())
    if got.shape != expected.shape:
        raise ValueError(f"onnx output {got.shape} vs torch {expected.shape}")
    return float(np.abs(got - expected).max())
