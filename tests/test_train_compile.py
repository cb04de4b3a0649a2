"""CUDA-shaped loop rules checked on the CPU: compile=true sees one static shape (the last partial
batch is dropped, validation runs eagerly), and an optimizer step reads the device once."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import ToyNet, random_store

from pdfnet_pipeline.data.dataset import DataConfig, EpochSampler, StoreDataset, make_loader
from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.model import PDFNetConfig
from pdfnet_pipeline.train.loop import train
from pdfnet_pipeline.train.optim import OptimConfig, Window, accumulation_windows
from pdfnet_pipeline.train.stage import Config

PACKAGE = str(Path(__file__).resolve().parents[1] / "pdfnet_pipeline")


def cfg_for(tmp: Path, train_store: Path, val_store: Path | None = None, **kw) -> Config:
    data = DataConfig(train_stores=[train_store], val_stores=[val_store] if val_store else [], workers=0)
    return Config(
        run_dir=tmp / kw.pop("name", "run"),
        epochs=kw.pop("epochs", 2),
        batch_size=kw.pop("batch_size", 2),
        log_every=kw.pop("log_every", 1),
        progress=False,
        val_every=1 if val_store else 0,
        data=data,
        optim=OptimConfig(lr=1e-2),
        model=PDFNetConfig(preset="tiny"),
        **kw,
    )


def toy() -> ToyNet:
    torch.manual_seed(0)
    return ToyNet()


def test_drop_last_plan_keeps_only_full_micro_batches():
    # 7 samples, batch 2: micro-batches of 2, 2, 2 (the 7th sample dropped); accum 2 -> 2 + 1 micro-batches
    assert accumulation_windows(7, 2, 2, drop_last=True) == [Window(0, 2, 4), Window(2, 3, 2)]
    assert accumulation_windows(7, 2, 2) == [Window(0, 2, 4), Window(2, 4, 3)]  # default: keeps the 1-sample tail
    assert accumulation_windows(8, 2, 2, drop_last=True) == accumulation_windows(8, 2, 2)  # nothing to drop
    assert accumulation_windows(1, 2, 1, drop_last=True) == []


def test_drop_last_loader_yields_only_full_batches_and_matches_the_plan(tmp_path):
    path = random_store(tmp_path / "tr.zarr", n=7, size=32, seed=1)
    ds = StoreDataset([path], train=True, seed=0)
    sampler = EpochSampler(len(ds), shuffle=True, seed=0)
    sizes = [len(b["id"]) for b in make_loader(ds, sampler, DataConfig(workers=0), 2, drop_last=True)]
    assert sizes == [2, 2, 2]
    assert len(sizes) == accumulation_windows(7, 2, 1, drop_last=True)[-1].end
    # resumed mid-epoch (2 micro-batches done): the rest of the same plan
    sampler.set_epoch(0, start=4)
    assert [len(b["id"]) for b in make_loader(ds, sampler, DataConfig(workers=0), 2, drop_last=True)] == [2]


@pytest.mark.slow
def test_compiled_training_never_recompiles_and_matches_eager_on_the_same_samples(tmp_path):
    """5 train samples at batch 2 (a 1-sample tail) and 3 validation samples (a partial validation
    batch): with error_on_recompile any second shape would raise. Compiled CPU (inductor) vs eager
    on the first epoch's two steps: same samples, float32 rounding only (rtol 1e-5)."""
    tr = random_store(tmp_path / "tr.zarr", n=5, size=32, seed=1)
    vd = random_store(tmp_path / "vd.zarr", n=3, size=32, seed=2, prefix="v")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = train(cfg_for(tmp_path, tr, vd, name="compiled", compile=True), model=toy())
    eager = train(cfg_for(tmp_path, tr, vd, name="eager"), model=toy())
    assert len(compiled.losses) == 4 and len(eager.losses) == 6  # 2 vs 3 steps per epoch
    assert compiled.state.step == 4 and compiled.state.epoch == 2
    np.testing.assert_allclose(compiled.losses[:2], eager.losses[:2], rtol=1e-5)
    assert len(compiled.val) == 2 and compiled.val[0]["count"] == 3  # validation saw every sample


def test_compile_with_fewer_samples_than_a_batch_is_refused(tmp_path):
    tr = random_store(tmp_path / "tr.zarr", n=3, size=32, seed=1)
    with pytest.raises(UserError, match=r"compile=true drops .* 3 samples per process are fewer than batch_size 4"):
        train(cfg_for(tmp_path, tr, batch_size=4, compile=True), model=toy())


class HostReads:
    """Counts Tensor.item / tolist / bool / float / int / format calls made by this package's code
    (the CPU proxy for CUDA device->host syncs; torch's own host-side reads are not counted)."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__format__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name)))

    def _wrap(self, method):
        def counted(tensor, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
                self.count += 1
            return method(tensor, *args, **kwargs)

        return counted


@pytest.mark.parametrize("accum", [1, 2])
def test_one_host_read_per_optimizer_step(tmp_path, monkeypatch, accum):
    """Before this change: 2 per step (the guard's tolist and the grad norm's item)."""
    tr = random_store(tmp_path / "tr.zarr", n=8, size=32, seed=1)
    reads = HostReads(monkeypatch)
    result = train(cfg_for(tmp_path, tr, batch_size=1, accum_steps=accum, log_every=3), model=toy())
    assert result.state.step == 2 * 8 // accum
    assert reads.count == result.state.step
