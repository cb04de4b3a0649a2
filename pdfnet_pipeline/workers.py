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

import atexit
import functools
import multiprocessing
import os
import signal
import warnings
from multiprocessing.context import BaseContext

from pdfnet_pipeline.preempt import STOP_SIGNALS

# Run as `python -m pdfnet_pipeline.cli` (or torchrun -m), each worker re-runs the CLI as its main
# module, which the forkserver has already imported (on purpose, see above); runpy then warns once
# per worker. Every forkserver of the project imports this module, and its workers inherit the filter.
warnings.filterwarnings("ignore", r"'pdfnet_pipeline\.cli' found in sys\.modules", RuntimeWarning)


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, as under SLURM or taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def context(preload: tuple[str, ...] = (), method: str = "forkserver") -> BaseContext:
    """A multiprocessing context whose forkserver imports the CLI and `preload` once.

    The forkserver is one per process: the preload list of the call that starts it wins, and
    later pools reuse that server, importing what else they need after the fork."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["__main__", "pdfnet_pipeline.cli", *preload])
        _start_forkserver_shielded()
    return ctx


def _start_forkserver_shielded() -> None:
    """Start the forkserver with the stop signals blocked (a no-op once it runs).

    A job-wide SIGTERM (SLURM signals the whole process group) used to kill the forkserver, and
    DataLoader workers quit when their parent goes (torch's watchdog compares getppid()), so the
    main process died with "DataLoader worker exited unexpectedly" instead of stopping cleanly. A
    blocked mask survives fork and exec: the server and every worker it forks never receive the
    stop signals. Blocking, not ignoring, here: a signal that arrives during the start is
    delivered to this process once the mask is restored, never lost."""
    from multiprocessing import forkserver, resource_tracker

    # The resource tracker's start unblocks SIGTERM in this thread (its own bpo-33613 guard): start
    # it first, so the forkserver's start below finds it running and leaves the mask alone.
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@functools.cache
def kill_shielded_at_exit() -> None:
    """Make sure workers that ignore SIGTERM (`preempt.shield_worker`) cannot hold up this
    process's exit. At exit, multiprocessing sends its daemonic children SIGTERM and joins every
    child: a shielded worker outlives the SIGTERM, so a DataLoader still alive at exit (persistent
    workers, or an iterator kept by a traceback) hung the interpreter forever. Registered after
    multiprocessing's own exit handler, this runs first and SIGKILLs the daemonic children left.
    Call it in the parent before starting shielded workers (once is enough; later calls no-op)."""
    atexit.register(_kill_daemonic_children)


def _kill_daemonic_children() -> None:
    for child in multiprocessing.active_children():
        if child.daemon:  # DataLoader workers; pools' non-daemonic workers are shut down by them
            child.kill()


def keep_freed_memory(limit_mb: int = 512) -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the kernel.

    A training sample allocates ~30 MB of short-lived 1024² arrays (PIL's image blocks, OpenCV's
    outputs, decoded chunks). glibc returns big freed blocks to the kernel, so every sample
    faulted its memory in afresh: measured on the training sample here, 1,750-2,230 page faults
    and 52-58 ms per sample by default, 4-34 faults and 46 ms with the heap keeping up to
    `limit_mb` freed. glibc only (the Linux default); elsewhere a no-op that returns False."""
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library (no library search)
    except (OSError, AttributeError):
        return False
    # 32 MB is the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, limit_mb << 20))
