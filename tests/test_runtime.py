"""runtime: the one rule for device, precision and the process group; old setting names refused."""

from __future__ import annotations

import pytest
import torch

from pdfnet_pipeline import config as cfgmod
from pdfnet_pipeline import runtime
from pdfnet_pipeline.runtime import Precision, precision


def test_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision(cpu, "auto") == Precision(None, False)  # fp32 on the CPU
    assert precision(cpu, "fp32") == Precision(None, False)
    assert precision(cpu, "bf16") == Precision(torch.bfloat16, False)
    assert precision(cuda, "fp16") == Precision(torch.float16, True)  # GradScaler with fp16
    assert precision(cuda, "bf16") == Precision(torch.bfloat16, False)
    assert precision(cpu, "bf16").name == "bfloat16" and precision(cpu, "auto").name == "float32"
    with pytest.raises(runtime.RuntimeSetupError, match="fp16 needs CUDA"):
        precision(cpu, "fp16")
    with pytest.raises(runtime.RuntimeSetupError, match="'bfloat16' is now spelled 'bf16'"):
        precision(cpu, "bfloat16")


def test_autocast_follows_the_precision():
    x = torch.ones(2, 2)
    with precision(torch.device("cpu"), "bf16").autocast(torch.device("cpu")):
        assert (x @ x).dtype == torch.bfloat16
    with precision(torch.device("cpu"), "fp32").autocast(torch.device("cpu")):
        assert (x @ x).dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(runtime.RuntimeSetupError, match="sees no CUDA GPU.*or set device=cpu"):
        runtime.pick_device("cuda")
    assert runtime.pick_device("auto") == torch.device("cpu")


def test_single_process_runtime_collectives_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = runtime.init("cpu")
    assert (rt.rank, rt.world, rt.main, rt.distributed) == (0, 1, True, False)
    t = torch.tensor([1.5, 2.0])
    assert rt.all_reduce(t) is t and t.tolist() == [1.5, 2.0]
    assert rt.broadcast("x") == "x" and rt.gather({"a": 1}) == [{"a": 1}]
    rt.barrier()
    rt.shutdown()


@pytest.mark.parametrize(("stage", "old", "value"), [("depth", "dtype", '"float32"'), ("eval", "amp", '"fp32"')])
def test_stage_files_refuse_old_precision_setting_names(stage, old, value):
    import importlib

    module = importlib.import_module(f"pdfnet_pipeline.{stage}.stage")
    raw = cfgmod.load_stage_dict(stage, "smoke", [f"{old}={value}"])
    with pytest.raises(cfgmod.ConfigError, match=f"setting {old} is now precision"):
        cfgmod.from_dict(module.Config, raw)


def test_old_precision_spellings_are_refused_with_the_new_one():
    from pdfnet_pipeline.train.config import Config

    raw = cfgmod.load_stage_dict("train", "smoke", ['precision="float32"'])
    with pytest.raises(cfgmod.ConfigError, match=r"precision: expected one of .*'float32' is now spelled 'fp32'"):
        cfgmod.from_dict(Config, raw)
    for stage in ("depth", "train", "eval"):  # every stage file spells it the same way
        assert cfgmod.load_stage_dict(stage)["precision"] == "auto"
