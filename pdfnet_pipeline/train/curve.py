"""`run_dir/curve.png`: the training curve, drawn from metrics.jsonl's records.

Left: the loss of every logged optimizer step and each epoch's mean train loss. Right: the
validation F_max and MAE after each validated epoch (the best F_max starred). The trainer redraws
it at every epoch end (and from the trimmed log on resume), so it is always the log's picture.
Same look as the eval stage's curves.png (eval/report.py); a random-weight label is the red title.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records (a missing file: none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curve(records: list[dict], path: Path, label: str | None = None) -> Path:
    """Draw `records` (metrics.jsonl lines: kind "step" / "epoch") to `path`, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("kind") == "step" and "loss" in r]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    trained = [r for r in epochs if "train_loss" in r]
    validated = [r for r in epochs if "val_max_f" in r]

    fig, (lo, va) = plt.subplots(1, 2, figsize=(11, 4.5))
    lo.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, alpha=0.6, label="step loss")
    lo.plot([r["step"] for r in trained], [r["train_loss"] for r in trained], "o-", label="epoch mean")
    lo.set(xlabel="optimizer step", ylabel="loss", title="training loss")
    if validated:
        x = [r["epoch"] + 1 for r in validated]
        va.plot(x, [r["val_max_f"] for r in validated], "o-", label="F_max ↑")
        va.plot(x, [r["val_mae"] for r in validated], "s-", label="MAE ↓")
        best = max(validated, key=lambda r: r["val_max_f"])  # the trainer's best: first highest F_max
        va.plot([best["epoch"] + 1], [best["val_max_f"]], "*", ms=14, color="gold", mec="black", label="best")
    else:
        va.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=va.transAxes, color="grey")
    va.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1.02))
    va.xaxis.get_major_locator().set_params(integer=True)
    for ax in (lo, va):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if label:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(label, 110)), color="red", fontweight="bold", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path
