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
    label = "RANDOM-WEIGHT RUN: depth maps from randomly initialised DAM v2: the numbers measure learning on this data, not a trained PDFNet on DIS-5K"
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


def test_before_after_table_follows_the_per_split_table(tmp_path):
    from pdfnet_pipeline.eval.report import BeforeAfter

    before = {s: dict(r, Fmax=r["Fmax"] / 2, MAE=0.4) for s, r in RESULTS.items()}
    ba = BeforeAfter("before (initial weights, initial.safetensors)", "after (best checkpoint, best.safetensors)",
                     "run/initial.safetensors", "run/best.safetensors", before, ["DIS-TE (all)"])  # fmt: skip
    md, cs, js = write_tables(RESULTS, tmp_path, None, ba)
    text = md.read_text()
    assert text.startswith(markdown_table(RESULTS) + "\n**Before / after**\n")  # today's table, as it was
    assert text.splitlines()[-4:] == [
        "| model | split | F_max ↑ | F_w ↑ | E_m ↑ | S_α ↑ | MAE ↓ | HCE ↓ | images |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        "| before (initial weights, initial.safetensors) | DIS-TE (all) | 0.250 | 0.400 | 0.600 | 0.700 | 0.400 | 8 | 2000 |",
        "| after (best checkpoint, best.safetensors) | DIS-TE (all) | 0.500 | 0.400 | 0.600 | 0.700 | 0.100 | 8 | 2000 |",
    ]
    rows = list(csv.reader(open(cs)))
    assert rows[:3] == list(csv.reader(open(write_tables(RESULTS, tmp_path / "plain")[1])))
    assert rows[3:6] == [[], ["# before / after"], ["model", "checkpoint", "split", "Fmax", "Fw", "Em", "Sa", "MAE",
                                                    "HCE", "count"]]  # fmt: skip
    assert rows[6][:4] == [ba.before_name, "run/initial.safetensors", "DIS-TE (all)", "0.25"]
    assert rows[7][:4] == [ba.after_name, "run/best.safetensors", "DIS-TE (all)", "0.5"]
    data = json.loads(js.read_text())
    assert data["splits"] == RESULTS and data["before"] == before
    assert data["before_after"]["after"] == {"name": ba.after_name, "checkpoint": "run/best.safetensors"}
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert set(plain) == {"label", "random_weights", "splits"}  # no before model: the keys of old


def test_contact_sheet_before_column(tmp_path):
    def row(before):
        return SheetRow("best F #1: x", np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60)),
                        np.zeros((40, 60), np.uint8), np.zeros((40, 60), np.uint8), before)  # fmt: skip

    sheet = Image.open(contact_sheet([row(np.full((40, 60), 255, np.uint8)), row(None)], tmp_path / "s.png", side=100))
    sheet = sheet.convert("RGB")
    assert sheet.size == (500, 2 * 118)  # image | depth | GT | before | prediction
    assert sheet.getpixel((350, 18 + 50)) == (255, 255, 255)  # row 1's before tile: its white mask
    assert sheet.getpixel((350, 118 + 18 + 50)) == (255, 255, 255)  # row 2 has none: left blank (white sheet)
    assert sheet.getpixel((450, 18 + 50)) == (0, 0, 0)  # the prediction, last
