"""PDFNet model, losses and checkpoints (docs/CONTRACTS.md, "Model").

Import from here: `PDFNetConfig`, `build_pdfnet`, `PDFNet`, `PDFNetOutput`, `parameter_counts`.
Checkpoint helpers live in `pdfnet_pipeline.model.checkpoint`.
"""

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
