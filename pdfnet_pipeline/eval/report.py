"""What the eval stage shows people: the paper-layout table (Markdown / CSV / JSON), with the
"before" model (e.g. the run's initial weights) beside the evaluated one when there is one, the
PR and F-threshold curves, and a contact sheet of the best and worst predictions.

`label` marks a run whose numbers mean nothing (random weights): it is written into every output.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# (key in the metric dicts, column title as in the paper, higher is better)
COLUMNS = (
    ("Fmax", "F_max ↑", True),
    ("Fw", "F_w ↑", True),
    ("Em", "E_m ↑", True),
    ("Sa", "S_α ↑", True),
    ("MAE", "MAE ↓", False),
    ("HCE", "HCE ↓", False),
)


def format_value(key: str, value: float) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.0f}" if key == "HCE" else f"{value:.3f}"


def markdown_table(results: dict[str, dict[str, float]], label: str | None = None) -> str:
    """Splits as columns, metrics as rows: the layout of the DIS tables in the PDFNet paper."""
    splits = list(results)
    lines = []
    if label:
        lines += [f"> **{label}**", ""]
    lines.append("| metric | " + " | ".join(splits) + " |")
    lines.append("|---|" + "---:|" * len(splits))
    for key, title, _ in COLUMNS:
        lines.append(f"| {title} | " + " | ".join(format_value(key, results[s].get(key)) for s in splits) + " |")
    lines.append("| images | " + " | ".join(str(results[s].get("count", "")) for s in splits) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class BeforeAfter:
    """The "before" model's metrics beside the evaluated ("after") model's: e.g. the run's initial
    weights (random init, or the model a fine-tune started from) and its best checkpoint."""

    before_name: str  # e.g. "before (initial weights, initial.safetensors)"
    after_name: str  # e.g. "after (best checkpoint, best.safetensors)"
    before_checkpoint: str
    after_checkpoint: str
    before: dict[str, dict[str, float]]  # per split, as the results: Fmax ... HCE, count
    splits: list[str] = field(default_factory=list)  # the compared ones (eval.stage.compared_splits)
    # Published numbers quoted under them (official DIS-5K splits only): name, per split metrics.
    quoted_name: str = ""
    quoted: dict[str, dict[str, float]] = field(default_factory=dict)

    def rows(self, results: dict[str, dict[str, float]]) -> list[tuple[str, str, dict[str, float]]]:
        """(model, split, metrics): before, after, then the quoted row if any, for each compared split."""
        models = ((self.before_name, self.before), (self.after_name, results), (self.quoted_name, self.quoted))
        return [(name, split, r[split]) for split in self.splits for name, r in models if split in r]


def before_after_markdown(results: dict[str, dict[str, float]], ba: BeforeAfter) -> str:
    """One row per model (and compared split), the metrics as columns."""
    lines = ["**Before / after**", ""]
    lines.append("| model | split | " + " | ".join(title for _, title, _ in COLUMNS) + " | images |")
    lines.append("|---|---|" + "---:|" * (len(COLUMNS) + 1))
    for name, split, row in ba.rows(results):
        values = " | ".join(format_value(k, row.get(k)) for k, _, _ in COLUMNS)
        lines.append(f"| {name} | {split} | {values} | {row.get('count', '')} |")
    return "\n".join(lines) + "\n"


def write_tables(
    results: dict[str, dict[str, float]], out: Path, label: str | None = None, before: BeforeAfter | None = None
) -> list[Path]:
    """results.md, results.csv, results.json in `out`; returns their paths. `before`: the
    before / after table follows the per-split one (a second block in the Markdown and the CSV;
    `before` and `before_after` keys in the JSON); without it the files are the per-split table only."""
    out.mkdir(parents=True, exist_ok=True)
    md, cs, js = out / "results.md", out / "results.csv", out / "results.json"
    md.write_text(markdown_table(results, label) + (f"\n{before_after_markdown(results, before)}" if before else ""))
    with open(cs, "w", newline="") as f:
        w = csv.writer(f)
        if label:
            w.writerow([f"# {label}"])
        w.writerow(["split", *[k for k, _, _ in COLUMNS], "count"])
        for split, row in results.items():
            w.writerow([split, *[row.get(k) for k, _, _ in COLUMNS], row.get("count")])
        if before:
            w.writerows(
                [[], ["# before / after"], ["model", "checkpoint", "split", *[k for k, _, _ in COLUMNS], "count"]]
            )
            paths = {before.before_name: before.before_checkpoint, before.after_name: before.after_checkpoint}
            for name, split, row in before.rows(results):
                w.writerow([name, paths.get(name, ""), split, *[row.get(k) for k, _, _ in COLUMNS], row.get("count")])
    data = {"label": label, "random_weights": bool(label), "splits": results}
    if before:
        data["before"] = before.before
        data["before_after"] = {
            "splits": before.splits,
            "before": {"name": before.before_name, "checkpoint": before.before_checkpoint},
            "after": {"name": before.after_name, "checkpoint": before.after_checkpoint},
        }
        if before.quoted:
            data["before_after"]["quoted"] = {"name": before.quoted_name, "splits": before.quoted}
    js.write_text(json.dumps(data, indent=2))
    return [md, cs, js]


def plot_curves(curves: dict[str, dict[str, np.ndarray]], path: Path, label: str | None = None) -> Path:
    """PR curve and F-measure over the 256 thresholds, one line per split.

    `curves[split]` holds "precision", "recall", "fmeasure" arrays (mean over images per threshold).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pr, fc) = plt.subplots(1, 2, figsize=(11, 4.5))
    for split, c in curves.items():
        pr.plot(c["recall"], c["precision"], label=split)
        fc.plot(np.arange(len(c["fmeasure"])), c["fmeasure"], label=split)
    pr.set(xlabel="recall", ylabel="precision", title="PR curve", xlim=(0, 1), ylim=(0, 1.02))
    fc.set(xlabel="threshold", ylabel="F-measure (β²=0.3)", title="F-measure vs threshold", ylim=(0, 1.02))
    for ax in (pr, fc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if label:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(label, 110)), color="red", fontweight="bold", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class SheetRow:
    title: str  # e.g. "best F #1: DIS-TE1 / id  F_max 0.912  MAE 0.012"
    image: np.ndarray  # H x W x 3 uint8
    depth: np.ndarray  # H x W float in [0, 1]
    gt: np.ndarray  # H x W uint8
    pred: np.ndarray  # H x W uint8
    before: np.ndarray | None = None  # H x W uint8: the "before" model's prediction


def _tile(arr: np.ndarray, side: int) -> Image.Image:
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8)
    im = Image.fromarray(arr).convert("RGB")
    im.thumbnail((side, side), Image.BILINEAR)
    canvas = Image.new("RGB", (side, side), (32, 32, 32))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas


def contact_sheet(rows: list[SheetRow], path: Path, label: str | None = None, side: int = 224) -> Path:
    """image | depth | GT | (before |) prediction per row, a caption above each row; the before
    column when any row has a before-prediction."""
    caption, banner = 18, 26 if label else 0
    with_before = any(row.before is not None for row in rows)
    names = ["image", "depth", "GT", *(["before"] if with_before else []), "prediction"]
    sheet = Image.new("RGB", (len(names) * side, banner + len(rows) * (side + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if label:
        draw.rectangle([0, 0, sheet.width, banner], fill=(200, 0, 0))
        draw.text((6, 6), label, fill=(255, 255, 255))
    for i, row in enumerate(rows):
        y = banner + i * (side + caption)
        draw.text((4, y + 3), f"{row.title}   [{' | '.join(names)}]", fill=(0, 0, 0))
        tiles = [row.image, row.depth, row.gt, *([row.before] if with_before else []), row.pred]
        for j, arr in enumerate(tiles):
            if arr is not None:  # a row without a before-prediction keeps that tile blank
                sheet.paste(_tile(arr, side), (j * side, y + caption))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
