"""Pre-emption: stop a long run cleanly on SIGTERM / SIGUSR1 and tell the job script to requeue.

Clusters warn before they take the machine: SLURM sends SIGTERM on pre-emption and, with
`--signal=USR1@120`, SIGUSR1 before the time limit. A stage (train, depth) runs inside
`catch_stop_signals()`: the handler only sets a flag (no I/O, no locks: it may interrupt
anything), and the stage looks at the flag where stopping is safe (train: after an optimizer
step, never inside an accumulation window; depth: after handing a batch to the writers), saves its
progress, and raises `Preempted`. The CLI turns that into exit code `EXIT_PREEMPTED`.

EXIT_PREEMPTED = 75 (EX_TEMPFAIL in sysexits.h, "temporary failure, retry"): distinct from 1 (an
error), from 143 / 138 (killed by SIGTERM / SIGUSR1 *without* a clean stop) and from 0 (finished),
so a batch script can requeue on exactly this code. See the README's SLURM example.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A run stopped on a signal after saving its progress; rerunning resumes it."""

    exit_code = EXIT_PREEMPTED


class StopFlag:
    """Set by the signal handler; read by the stage at its safe points."""

    def __init__(self) -> None:
        self.signum = 0

    @property
    def requested(self) -> bool:
        return self.signum != 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handler(self, signum: int, _frame) -> None:
        self.signum = signum  # only this: a handler may run between any two bytecodes


@contextmanager
def catch_stop_signals() -> Iterator[StopFlag]:
    """Install the flag-setting handler for SIGTERM and SIGUSR1; restore the previous ones on exit.

    Python installs handlers only from the main thread; elsewhere (a stage run from a thread) the
    flag stays unset and the signals keep their previous behaviour."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag._handler) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def shield_worker() -> None:
    """In a data worker process: ignore the stop signals. The main process decides when workers
    end (it stops feeding them); a job-wide SIGTERM (SLURM signals every process of the job) must
    not kill a worker under a main process that is still finishing its step."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def shielded(init, worker_id: int) -> None:
    """`functools.partial(shielded, init)`: a DataLoader worker_init_fn that shields, then runs `init`."""
    shield_worker()
    init(worker_id)
