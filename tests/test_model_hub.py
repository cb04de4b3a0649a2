"""Hub-style checkpoints: save_pretrained / from_pretrained round trip (local only), the same
tensors as the project's safetensors file, and clear errors for bad folders and missing Hub ids."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pdfnet_pipeline.model import PDFNet, PDFNetConfig, build_pdfnet
from pdfnet_pipeline.model.checkpoint import CheckpointError, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_pdfnet(PDFNetConfig(preset="tiny", variant="v2")).eval()
    with torch.no_grad():  # every parameter off its init, so a skipped tensor could not pass as equal
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return m


def test_save_pretrained_round_trip(model, tmp_path):
    folder = tmp_path / "pdfnet-tiny"
    model.save_pretrained(folder)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config == {"format": "pdfnet-pipeline-model", "cfg": asdict(model.cfg)}

    loaded = PDFNet.from_pretrained(folder)
    assert loaded.cfg == model.cfg and not loaded.training
    expected, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    image, depth = torch.randn(1, 3, 256, 256), torch.rand(1, 1, 256, 256) * 5
    with torch.no_grad():
        assert torch.equal(loaded.predict(image, depth), model.predict(image, depth))


def test_folder_weights_are_the_project_checkpoint(model, tmp_path):
    """model.safetensors holds what save_model writes (metadata and tensors); each loader reads the
    other's. Not compared byte for byte: safetensors orders its JSON header differently per call."""
    model.save_pretrained(tmp_path / "hub")
    save_model(model, tmp_path / "project.safetensors")
    with (
        safe_open(str(tmp_path / "hub" / "model.safetensors"), "pt") as hub,
        safe_open(str(tmp_path / "project.safetensors"), "pt") as project,
    ):
        assert hub.metadata() == project.metadata() and hub.metadata()["format"] == "pdfnet-pipeline-model"
        assert sorted(hub.keys()) == sorted(project.keys()) == sorted(model.state_dict())
        for key in project.keys():
            a, b = hub.get_tensor(key), project.get_tensor(key)
            assert a.dtype == b.dtype and torch.equal(a, b), key
    for source in (tmp_path / "hub", str(tmp_path / "hub"), tmp_path / "hub" / "model.safetensors"):
        assert torch.equal(load_model(source).decoder.Bside[0].weight, model.decoder.Bside[0].weight)
    from_file = PDFNet.from_pretrained(tmp_path / "project.safetensors")
    assert torch.equal(from_file.encoder.absolute_pos_embed, model.encoder.absolute_pos_embed)


def test_folder_config_must_agree_with_weights(model, tmp_path):
    folder = tmp_path / "hub"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["cfg"]["variant"] = "paper"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json disagrees with model.safetensors on variant"):
        PDFNet.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"not a save_pretrained folder \(needs model.safetensors and config.json\)"
    ):
        load_model(folder)


def test_missing_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing.safetensors: no such checkpoint file or folder"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"no such checkpoint file or folder"):
        load_model("./runs/nothing-here")


def test_missing_hub_id_offline_names_the_id(tmp_path):
    """A real Hub lookup through huggingface_hub (HF_HUB_OFFLINE=1, empty cache), from the CLI."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "pdfnet_pipeline.cli"]
    res = subprocess.run(
        [*cli, "model", "export", "nobody/no-such-pdfnet", str(tmp_path / "m.onnx")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith(
        "error: nobody/no-such-pdfnet: no such local checkpoint file or folder, and no Hugging"
    )
    assert (
        "Hub model of that id could be fetched (not in the Hugging Face cache, and HF_HUB_OFFLINE is set)" in res.stderr
    )
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


def test_save_pretrained_carries_the_depth_settings(model, tmp_path):
    from pdfnet_pipeline.model.checkpoint import DepthSettings, read_depth

    depth = DepthSettings(arch="tiny", weights="random", seed=2, input_size=252, size=256, pdfnet_random_init=True)
    save_model(model, tmp_path / "m.safetensors", depth)
    loaded = load_model(tmp_path / "m.safetensors")
    loaded.save_pretrained(tmp_path / "folder")
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert config["depth"] == asdict(depth) and read_depth(tmp_path / "folder" / "model.safetensors") == depth
    assert PDFNet.from_pretrained(tmp_path / "folder").depth_settings == depth
    config["depth"]["seed"] = 3  # a hand-edited config.json must not mislead
    (tmp_path / "folder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json disagrees with model.safetensors on depth"):
        load_model(tmp_path / "folder")
