"""Published DIS-5K numbers (the PDFNet paper's Table 1, `published.csv`), quoted beside an
evaluation on DIS-5K's own splits so a reproduction is read against the paper at a glance.

Only quoted, always labelled as such: they are never this project's results, and they are shown
only for splits whose samples are the official ones (a custom dataset that borrows the DIS names,
such as the generated demo, gets none).
"""

from __future__ import annotations

import csv
from importlib import resources

METHOD = "PDFNet"  # the paper's own rows: what a reproduction is read against
METRICS = ("Fmax", "Fw", "Em", "Sa", "MAE")


def published_rows(method: str = METHOD) -> dict[str, dict[str, float]]:
    """split -> {Fmax, Fw, Em, Sa, MAE} as published for `method` (HCE: not in Table 1)."""
    text = (resources.files("pdfnet_pipeline.eval") / "published.csv").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    out = {}
    for row in csv.DictReader(lines):
        if row["method"] == method:
            out[row["split"]] = {k: float(row[k]) if row[k] != "-" else float("nan") for k in METRICS}
    return out


def quoted_name(method: str = METHOD) -> str:
    return f"{method} as published (paper Table 1, quoted)"
