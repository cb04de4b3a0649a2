"""Where and how a stage runs: device, precision and the torchrun process group, one rule for all.

Every stage (depth, train, eval, predict) and bench gets its device and autocast here, and the
distributed stages (depth, train) their process group: launched without torchrun (no WORLD_SIZE
in the environment) a `Runtime` is a single process and every collective is a no-op, so callers
have one code path.

Precision, one setting name everywhere: `precision = "auto" | "bf16" | "fp16" | "fp32"`.
auto: bf16 on GPUs that have it, fp16 (+ GradScaler when training) on older ones, fp32 on the CPU.

Importing this module is light (torch is imported inside the functions), so configs can use its
names without slowing `--help`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pdfnet_pipeline.errors import UserError

if TYPE_CHECKING:
    import torch

PrecisionName = Literal["auto", "bf16", "fp16", "fp32"]
# Spellings stage files used before there was one name; refused with the new spelling.
OLD_PRECISION_SPELLINGS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


class RuntimeSetupError(UserError, RuntimeError):
    """A device or precision that this machine cannot give; the message says what to change."""


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """ "auto": this rank's GPU when there is one, else the CPU; "cuda" gets the rank's index.

    Asking for CUDA where torch sees none is an error, never a silent fall back to the CPU (an
    older driver than the CUDA build needs looks exactly like that)."""
    import torch

    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeSetupError(
                f"device {requested!r} asked for, but torch {torch.__version__} sees no CUDA GPU (CUDA build "
                f"{torch.version.cuda}); check `nvidia-smi` and that the driver supports that CUDA version, "
                f"or install a matching wheel (README: GPU machines), or set device=cpu"
            )
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


@dataclass(frozen=True)
class Precision:
    """An autocast dtype (None: plain fp32) and whether training needs a GradScaler."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.") if self.dtype is not None else "float32"

    def autocast(self, device: torch.device):
        import torch

        return torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


def precision(device: torch.device, requested: str = "auto") -> Precision:
    import torch

    if requested in OLD_PRECISION_SPELLINGS:
        raise RuntimeSetupError(f"precision {requested!r} is now spelled {OLD_PRECISION_SPELLINGS[requested]!r}")
    if requested == "auto":
        if device.type != "cuda":
            return Precision(None, False)
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp32":
        return Precision(None, False)
    if requested == "bf16":
        return Precision(torch.bfloat16, False)
    if requested != "fp16":
        raise RuntimeSetupError(f"unknown precision {requested!r} (auto, bf16, fp16, fp32)")
    if device.type != "cuda":
        raise RuntimeSetupError("precision fp16 needs CUDA (GradScaler); use bf16 or fp32 on the CPU")
    return Precision(torch.float16, True)


@dataclass(frozen=True)
class Runtime:
    """This process's place in the run: rank, world size, its device. A single process without
    torchrun; `distributed` once `init` has joined torchrun's process group."""

    device: Any  # torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # -- collectives (no-ops on one process)
    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place; returns t. `op`: sum or max."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank (small picklable things: an error message)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's `obj` (small things: RNG states, counts), in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def shutdown(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def init(requested_device: str = "auto") -> Runtime:
    """Device for this rank and, under torchrun, the process group (NCCL on GPUs, else gloo)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = pick_device(requested_device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return Runtime(device)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":  # device_id binds NCCL to this GPU up front (no guessing, eager init)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return Runtime(device, rank, world, local_rank)
