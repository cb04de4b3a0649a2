"""pdfnet-pipeline: PDFNet dichotomous image segmentation, reproducible end to end."""

__version__ = "0.1.0"
