"""The server's settings: one dataclass, owned here, built by the CLI or by a test.

Imports nothing heavy, so `pdfnet-pipeline serve --help` stays light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """`checkpoint`: a project .safetensors file, a `save_pretrained` folder or a Hub id. The DAM
    options left None come from the checkpoint's recorded depth settings (as `predict`).

    `max_batch` photos at most go through the model together; the worker waits up to
    `max_wait_ms` after the oldest queued photo for others to join its batch. `max_queue` photos may
    wait (not counting the batch being computed); one more is answered 503 with Retry-After.
    `max_upload_mb`: the largest upload (bytes) and `max_pixels` the largest photo (W x H, read
    from the header before decoding: decompression bombs stop there); both are answered 413.
    `drain_s`: on SIGTERM / Ctrl-C, how long in-flight requests may take to be answered.
    `stack`: a batch's photos go through DAM and PDFNet as one tensor batch (True) or one after
    the other (False); None: stacked on CUDA, one at a time on the CPU (`engine` says why)."""

    checkpoint: str
    dam_weights: str | None = None
    dam_arch: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    max_batch: int = 4
    max_wait_ms: float = 10.0
    max_queue: int = 16
    max_upload_mb: float = 50.0
    max_pixels: int = 60_000_000
    device: str = "auto"
    drain_s: float = 60.0
    stack: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch < 1:
            problems.append(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            problems.append(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 1:
            problems.append(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.max_upload_mb <= 0:
            problems.append(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if self.max_pixels < 1:
            problems.append(f"--max-pixels must be >= 1, got {self.max_pixels}")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be 0..65535 (0: any free port), got {self.port}")
        if self.drain_s <= 0:
            problems.append(f"--drain-s must be > 0, got {self.drain_s}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def replace(self, **changes) -> ServeConfig:
        return dataclasses.replace(self, **changes)
