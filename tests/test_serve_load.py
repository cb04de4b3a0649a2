"""A bounded local load test of `serve`: 48 requests from 8 client threads, each sending its own
photo; every answer is 200 or 503 (the queue holds 4), every 200 is the mask of that client's
photo bit for bit (nothing lost or mixed up between batched requests), and the server is healthy
after. Prints the figures the notes quote: p50 / p95 latency, 503 count, batch sizes, peak RSS."""

import collections
import resource
import threading
import time

import numpy as np
import pytest
from serve_fixtures import encoded, photo, post_image, request, running, tiny_checkpoint

from pdfnet_pipeline.segmenter import Segmenter
from pdfnet_pipeline.serve.config import ServeConfig
from pdfnet_pipeline.serve.engine import Engine

CLIENTS, PER_CLIENT = 8, 6


@pytest.mark.slow
def test_concurrent_clients_get_their_own_masks(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    segmenter = Segmenter.from_pretrained(ckpt, device="cpu")
    data, want = [], []
    for i in range(CLIENTS):
        (tmp_path / f"{i}.png").write_bytes(encoded(photo(20 + i)))
        data.append((tmp_path / f"{i}.png").read_bytes())
        want.append(np.asarray(segmenter.predict(tmp_path / f"{i}.png")))

    cfg = ServeConfig(checkpoint=str(ckpt), max_batch=4, max_wait_ms=10, max_queue=4)
    results = collections.defaultdict(list)  # client -> [(status, seconds, batch size)]
    problems = []

    def client(i: int) -> None:
        for _ in range(PER_CLIENT):
            start = time.perf_counter()
            answer = post_image(port, data[i], filename=f"{i}.png", timeout=120)
            took = time.perf_counter() - start
            results[i].append((answer.status, took, answer.headers.get("x-batch-size")))
            if answer.status == 200:
                if not np.array_equal(np.asarray(answer.image()), want[i]):
                    problems.append(f"client {i}: a mask that is not its photo's")
            elif answer.status == 503:
                if "retry-after" not in answer.headers or not answer.json()["error"].startswith("busy:"):
                    problems.append(f"client {i}: a 503 without Retry-After: {answer.headers} {answer.body}")
                time.sleep(0.2)  # a polite client; the load test does not retry (every request counts once)
            else:
                problems.append(f"client {i}: status {answer.status}: {answer.body[:200]}")

    with running(cfg, Engine(segmenter.predictor, checkpoint=str(ckpt))) as (port, _):
        wall = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        wall = time.perf_counter() - wall
        health = request(port, "GET", "/health").json()

    assert problems == []
    answers = [r for rs in results.values() for r in rs]
    assert len(answers) == CLIENTS * PER_CLIENT
    ok = sorted(took for status, took, _ in answers if status == 200)
    busy = sum(status == 503 for status, _, _ in answers)
    assert len(ok) + busy == len(answers) and len(ok) >= CLIENTS  # every client got through at least once
    assert (health["status"], health["queue_depth"], health["in_flight"]) == ("ok", 0, 0)
    assert health["predictions"] == len(ok)
    batches = collections.Counter(int(b) for status, _, b in answers if status == 200)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nserve load: {len(answers)} requests from {CLIENTS} clients in {wall:.1f} s: {len(ok)} x 200, {busy} x 503; "
        f"latency of the 200s p50 {np.percentile(ok, 50) * 1000:.0f} ms, p95 {np.percentile(ok, 95) * 1000:.0f} ms; "
        f"answers by batch size {dict(sorted(batches.items()))}; peak RSS (test + server) {peak_mb:.0f} MB"
    )
