import csv
import json

import numpy as np
from PIL import Image

from pdfnet_pipeline.eval.report import SheetRow, contact_sheet, markdown_table, plot_curves, write_tables

RESULTS = {
    "DIS-VD": {"Fmax": 0.8912, "Fw": 0.85, "Em": 0.9, "Sa": 0.88, "MAE": 0.0341, "HCE": 1002.4, "count": 470},
    "DIS-TE (all)": {"Fmax": 0.5, "Fw": 0.4, "Em": 0.6, "Sa": 0.7, "MAE": 0.1, "HCE": 7.6, "count": 2000},
}


def test_markdown_table_layout():
    md = markdown_table(RESULTS).splitlines()
    assert md[0] == "| metric | DIS-VD | DIS-TE (all) |"
    assert md[2] == "| F_max ↑ | 0.891 | 0.500 |"
    assert md[6] == "| MAE ↓ | 0.034 | 0.100 |"
    assert md[7] == "| HCE ↓ | 1002 | 8 |"
    assert md[8] == "| images | 470 | 2000 |"


def test_random_label_in_every_output(tmp_path):
    label = "RANDOM WEIGHTS: these numbers measure nothing"
    md, cs, js = write_tables(RESULTS, tmp_path, label)
    assert label in md.read_text().splitlines()[0]
    rows = list(csv.reader(open(cs)))
    assert rows[0] == [f"# {label}"] and rows[2][0] == "DIS-VD" and float(rows[2][1]) == 0.8912
    data = json.loads(js.read_text())
    assert data["random_weights"] is True and data["splits"]["DIS-VD"]["count"] == 470
    t = np.linspace(0, 1, 256)
    png = plot_curves({"DIS-VD": {"precision": 1 - t, "recall": t, "fmeasure": t * (1 - t)}}, tmp_path / "c.png", label)
    assert Image.open(png).size[0] > 800
    row = SheetRow(
        "x",
        np.zeros((40, 60, 3), np.uint8),
        np.ones((40, 60)),
        np.zeros((40, 60), np.uint8),
        np.zeros((40, 60), np.uint8),
    )
    sheet = Image.open(contact_sheet([row, row], tmp_path / "s.png", label, side=100)).convert("RGB")
    assert sheet.size == (400, 26 + 2 * 118)
    assert sheet.getpixel((2, 2)) == (200, 0, 0)  # the red banner with the label
    assert sheet.getpixel((150, 26 + 18 + 50)) == (255, 255, 255)  # depth tile: ones -> white
