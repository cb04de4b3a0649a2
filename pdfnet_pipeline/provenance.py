"""Is this run's output meaningful? Random DAM weights or a random PDFNet init say it is not,
and every place that shows results (training strips, eval table, curves, sheets) says so."""

from __future__ import annotations

from pathlib import Path


def random_weight_reasons(stores: list[Path], model: dict, init_from: str = "") -> list[str]:
    """Why the numbers mean nothing, if they don't (empty list: real weights throughout)."""
    from pdfnet_pipeline.store import open_read

    reasons = set()
    for path in stores:
        models = open_read(path).models
        weights = [m.get("weights", "") if isinstance(m, dict) else m for m in models.values()]
        if any(str(w).lower() == "random" for w in weights):
            reasons.add("depth maps from randomly initialised DAM v2")
    if model.get("backbone_weights", "random") == "random" and not init_from:
        reasons.add(f"PDFNet ({model.get('preset', '?')} preset) trained from random initial weights")
    return sorted(reasons)


def random_label(reasons: list[str]) -> str | None:
    return ("RANDOM-WEIGHT RUN: " + "; ".join(reasons) + " - these numbers measure nothing") if reasons else None
