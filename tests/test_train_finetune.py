"""Fine-tuning (`init_from`) and run-directory safety (no silent overwrite of another run's checkpoints).

`init_from` tests stop the run at its first forward (a pre-hook snapshots the weights the first
optimizer step would start from, then aborts), so they cost a model build, not a 256² step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train_loop import toy, toy_cfg, weights
from train_fixtures import random_store

from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet
from pdfnet_pipeline.model.checkpoint import convert_reference, load_model, save_model
from pdfnet_pipeline.model.pdfnet import PRESETS
from pdfnet_pipeline.train import checkpoint as ckpt
from pdfnet_pipeline.train.loop import train
from pdfnet_pipeline.train.optim import OptimConfig, build_optimizer

TINY = PDFNetConfig(preset="tiny", backbone_weights="random")


class FirstForward(Exception):
    pass


def tiny_model(seed: int, cfg: PDFNetConfig = TINY):
    torch.manual_seed(seed)
    return build_pdfnet(cfg)


def weights_at_first_forward(cfg, model) -> dict[str, torch.Tensor]:
    """The model's state when step 1's forward starts (then the run is aborted)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        seen.update({k: v.detach().clone() for k, v in module.state_dict().items()})
        raise FirstForward

    model.register_forward_pre_hook(hook, with_kwargs=True)
    with pytest.raises(FirstForward):
        train(cfg, model=model)
    return seen


def assert_same_state(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    bad = [k for k in expected if not torch.equal(got[k], expected[k].to(got[k].dtype))]
    assert not bad, bad[:5]


@pytest.fixture()
def store(tmp_path):
    return random_store(tmp_path / "tr.zarr", n=2, size=32, seed=1)


def test_init_from_model_file_loads_those_weights_before_step_one(tmp_path, store):
    source = tiny_model(123)
    save_model(source, tmp_path / "ft.safetensors")
    expected = {k: v.clone() for k, v in source.state_dict().items()}
    run_model = tiny_model(7)
    fresh = {k: v.clone() for k, v in run_model.state_dict().items()}
    assert any(not torch.equal(fresh[k], expected[k]) for k in expected)  # the check can fail
    cfg = toy_cfg(tmp_path, [store], name="ft", init_from=str(tmp_path / "ft.safetensors"))
    got = weights_at_first_forward(cfg, run_model)
    assert_same_state(got, expected)
    # the same file without init_from: the run starts from its own initial weights
    plain = weights_at_first_forward(toy_cfg(tmp_path, [store], name="plain"), tiny_model(7))
    assert_same_state(plain, fresh)


def test_init_from_run_dir_checkpoints_dir_or_checkpoint_dir(tmp_path, store):
    source = tiny_model(123)
    opt = build_optimizer(source, OptimConfig(), torch.device("cpu"))
    run = tmp_path / "old_run"
    step = ckpt.save_checkpoint(
        run / "checkpoints", source, opt, None, ckpt.TrainState(step=5), config={}, model_config=asdict(TINY)
    )
    assert step == run / "checkpoints" / "step_00000005"
    expected = {k: v.clone() for k, v in source.state_dict().items()}
    for i, where in enumerate((run, run / "checkpoints", step)):
        cfg = toy_cfg(tmp_path, [store], name=f"ft{i}", init_from=str(where))
        assert_same_state(weights_at_first_forward(cfg, tiny_model(7)), expected)
    # a training setting that does not change the architecture (drop path) is no obstacle
    cfg = toy_cfg(tmp_path, [store], name="ft_dp", init_from=str(run))
    cfg.model = replace(cfg.model, drop_path=0.0)
    assert_same_state(weights_at_first_forward(cfg, tiny_model(7, cfg.model)), expected)


def test_init_from_another_architecture_fails_naming_the_difference(tmp_path, store):
    v2 = replace(TINY, variant="v2")
    save_model(tiny_model(1, v2), tmp_path / "v2.safetensors")
    cfg = toy_cfg(tmp_path, [store], name="ft", init_from=str(tmp_path / "v2.safetensors"))
    with pytest.raises(ckpt.CheckpointError, match=r"architecture differs.*\{'variant': \('v2', 'paper'\)\}"):
        train(cfg, model=tiny_model(7))
    assert not (tmp_path / "ft" / "checkpoints").exists()
    # a safetensors file that is not a project model file, and a path that does not exist
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    cfg = toy_cfg(tmp_path, [store], name="ft2", init_from=str(tmp_path / "plain.safetensors"))
    with pytest.raises(ckpt.CheckpointError, match=r"init_from .*plain\.safetensors: .*not a pdfnet-pipeline-model"):
        train(cfg, model=tiny_model(7))
    cfg = toy_cfg(tmp_path, [store], name="ft3", init_from=str(tmp_path / "nope.safetensors"))
    with pytest.raises(
        ckpt.CheckpointError, match=r"^init_from .*nope\.safetensors: no such checkpoint file or folder$"
    ):
        train(cfg, model=tiny_model(7))


def _reference_layout_state(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """A tiny checkpoint in the reference's key layout (as tests/test_model_checkpoint.py builds it):
    Swin from the plain reference-style Swin, the rest from a donor PDFNet under reference names."""
    from test_model_refswin import PlainSwin, reference_layout_state

    spec = PRESETS["tiny"][0]
    torch.manual_seed(seed)
    plain = PlainSwin(spec).eval()
    donor = tiny_model(seed + 1)
    ref = reference_layout_state(plain, spec, donor)
    return ref, donor


def test_init_from_a_converted_reference_checkpoint(tmp_path, store):
    ref, donor = _reference_layout_state()
    torch.save({"model": ref}, tmp_path / "release.pth")  # wrapped, as released checkpoints often are
    stats = convert_reference(tmp_path / "release.pth", tmp_path / "release.safetensors", TINY)
    converted = load_file(str(tmp_path / "release.safetensors"))
    cfg = toy_cfg(tmp_path, [store], name="ft", init_from=str(tmp_path / "release.safetensors"))
    got = weights_at_first_forward(cfg, tiny_model(7))
    assert_same_state(got, converted)
    assert stats["tensors"] == len(got)
    # the reference file's own tensors, outside the encoder by name, in the encoder e.g. the patch embedding
    for k, v in donor.state_dict().items():
        if not k.startswith("encoder."):
            assert torch.equal(got[k], v), k
    assert torch.equal(got["encoder.swin.patch_embed.proj.weight"], ref["encoder.patch_embed.proj.weight"])
    assert_same_state(got, load_model(tmp_path / "release.safetensors").state_dict())


# ---- run directory safety (ToyNet: only the loop's bookkeeping matters) ----


def _hashes(run_dir: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture()
def stores5(tmp_path):
    return (
        random_store(tmp_path / "tr5.zarr", n=5, size=32, seed=1),
        random_store(tmp_path / "vd5.zarr", n=3, size=32, seed=2, prefix="v"),
    )


def test_fresh_run_refuses_a_run_dir_with_checkpoints(tmp_path, stores5):
    tr, vd = stores5
    train(toy_cfg(tmp_path, [tr], [vd], name="run"), model=toy())  # 2 epochs x 5 steps, val -> best
    run = tmp_path / "run"
    before = _hashes(run)
    assert run / "best.safetensors" in before and run / "checkpoints" / "latest.json" in before
    with pytest.raises(ckpt.RunDirInUseError) as err:
        train(toy_cfg(tmp_path, [tr], [vd], name="run"), model=toy(seed=1))
    msg = str(err.value)
    assert str(run) in msg and "step_00000010" in msg and "best.safetensors" in msg
    assert "resume=true" in msg and "another run_dir" in msg and "overwrite=true" in msg
    assert _hashes(run) == before  # nothing written, not even config.json / metrics.jsonl
    # resume=true without a latest pointer is no way around it either
    (run / "checkpoints" / "latest.json").rename(run / "latest.json.away")
    with pytest.raises(ckpt.RunDirInUseError, match="latest.json is missing"):
        train(toy_cfg(tmp_path, [tr], [vd], name="run", resume=True), model=toy())
    (run / "latest.json.away").rename(run / "checkpoints" / "latest.json")
    assert _hashes(run) == before


def test_overwrite_true_starts_clean(tmp_path, stores5):
    tr, vd = stores5
    train(toy_cfg(tmp_path, [tr], [vd], name="run"), model=toy(seed=3))
    assert (tmp_path / "run" / "samples" / "epoch_001").is_dir()
    # new run in the same dir: 1 epoch, no validation -> the old step 10, best and images must go
    again = train(toy_cfg(tmp_path, [tr], name="run", epochs=1, overwrite=True), model=toy())
    clean = train(toy_cfg(tmp_path, [tr], name="clean", epochs=1), model=toy())
    assert again.losses == clean.losses and len(again.losses) == 5
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step_00000005"]
    assert not (run / "best.safetensors").exists() and not (run / "samples").exists()
    wa, wc = weights(run), weights(tmp_path / "clean")
    assert all(torch.equal(wa[k], wc[k]) for k in wc)
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 5]


def test_checkpoint_and_best_model_files_record_the_depth_settings(tmp_path):
    """The trainer passes the depth settings of its stores (provenance.trained_depth) to every model
    file it writes; best.safetensors is the best checkpoint's file, so it carries them too."""
    from pdfnet_pipeline.model.checkpoint import DepthSettings, read_depth

    depth = DepthSettings(arch="tiny", weights="random", seed=2, input_size=252, size=256, pdfnet_random_init=True)
    model = tiny_model(1)
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    state = ckpt.TrainState(step=3)
    step = ckpt.save_checkpoint(
        tmp_path / "checkpoints", model, opt, None, state, config={}, model_config=asdict(TINY), depth=depth
    )
    ckpt.mark_best(tmp_path / "checkpoints", tmp_path, step, {"max_f": 0.5, "mae": 0.1})
    assert read_depth(step / "model.safetensors") == depth == read_depth(tmp_path / "best.safetensors")
    ckpt.save_weights(model, tmp_path / "plain.safetensors")  # no settings given: none recorded
    assert read_depth(tmp_path / "plain.safetensors") is None


# ---- init_from in every form a user has: a released .pth, a save_pretrained folder, a Hub id ----


def test_init_from_a_reference_pth_converts_it_in_memory_strictly(tmp_path, store):
    """The released checkpoint as downloaded: the same weights as converting it first, no file written."""
    ref, _ = _reference_layout_state()
    torch.save({"model": ref}, tmp_path / "PDFNet_Best.pth")
    convert_reference(tmp_path / "PDFNet_Best.pth", tmp_path / "converted.safetensors", TINY)
    cfg = toy_cfg(tmp_path, [store], name="ft", init_from=str(tmp_path / "PDFNet_Best.pth"))
    got = weights_at_first_forward(cfg, tiny_model(7))
    assert_same_state(got, load_file(str(tmp_path / "converted.safetensors")))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == ["converted.safetensors"]


def test_init_from_a_reference_pth_of_another_architecture_names_the_keys(tmp_path, store):
    ref, _ = _reference_layout_state()
    key = next(k for k in ref if k.startswith("encoder.layers.3.blocks.0.mlp.fc1.weight"))
    ref[key] = ref[key][:, :-1].clone()  # a wider / narrower model: one mis-shaped tensor
    ref["decoder.extra_head.weight"] = torch.zeros(1)
    torch.save(ref, tmp_path / "other.pth")
    cfg = toy_cfg(tmp_path, [store], name="ft", init_from=str(tmp_path / "other.pth"))
    with pytest.raises(ckpt.CheckpointError) as err:
        train(cfg, model=tiny_model(7))
    msg = str(err.value)
    assert msg.startswith(f"init_from {tmp_path / 'other.pth'}: a reference checkpoint that does not fit")
    assert "preset tiny" in msg and "encoder.swin.layers.3.blocks.0.mlp.fc1.weight" in msg
    assert "decoder.extra_head.weight" in msg and "\n" not in msg
    assert not (tmp_path / "ft" / "checkpoints").exists()
    # The usual case, a released (reference) checkpoint into a tiny run or back: one phrase says so
    ref, _ = _reference_layout_state()
    torch.save(ref, tmp_path / "tiny.pth")
    cfg = toy_cfg(tmp_path, [store], name="ft_ref", init_from=str(tmp_path / "tiny.pth"))
    cfg.model = replace(cfg.model, preset="reference")
    with pytest.raises(ckpt.CheckpointError) as err:
        train(cfg, model=tiny_model(7))
    assert str(err.value).endswith("tiny.pth holds the tiny preset (by its Swin width), not the reference preset")


def test_init_from_a_save_pretrained_folder_and_a_hub_id(tmp_path, store, monkeypatch):
    from huggingface_hub import constants

    from pdfnet_pipeline.model.checkpoint import save_pretrained

    source = tiny_model(123)
    expected = {k: v.clone() for k, v in source.state_dict().items()}
    folder = save_pretrained(source, tmp_path / "my-pdfnet")
    cfg = toy_cfg(tmp_path, [store], name="ft_folder", init_from=str(folder))
    assert_same_state(weights_at_first_forward(cfg, tiny_model(7)), expected)
    # The same folder as a cached Hub snapshot (the layout huggingface_hub writes), read offline.
    cache = tmp_path / "hub"
    snap = cache / "models--someone--pdfnet-tiny" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--someone--pdfnet-tiny" / "refs").mkdir()
    (cache / "models--someone--pdfnet-tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = toy_cfg(tmp_path, [store], name="ft_hub", init_from="someone/pdfnet-tiny")
    assert_same_state(weights_at_first_forward(cfg, tiny_model(7)), expected)
    cfg = toy_cfg(tmp_path, [store], name="ft_nohub", init_from="someone/not-there")
    with pytest.raises(ckpt.CheckpointError, match=r"^init_from someone/not-there: no such local checkpoint"):
        train(cfg, model=tiny_model(7))


# ---- the fine-tune recipe's knobs: early stop, a slower or frozen backbone ----


def test_early_stop_ends_the_run_after_n_validations_without_gain_and_stays_stopped(tmp_path):
    from train_fixtures import toy_stores

    tr, vd = toy_stores(tmp_path)
    # lr 0: validation F_max never improves after the first epoch, the best
    cfg = toy_cfg(tmp_path, [tr], [vd], name="es", epochs=10, lr=0.0, early_stop=2)
    result = train(cfg, model=toy())
    epochs = [json.loads(ln) for ln in (tmp_path / "es" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]  # best at 1, then 2 without gain: stop
    assert result.early_stopped and result.state.stale == 2 and result.state.epoch == 3
    assert result.state.best_step == epochs[0]["step"]
    again = train(replace(cfg, resume=True), model=toy())  # resumed: nothing more to do
    assert again.early_stopped and again.state.epoch == 3 and not again.losses
    # early_stop 0 (the default) runs every epoch
    full = train(toy_cfg(tmp_path, [tr], [vd], name="all", epochs=4, lr=0.0), model=toy())
    assert full.state.epoch == 4 and not full.early_stopped


def test_backbone_lr_scale_and_frozen_backbone(tmp_path):
    from pdfnet_pipeline.train.optim import set_lr

    model = tiny_model(0)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, backbone_lr_scale=0.1), torch.device("cpu"))
    set_lr(opt, 2e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        backbone = {names[id(p)].startswith("encoder.") for p in group["params"]}
        assert len(backbone) == 1  # a group is all backbone or all the rest
        assert group["lr"] == pytest.approx(2e-4 if backbone == {True} else 2e-3, rel=0, abs=1e-18)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # scale 1 (the default): the paper's two groups, exactly as before
    plain = build_optimizer(tiny_model(0), OptimConfig(lr=1e-3), torch.device("cpu"))
    assert len(plain.param_groups) == 2 and all("lr_scale" not in g for g in plain.param_groups)
    # scale 0: the backbone is frozen; one step moves everything else and not it
    model = tiny_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, OptimConfig(lr=1e-2, backbone_lr_scale=0.0), torch.device("cpu"))
    out = model.predict(torch.randn(1, 3, 256, 256), torch.rand(1, 1, 256, 256))
    out.mean().backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("encoder."))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("decoder."))
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("encoder."))
