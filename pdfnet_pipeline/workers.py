"""Worker processes that start light: one rule for every pool and DataLoader of the project.

A forkserver child runs spawn's preparation, which re-runs the parent's main module as
`__mp_main__` in every worker (on Python 3.11 the server's own `__main__` preload never applies:
it looks for a `main_path` key the preparation data does not have). For the `pdfnet-pipeline`
console script that meant the whole CLI with torch and cv2: ~4.6 s per metrics worker, ~2.6 s per
DataLoader worker. So the CLI stays light (`--help` imports neither torch nor cv2), and the server
imports it and the modules the work needs once: the re-run in each worker finds every import
done, and the worker is a cheap fork. Preloaded modules must start no threads at import (a fork
copies none), which is also why plain fork is avoided once the parent has used OpenCV's or
zarr's thread pools.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext


def context(preload: tuple[str, ...] = (), method: str = "forkserver") -> BaseContext:
    """A multiprocessing context whose forkserver imports the CLI and `preload` once.

    The forkserver is one per process: the preload list of the call that starts it wins, and
    later pools reuse that server, importing what else they need after the fork."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["__main__", "pdfnet_pipeline.cli", *preload])
    return ctx
