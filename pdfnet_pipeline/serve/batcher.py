"""Requests -> batches on the device: a bounded queue and the one worker thread that owns the model.

`submit(item)` (from the event loop, never blocking) queues a `Job` or raises `QueueFull` when
`max_queue` jobs already wait, `Closed` once shutdown began. The worker takes the oldest job,
waits up to `max_wait_s` after its arrival for more (up to `max_batch`), and calls `run(items)`
once for the batch. A job cancelled before the worker took it (its client hung up: `cancel`)
leaves the queue at once and is never computed. `close()` stops new jobs, lets the worker finish
every queued one, and joins it: SIGTERM drains instead of dropping work.

A batch whose `run` raises is retried one item at a time, so one bad photo fails alone.
Knows nothing of models or HTTP: `run` is any `list -> list` function.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """`max_queue` jobs wait already; `retry_after_s` estimates when there will be room."""

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"the queue is full; retry in {retry_after_s} s")


class Closed(Exception):
    """The server is shutting down and takes no new work."""


@dataclass
class Job:
    """One item's trip: `future` holds `run`'s result for it; times from `time.perf_counter`."""

    item: Any
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    finished: float = 0.0
    batch_size: int = 0

    @property
    def wait_s(self) -> float:
        return self.started - self.queued

    @property
    def run_s(self) -> float:
        return self.finished - self.started


class Batcher:
    def __init__(
        self,
        run: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        name: str = "pdfnet-serve-model",
    ) -> None:
        self.run = run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._closing = False
        self._running = 0  # jobs in the batch being computed
        self._batch_s = 0.0  # running mean of a batch's time (for Retry-After)
        self.batches = 0
        self.computed = 0  # items passed to `run` (retries not counted twice)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the worker (not counting the batch it computes)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._running

    def submit(self, item: Any) -> Job:
        job = Job(item)
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self._retry_after())
            self._queue.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Drop a job the worker has not taken (True); a running or done one finishes (False)."""
        with self._cond:
            if not job.future.cancel():
                return False
            try:
                self._queue.remove(job)
            except ValueError:  # the worker popped it and will skip it
                pass
            self._cond.notify()
            return True

    def close(self, timeout: float | None = None) -> None:
        """No new jobs; the queued ones are still computed; returns when the worker is done."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _retry_after(self) -> int:
        batches_ahead = len(self._queue) / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * self._batch_s))

    def _take(self) -> list[Job] | None:
        """The next batch (possibly empty when its jobs were cancelled); None: closed and drained."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].queued + self.max_wait_s
            while self._queue and len(self._queue) < self.max_batch and not self._closing:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                job = self._queue.popleft()
                if job.future.set_running_or_notify_cancel():  # False: cancelled meanwhile
                    batch.append(job)
            self._running = len(batch)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._compute(batch)
            with self._cond:
                self._running = 0

    def _compute(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.started, job.batch_size = start, len(batch)
        results, error = None, None
        try:
            results = list(self.run([job.item for job in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run returned {len(results)} results for {len(batch)} items")
        except Exception as err:  # noqa: BLE001 - handed to the waiting requests
            results, error = None, err
        if error is not None and len(batch) == 1:
            self._finish(batch[0], error=error)
        elif error is not None:  # one at a time: only the item that fails fails
            for job in batch:
                job.started, job.batch_size = time.perf_counter(), 1
                try:
                    self._finish(job, result=self.run([job.item])[0])
                except Exception as err:  # noqa: BLE001
                    self._finish(job, error=err)
        else:
            for job, result in zip(batch, results):
                self._finish(job, result=result)
        self.batches += 1
        self.computed += len(batch)
        took = time.perf_counter() - start
        self._batch_s = took if self.batches == 1 else 0.8 * self._batch_s + 0.2 * took

    @staticmethod
    def _finish(job: Job, result: Any = None, error: BaseException | None = None) -> None:
        job.finished = time.perf_counter()
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
