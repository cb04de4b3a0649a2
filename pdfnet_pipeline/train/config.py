"""The train stage's settings (stages/train.toml + profile + --set -> `Config`).

Kept apart from the loop so the loop, the stage entry and the tests import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pdfnet_pipeline.data.dataset import DataConfig
from pdfnet_pipeline.model import PDFNetConfig
from pdfnet_pipeline.runtime import PrecisionName
from pdfnet_pipeline.train.optim import OptimConfig


@dataclass
class LogConfig:
    """Extra training logs beside metrics.jsonl and curve.png (which are always written)."""

    tensorboard: bool = False  # run_dir/tb/: metrics.jsonl's scalars as TensorBoard events (pip install tensorboard)


@dataclass
class Config:
    run_dir: Path = Path("runs/pdfnet")
    seed: int = 0
    epochs: int = 100
    batch_size: int = 1  # per process
    accum_steps: int = 1  # micro-batches per optimizer step (the last window of an epoch may be shorter)
    max_steps: int = 0  # stop (with a checkpoint) after this many optimizer steps; 0 = run all epochs
    device: str = "auto"  # auto = cuda:LOCAL_RANK when available, else cpu
    precision: PrecisionName = "auto"  # auto: bf16 (fp16 + GradScaler without bf16) on CUDA, fp32 on CPU
    channels_last: bool = True  # applied on CUDA only (where it speeds up the convs)
    compile: bool = False
    threads: int = 0  # torch CPU threads; 0 = torch's default
    resume: bool = False  # continue exactly from run_dir's latest checkpoint
    overwrite: bool = False  # resume=false over a run_dir holding checkpoints: delete them (else refused)
    init_from: str = ""  # fine-tune: a model .safetensors (e.g. converted release) or a run/checkpoint dir
    ckpt_every: int = 0  # optimizer steps between mid-epoch checkpoints; 0 = at epoch ends only
    keep: int = 3  # recent checkpoints kept (plus latest and best)
    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    val_every: int = 1  # epochs between validations; 0 = never
    val_images: int = 4  # validation predictions saved as PNG per validation
    early_stop: int = 0  # stop after this many validations in a row without a better val F_max; 0 = never
    ddp_find_unused: bool = False
    progress: bool = True  # tqdm bar on rank 0 (the one-line epoch summaries print either way)
    log: LogConfig = field(default_factory=LogConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: PDFNetConfig = field(
        default_factory=lambda: PDFNetConfig(
            backbone_weights="swin_base_patch4_window12_384.ms_in22k_ft_in1k", drop_path=0.1
        )
    )
