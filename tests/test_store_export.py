"""`store export --format h5` and `store info` through the CLI, on a hand-filled store."""

from __future__ import annotations

import json

import h5py
import numpy as np
from typer.testing import CliRunner

from pdfnet_pipeline import store
from pdfnet_pipeline.cli import app


def test_export_h5_copies_done_samples_and_provenance(tmp_path):
    path = tmp_path / "DIS-VD.zarr"
    spec = store.StoreSpec(
        "DIS-VD",
        ["a", "b", "c"],
        [(5, 6), (7, 8), (9, 10)],
        8,
        "e" * 64,
        maps=("small", "large_1024"),
        models={"small": {"weights": "random"}},
    )
    g = store.create(path, spec)
    rng = np.random.default_rng(0)
    rows = {}
    for i in (0, 2):
        rows[i] = (
            rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
            rng.integers(0, 256, (8, 8), dtype=np.uint8),
            {m: rng.random((8, 8)).astype(np.float16) for m in spec.maps},
        )
        g.write_sample(i, *rows[i])
    result = CliRunner().invoke(app, ["store", "export", str(path), "--out", str(tmp_path / "vd.h5")])
    assert result.exit_code == 0, result.output
    assert "2 samples" in result.output
    with h5py.File(tmp_path / "vd.h5") as f:
        assert [s.decode() for s in f["ids"][:]] == ["a", "c"]
        assert f["orig_size"][:].tolist() == [[5, 6], [9, 10]]
        for j, i in enumerate((0, 2)):
            assert np.array_equal(f["image"][j], rows[i][0]) and np.array_equal(f["mask"][j], rows[i][1])
            assert np.array_equal(f["depth/large_1024"][j], rows[i][2]["large_1024"])
        assert f["depth/small"].dtype == np.float16 and f["image"].chunks == (1, 8, 8, 3)
        assert json.loads(f.attrs["manifest_sha256"]) == "e" * 64
    info = CliRunner().invoke(app, ["store", "info", str(path)])
    assert info.exit_code == 0 and json.loads(info.output)["done"] == 2
