"""2-process CPU DDP (torchrun, gloo): trains, checkpoints once (rank 0), equals batch 2 on one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from train_fixtures import ToyNet, random_store

from pdfnet_pipeline.data.dataset import DataConfig
from pdfnet_pipeline.model import PDFNetConfig
from pdfnet_pipeline.train.loop import train
from pdfnet_pipeline.train.optim import OptimConfig
from pdfnet_pipeline.train.stage import Config

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
from train_fixtures import ToyNet
from pdfnet_pipeline.train.loop import train
from test_train_ddp import make_cfg
torch.manual_seed(0)
result = train(make_cfg(Path({tmp!r}), "ddp", 1), model=ToyNet())
Path({tmp!r}, "rank" + os.environ["RANK"] + ".json").write_text(json.dumps(result.losses))
"""


def make_cfg(tmp: Path, name: str, batch: int) -> Config:
    data = DataConfig(train_stores=[tmp / "tr.zarr"], val_stores=[tmp / "vd.zarr"], workers=0)
    return Config(
        run_dir=tmp / name,
        epochs=2,
        batch_size=batch,
        log_every=1,
        progress=False,
        val_every=1,
        data=data,
        optim=OptimConfig(lr=1e-2),
        model=PDFNetConfig(preset="tiny"),
    )


def test_two_process_gloo_run_matches_single_process_batch_two(tmp_path):
    random_store(tmp_path / "tr.zarr", n=4, size=32, seed=1)
    random_store(tmp_path / "vd.zarr", n=3, size=32, seed=2, prefix="v")
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), tmp=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0) == 4 and r0 == r1  # 2 steps per epoch, the loss averaged over ranks

    torch.manual_seed(0)
    single = train(make_cfg(tmp_path, "single", 2), model=ToyNet())
    np.testing.assert_allclose(r0, single.losses, rtol=1e-5)
    ck = tmp_path / "ddp" / "checkpoints"
    latest = json.loads((ck / "latest.json").read_text())["dir"]
    assert latest == "step_00000004" and (tmp_path / "ddp" / "best.safetensors").is_file()
    rng = load_file(str(ck / latest / "rng.safetensors"))
    assert {"rank0.torch", "rank1.torch"} <= set(rng)
    wd = load_file(str(ck / latest / "model.safetensors"))
    ws = load_file(str(tmp_path / "single" / "checkpoints" / "step_00000004" / "model.safetensors"))
    for k in wd:
        torch.testing.assert_close(wd[k], ws[k], rtol=1e-4, atol=1e-6)
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["kind"] == "epoch" for x in lines) == 2  # written once, by rank 0
