"""`bench gpu` dry run: without CUDA every step runs tiny on the CPU, so the GPU check cannot rot."""

from __future__ import annotations

import json

import pytest

from pdfnet_pipeline.bench.gpu import Config, plan, run


def test_full_plan_fits_the_eight_minute_budget():
    steps = plan(full=True)
    assert sum(s.timeout for s in steps) == 480
    names = [s.name for s in steps]
    assert names == ["gpu tests", "depth official", "depth bf16", "model 1024", "train 1024", "metrics"]
    assert 'official_archs=["small","base","large"]' in plan(full=True)[1].args


@pytest.mark.slow  # ~70 s of CPU; 4.5 min wall on the shared 2-core machine with 5 agents
def test_dry_run_writes_both_reports(tmp_path, capsys):
    import torch

    report = run(Config(out=tmp_path, mode="dry"))
    md, js = (tmp_path / "report.md").read_text(), (tmp_path / "report.json").read_text()
    data = json.loads(js)
    assert data == json.loads(json.dumps(report))
    if not torch.cuda.is_available():
        assert md.startswith("# GPU check: no CUDA: dry run") and "no CUDA: dry run" in data["header"]
    assert data["environment"]["torch"] == torch.__version__
    steps = {s["step"]: s for s in data["steps"]}
    assert list(steps) == [s.name for s in plan(full=False)]
    gpu = steps.pop("gpu tests")
    assert (gpu["rc"], gpu["status"]) in {(0, "ok"), (5, "none collected")}, gpu
    for name, step in steps.items():
        assert (step["rc"], step["status"]) == (0, "ok"), (name, step["tail"])
        assert f"| {name} | ok |" in md
    # each bench's last table line reached the report: figures, not just "it ran"
    assert "tiny         70" in steps["depth tiny"]["tail"][-1]
    assert steps["train 256 tiny"]["tail"][-1].startswith("batch   1:")
    assert "ours, warm skeleton cache" in steps["metrics tiny"]["tail"][-1]
    assert md in capsys.readouterr().out
