"""pdfnet-pipeline: PDFNet dichotomous image segmentation, reproducible end to end."""

__version__ = "0.1.0"
__all__ = ["Segmenter"]


def __getattr__(name: str):
    # Lazy: `import pdfnet_pipeline` (every CLI start, every worker) must not import torch.
    if name == "Segmenter":
        from pdfnet_pipeline.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'pdfnet_pipeline' has no attribute {name!r}")
