"""The serve batcher: batches of at most max_batch within max_wait, a bounded queue answered 503
with Retry-After, a client that hangs up before its turn is never computed, shutdown finishes the
queue, one failing photo fails alone; and a stacked batch's masks against `Segmenter.predict`."""

import socket
import threading
import time

import numpy as np
import pytest
from serve_fixtures import encoded, form, photo, post_image, request, running, tiny_checkpoint

from pdfnet_pipeline.serve.batcher import Batcher, Closed, QueueFull
from pdfnet_pipeline.serve.config import ServeConfig
from pdfnet_pipeline.serve.engine import Engine, Output


def _wait(cond, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Gate:
    """A run function that blocks until `release` and records each batch it was given."""

    def __init__(self, fail_on=()):
        self.entered, self.open = threading.Event(), threading.Event()
        self.batches, self.fail_on = [], set(fail_on)

    def __call__(self, items):
        self.batches.append(list(items))
        self.entered.set()
        assert self.open.wait(30)
        if self.fail_on & set(items):
            raise ValueError(f"bad item among {items}")
        return [item * 10 for item in items]


def test_batches_wait_for_companions_and_respect_max_batch():
    gate = Gate()
    batcher = Batcher(gate, max_batch=3, max_wait_s=0.2, max_queue=16).start()
    first = batcher.submit(0)
    gate.entered.wait(5)  # alone: it went after max_wait
    jobs = [batcher.submit(i) for i in range(1, 8)]  # 7 more while the first computes
    gate.open.set()
    assert [j.future.result(10) for j in [first, *jobs]] == [i * 10 for i in range(8)]
    assert gate.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    assert [j.batch_size for j in jobs] == [3, 3, 3, 3, 3, 3, 1]
    assert first.wait_s >= 0.19  # it waited max_wait for companions that did not come
    batcher.close(10)


def test_full_queue_refuses_cancelled_jobs_leave_and_close_drains():
    gate = Gate()
    batcher = Batcher(gate, max_batch=1, max_wait_s=0, max_queue=2).start()
    running_job = batcher.submit(1)
    gate.entered.wait(5)
    a, b = batcher.submit(2), batcher.submit(3)
    with pytest.raises(QueueFull) as full:
        batcher.submit(4)
    assert full.value.retry_after_s >= 1
    assert batcher.cancel(a) and batcher.queue_depth == 1  # its slot is free at once
    c = batcher.submit(5)
    assert not batcher.cancel(running_job)  # taken by the worker: it finishes
    batcher.close(0.1)  # shutdown begins while one job runs and two wait
    with pytest.raises(Closed):
        batcher.submit(6)
    gate.open.set()
    batcher.close(10)
    assert (running_job.future.result(), b.future.result(), c.future.result()) == (10, 30, 50)
    assert a.future.cancelled() and [x for batch in gate.batches for x in batch] == [1, 3, 5]  # 2 never ran
    assert batcher.computed == 3


def test_a_failing_item_fails_alone():
    gate = Gate(fail_on={2})
    gate.open.set()
    batcher = Batcher(gate, max_batch=4, max_wait_s=0.3, max_queue=8).start()
    jobs = [batcher.submit(i) for i in (1, 2, 3)]
    assert jobs[0].future.result(10) == 10 and jobs[2].future.result(10) == 30
    with pytest.raises(ValueError, match=r"bad item among \[2\]"):
        jobs[1].future.result(10)
    assert gate.batches == [[1, 2, 3], [1], [2], [3]]  # the batch, then one at a time
    batcher.close(10)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from pdfnet_pipeline.segmenter import Segmenter

    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.safetensors")
    return Engine(Segmenter.from_pretrained(ckpt, device="cpu").predictor, checkpoint=str(ckpt))


class GatedEngine:
    """The real engine behind a gate, counting the photos it computed."""

    def __init__(self, engine):
        self.engine, self.gate, self.photos = engine, Gate(), 0
        self.warning, self.info = engine.warning, engine.info

    def __call__(self, photos):
        self.gate(list(range(len(photos))))
        self.photos += len(photos)
        return self.engine(photos)


def test_a_client_that_hangs_up_is_not_computed_and_a_full_queue_answers_503(engine):
    gated = GatedEngine(engine)
    cfg = ServeConfig(checkpoint="tiny", max_batch=1, max_queue=1)
    with running(cfg, gated) as (port, app):
        batcher = app.state.batcher
        answers = {}
        first = threading.Thread(target=lambda: answers.update(a=post_image(port, encoded(photo(0)))))
        first.start()
        assert gated.gate.entered.wait(30)  # the first photo is in the model

        body, ctype = form(encoded(photo(1)))  # the second waits in the queue, then its client hangs up
        head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        _wait(lambda: batcher.queue_depth == 1, "the second request to queue")

        busy = post_image(port, encoded(photo(2)))  # the queue (max 1) is full
        assert busy.status == 503 and int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"].startswith("busy: the queue is full; retry in ")

        sock.close()
        _wait(lambda: batcher.queue_depth == 0, "the hung-up request to leave the queue")
        gated.gate.open.set()
        first.join(60)
        assert answers["a"].status == 200
        later = post_image(port, encoded(photo(3)))
        assert later.status == 200
        assert gated.photos == 2  # the first and the last: the hung-up one was never computed
        health = request(port, "GET", "/health").json()
        assert (health["predictions"], health["queue_depth"], health["in_flight"]) == (2, 0, 0)


def test_stacked_batches_match_predict_within_one_level(engine):
    """Three photos through the network as one batch: the CPU's batched kernels round differently
    (oneDNN), so a pixel may move by one level; one at a time is bit-identical."""
    photos = [photo(i) for i in range(3)]
    want = [np.asarray(engine.predictor(p)) for p in photos]
    stacked = Engine(engine.predictor, stack=True)(photos)
    one_by_one = Engine(engine.predictor, stack=False)(photos)
    for w, s, o, p in zip(want, stacked, one_by_one, photos):
        assert isinstance(s, Output) and s.mask.shape == s.depth.shape == p.shape[:2]
        np.testing.assert_array_equal(o.mask, w)
        diff = np.abs(s.mask.astype(int) - w)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, ((diff > 0).mean(), diff.max())
        assert np.abs(s.depth.astype(int) - o.depth).max() <= 1
        print(f"stacked vs predict: {(diff > 0).mean():.4%} of pixels differ, by at most {diff.max()}")


class Broken:
    """An engine whose model fails (as DAM does on non-finite depth), with trained weights."""

    warning = None

    def info(self):
        return {"device": "cpu"}

    def __call__(self, photos):
        raise ValueError("DAM v2 produced non-finite depth")


def test_a_model_failure_is_a_500_naming_it_and_the_server_goes_on():
    with running(ServeConfig(checkpoint="x"), Broken()) as (port, _):
        answer = post_image(port, encoded(photo(0)), filename="photo.png")
        assert answer.status == 500
        assert answer.json() == {"error": "photo.png: prediction failed (ValueError: DAM v2 produced non-finite depth)"}
        page = request(port, "GET", "/").body.decode()
        assert 'id="banner"' not in page and "{{" not in page  # trained weights: no banner; placeholders filled
        assert request(port, "GET", "/health").json()["predictions"] == 1
