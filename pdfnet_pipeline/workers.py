"""Worker processes that start light: one rule for every pool and DataLoader of the project.

A forkserver child runs spawn's preparation: unless the server already holds the main module,
each child re-imports it (for the `pdfnet-pipeline` console script that was the whole CLI with
torch and cv2: ~4.6 s per metrics worker, ~2.6 s per DataLoader worker). So the server preloads
`__main__` (a light module: `--help` imports neither torch nor cv2) and the modules the work
needs, once; every worker is then a cheap fork of it. Preloaded modules must start no threads at
import (a fork copies none), which is also why plain fork is avoided once the parent has used
OpenCV's or zarr's thread pools.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext


def context(preload: tuple[str, ...] = (), method: str = "forkserver") -> BaseContext:
    """A multiprocessing context whose forkserver imports `__main__` and `preload` once.

    The forkserver is one per process: the preload list of the call that starts it wins, and
    later pools reuse that server, importing what else they need after the fork."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["__main__", *preload])
    return ctx
