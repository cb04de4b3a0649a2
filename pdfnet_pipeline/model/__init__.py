"""PDFNet model, losses and checkpoints (docs/CONTRACTS.md, "Model").

Import from here: `PDFNetConfig`, `build_pdfnet`, `PDFNet`, `PDFNetOutput`, `parameter_counts`.
Checkpoint helpers live in `pdfnet_pipeline.model.checkpoint`. The names load on first use
(PEP 562), so importing a submodule such as `model.commands` (for `--help`) skips torch and timm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pdfnet_pipeline.model.pdfnet import (
        PRESETS,
        PDFNet,
        PDFNetConfig,
        PDFNetOutput,
        build_pdfnet,
        normalize_depth,
        parameter_counts,
        set_grad_checkpoint,
        set_materialized_attention,
    )

__all__ = [
    "PRESETS",
    "PDFNet",
    "PDFNetConfig",
    "PDFNetOutput",
    "build_pdfnet",
    "normalize_depth",
    "parameter_counts",
    "set_grad_checkpoint",
    "set_materialized_attention",
]


def __getattr__(name: str):
    if name in __all__:
        from pdfnet_pipeline.model import pdfnet

        return getattr(pdfnet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
