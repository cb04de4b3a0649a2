import json

from pdfnet_pipeline.status import report


def test_status_reports_runs_and_missing_stores(tmp_path):
    run = tmp_path / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"kind": "step", "step": 7, "epoch": 1}\n')
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"dir": "step_00000007", "step": 7}))
    (run / "checkpoints" / "best.json").write_text(json.dumps({"dir": "step_00000004", "max_f": 0.5, "mae": 0.25}))
    text = report(tmp_path / "stores", tmp_path / "runs").splitlines()
    assert text[0] == f"stores: none in {tmp_path / 'stores'}"
    assert (
        text[2]
        == "  r1: step 7, epoch 1; latest checkpoint step_00000007; best step_00000004 (max_f 0.5000, mae 0.2500)"
    )
