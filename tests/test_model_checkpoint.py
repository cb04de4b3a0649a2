"""Reference checkpoint conversion (strict), project safetensors round trip, and the CLI commands."""

import json
import pickle

import pytest
import torch
from test_model_refswin import PlainSwin, reference_layout_state
from typer.testing import CliRunner

from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet
from pdfnet_pipeline.model.checkpoint import CheckpointError, convert_reference, load_model, save_model
from pdfnet_pipeline.model.pdfnet import PRESETS

TINY = PRESETS["tiny"][0]

# Key names as they appear in the reference code / released checkpoint (spec/model.md).
REFERENCE_KEYS = [
    "encoder.absolute_pos_embed",
    "encoder.patch_embed.proj.weight",
    "encoder.patch_embed.norm.bias",
    "encoder.layers.0.blocks.1.attn.relative_position_bias_table",
    "encoder.layers.0.blocks.1.attn.relative_position_index",
    "encoder.layers.2.downsample.reduction.weight",
    "encoder.norm3.weight",
    "channel_mix1.0.weight",
    "channel_mix.1.weight",
    "Glob.0.0.bias",
    "decoder.FSE_mix.0.I_channelswich.0.weight",
    "decoder.FSE_mix.3.P_channelswich.1.weight",
    "decoder.FSE_mix.3.IP.Att.in_proj_weight",
    "decoder.FSE_mix.2.PI.Att.out_proj.weight",
    "decoder.FSE_mix.1.DI.FFN.w3.weight",
    "decoder.FSE_mix.0.ID.Norm2.weight",
    "decoder.shallow.0.weight",
    "decoder.shallow.1.1.weight",
    "decoder.upsample1.0.0.weight",
    "decoder.channel_mix.3.0.bias",
    "decoder.Bside.5.weight",
    "depth_decoder.Decoder.0.1.0.weight",
    "depth_decoder.shallow.0.weight",
    "depth_decoder.upsample2.1.weight",
    "depth_decoder.Bside.4.bias",
    "IntegrityPriorLoss.sobel_x.weight",
]


@pytest.fixture(scope="module")
def reference_pth(tmp_path_factory):
    """A reference-layout checkpoint for the tiny preset: Swin from PlainSwin, the rest random."""
    torch.manual_seed(0)
    plain = PlainSwin(TINY).eval()
    donor = build_pdfnet(PDFNetConfig(preset="tiny"))
    ref = reference_layout_state(plain, TINY, donor)
    path = tmp_path_factory.mktemp("ref") / "ref.pth"
    torch.save(ref, path)
    return path, ref, plain, donor


def test_reference_names(reference_pth):
    _, ref, _, _ = reference_pth
    missing = [k for k in REFERENCE_KEYS if k not in ref]
    assert not missing


def test_convert_load_round_trip(reference_pth, tmp_path):
    path, ref, plain, donor = reference_pth
    out = tmp_path / "model.safetensors"
    stats = convert_reference(path, out, PDFNetConfig(preset="tiny"))
    model = load_model(out)
    assert stats["parameters"] == sum(p.numel() for p in model.parameters())
    # encoder: same numbers as the plain reference-layout Swin it came from
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(model.encoder(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # everything else: the very tensors of the reference file
    params = model.state_dict()
    for k, v in donor.state_dict().items():
        if not k.startswith("encoder."):
            assert torch.equal(params[k], v), k
    # project checkpoint round trip: identical outputs
    save_model(model, tmp_path / "again.safetensors")
    again = load_model(tmp_path / "again.safetensors")
    image, depth = torch.randn(1, 3, 256, 256), torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        assert torch.equal(model.predict(image, depth), again.predict(image, depth))
    assert again.cfg.preset == "tiny" and again.cfg.variant == "paper"


def _convert_modified(tmp_path, ref, change):
    bad = dict(ref)
    change(bad)
    p = tmp_path / "bad.pth"
    torch.save(bad, p)
    with pytest.raises(CheckpointError) as err:
        convert_reference(p, tmp_path / "out.safetensors", PDFNetConfig(preset="tiny"))
    assert not (tmp_path / "out.safetensors").exists()
    return str(err.value)


def test_convert_rejects_renamed_key(reference_pth, tmp_path):
    _, ref, _, _ = reference_pth

    def rename(sd):
        sd["decoder.Bside_0.weight"] = sd.pop("decoder.Bside.0.weight")

    msg = _convert_modified(tmp_path, ref, rename)
    assert "decoder.Bside.0.weight" in msg and "missing" in msg
    assert "decoder.Bside_0.weight" in msg and "unexpected" in msg


def test_convert_rejects_reshaped_key(reference_pth, tmp_path):
    _, ref, _, _ = reference_pth

    def reshape(sd):
        sd["encoder.norm2.weight"] = sd["encoder.norm2.weight"][:-1]

    msg = _convert_modified(tmp_path, ref, reshape)
    assert "mis-shaped" in msg and "encoder.norms.2.weight" in msg


def test_convert_rejects_unknown_and_wrong_buffers(reference_pth, tmp_path):
    _, ref, _, _ = reference_pth

    def spoil(sd):
        sd["decoder.extra.weight"] = torch.zeros(1)
        sd["encoder.layers.1.blocks.0.attn.relative_position_index"] = torch.zeros_like(
            sd["encoder.layers.1.blocks.0.attn.relative_position_index"]
        )

    msg = _convert_modified(tmp_path, ref, spoil)
    assert "decoder.extra.weight" in msg and "relative position index" in msg


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_reference_loading_never_runs_pickled_code(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, p)
    with pytest.raises(pickle.UnpicklingError):
        convert_reference(p, tmp_path / "out.safetensors", PDFNetConfig(preset="tiny"))
    with pytest.raises(CheckpointError, match="not a safetensors file"):  # a pickle is not a project checkpoint
        load_model(p)


def test_cli_info_and_convert(reference_pth, tmp_path):
    from pdfnet_pipeline.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["model", "info", "--variant", "paper", "--json"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.output)
    assert counts["inference"] == 97_846_526 and counts["training"] == 101_693_315
    res = runner.invoke(app, ["model", "info", "--variant", "v2", "--json"])
    assert json.loads(res.output)["depth_decoder"] == 6_799_365
    out = tmp_path / "cli.safetensors"
    res = runner.invoke(app, ["model", "convert", str(reference_pth[0]), str(out), "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    assert out.exists() and "tensors" in res.output


def test_depth_settings_round_trip(tmp_path):
    """A model file records the depth input it was trained on; a file without it reads as None and
    predict's defaults are `DepthSettings()` (the paper's settings)."""
    from safetensors import safe_open

    from pdfnet_pipeline.model.checkpoint import DepthSettings, read_config, read_depth

    torch.manual_seed(0)
    model = build_pdfnet(PDFNetConfig(preset="tiny"))
    depth = DepthSettings(arch="tiny", weights="random", seed=7, input_size=28, size=256, pdfnet_random_init=True)
    save_model(model, tmp_path / "with.safetensors", depth)
    save_model(model, tmp_path / "without.safetensors")
    assert read_depth(tmp_path / "with.safetensors") == depth
    with safe_open(str(tmp_path / "with.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["size"] == "256" and json.loads(meta["depth"])["weights"] == "random"
    assert read_depth(tmp_path / "without.safetensors") is None  # older files, converted releases
    assert read_config(tmp_path / "with.safetensors") == read_config(tmp_path / "without.safetensors")
    assert DepthSettings() == DepthSettings("large", "hub", None, 0, 518, "square", "official", "large", 1024)

    loaded = load_model(tmp_path / "with.safetensors")  # carries it on: a re-save keeps the record
    assert loaded.depth_settings == depth and load_model(tmp_path / "without.safetensors").depth_settings is None
    save_model(loaded, tmp_path / "again.safetensors")
    assert read_depth(tmp_path / "again.safetensors") == depth
