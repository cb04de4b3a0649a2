"""`stage status`: what is done in each store and each training run, as a short text report."""

from __future__ import annotations

import json
from pathlib import Path


def store_lines(stores: Path) -> list[str]:
    from pdfnet_pipeline.store import StoreError, split_status

    paths = sorted(stores.glob("*.zarr")) if stores.is_dir() else []
    if not paths:
        return [f"stores: none in {stores}"]
    lines = [f"stores in {stores}:"]
    for path in paths:
        try:
            s = split_status(path)
        except StoreError as err:
            lines.append(f"  {path.name}: unusable ({err})")
            continue
        state = "complete" if s["complete"] else "incomplete: rerun the depth stage to finish"
        random = sorted(k for k, v in (s.get("models") or {}).items() if str(v).lower() == "random")
        note = f", random-weight maps: {', '.join(random)}" if random else ""
        skipped = f", {len(s['skipped'])} skipped" if s.get("skipped") else ""
        lines.append(f"  {s['split']:<10} {s['done']:>5}/{s['n']:<5} done at {s['size']}² ({state}{skipped}{note})")
    return lines


def _last_json_line(path: Path) -> dict | None:
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_lines(runs: Path) -> list[str]:
    dirs = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    if not dirs:
        return [f"runs: none in {runs}"]
    lines = [f"runs in {runs}:"]
    for run in dirs:
        last = _last_json_line(run / "metrics.jsonl")
        where = f"step {last.get('step')}, epoch {last.get('epoch')}" if last else "no metrics yet"
        latest = _json(run / "checkpoints" / "latest.json")
        best = _json(run / "checkpoints" / "best.json")
        ckpt = f"latest checkpoint {latest['dir']}" if latest else "no checkpoint"
        scores = ", ".join(f"{k} {v:.4f}" for k, v in (best or {}).items() if isinstance(v, float))
        best_txt = f"; best {best['dir']} ({scores})" if best else ""
        evaluated = "; evaluated" if (run / "eval" / "results.md").is_file() else ""
        lines.append(f"  {run.name}: {where}; {ckpt}{best_txt}{evaluated}")
    return lines


def report(stores: Path, runs: Path) -> str:
    return "\n".join(store_lines(Path(stores)) + run_lines(Path(runs)))
