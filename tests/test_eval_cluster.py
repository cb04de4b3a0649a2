"""Eval on a cluster: a failed prediction write leaves no half PNG under the final name; a store
chunk that does not decode stops the evaluation by name or, with on_error=skip, is left out."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from PIL import Image
from test_store_verify import flip_bytes
from train_fixtures import ToyNet, random_store

from pdfnet_pipeline import runtime
from pdfnet_pipeline.data.dataset import StoreDataset
from pdfnet_pipeline.eval import stage
from pdfnet_pipeline.store import StoreReadError


def _predict(tmp_path, ds, **cfg):
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    return stage._predict_split(
        ToyNet(), ds, tmp_path / "preds", stage.Config(**cfg), cpu, runtime.precision(cpu, "fp32")
    )


def _full_disk_after(monkeypatch, good: int) -> None:
    """PIL's PNG save writes `good` files, then the next one gets half its bytes and ENOSPC."""
    original, calls = Image.Image.save, []

    def save(self, fp, format=None, **params):
        calls.append(fp)
        if len(calls) <= good:
            return original(self, fp, format, **params)
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save)


def test_a_failed_png_write_names_the_file_and_leaves_no_half_png(tmp_path, monkeypatch):
    ds = StoreDataset([random_store(tmp_path / "s.zarr", n=3, size=32)], train=False)
    first = _predict(tmp_path, ds)  # complete predictions from an earlier run
    earlier = {r["pred"].name: r["pred"].read_bytes() for r in first}
    (tmp_path / "preds" / "s1.png").unlink()  # this one has no earlier copy
    _full_disk_after(monkeypatch, good=1)
    with pytest.raises(stage.EvalWriteError) as err:
        _predict(tmp_path, ds)
    assert str(err.value).startswith(f"cannot write prediction {tmp_path / 'preds' / 's1.png'}: [Errno 28] No space")
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "preds").iterdir())
    assert files == ["s0.png", "s2.png"]  # no s1.png, no temporary file
    assert {n: (tmp_path / "preds" / n).read_bytes() for n in files} == {n: earlier[n] for n in files}
    assert np.asarray(Image.open(tmp_path / "preds" / "s0.png")).shape == (32, 32)


def test_an_undecodable_chunk_stops_eval_by_name_or_is_skipped(tmp_path, capsys):
    path = random_store(tmp_path / "s.zarr", n=3, size=32)
    flip_bytes(path, "depth/large", 1)
    ds = StoreDataset([path], train=False)
    with pytest.raises(StoreReadError, match=rf"^{path}: sample 1 \(s1\): depth/large does not decode"):
        _predict(tmp_path, ds)
    records = _predict(tmp_path, ds, on_error="skip")
    assert [r["id"] for r in records] == ["s0", "s2"]  # left out of the metrics
    assert f"skipped (on_error=skip, not in the metrics): {path}: sample 1 (s1)" in capsys.readouterr().err
