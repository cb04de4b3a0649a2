"""Stage `train`: `Config` (stages/train.toml + profile + --set) and `run(cfg)`.

Launch on one device with `pdfnet-pipeline stage run train`, on several with
`torchrun --nproc-per-node N -m pdfnet_pipeline.cli stage run train` (DDP is picked up from the
environment torchrun sets).
"""

from __future__ import annotations

from pdfnet_pipeline.train.config import Config

__all__ = ["Config", "run"]


def run(cfg: Config) -> None:
    """Train; on SIGTERM / SIGUSR1 the run saves a checkpoint after the current optimizer step and
    this raises preempt.Preempted (the CLI exits with 75: rerun with resume=true to continue)."""
    from pdfnet_pipeline.preempt import Preempted
    from pdfnet_pipeline.train.loop import train

    result = train(cfg)
    if result.is_main:
        last = result.val[-1] if result.val else {}
        print(
            f"train: {result.state.step} steps, last loss {result.losses[-1] if result.losses else float('nan'):.4f}"
            + (f", val max-F {last['max_f']:.4f} MAE {last['mae']:.4f}" if last else "")
            + (" (early stop)" if result.early_stopped else "")
            + f" -> {cfg.run_dir}"
        )
    if result.stopped:
        where = result.checkpoint or cfg.run_dir / "checkpoints"
        raise Preempted(
            f"training stopped on {result.stopped} after optimizer step {result.state.step} "
            f"(epoch {result.state.epoch}), checkpoint {where}; rerun with resume=true to continue exactly"
        )
