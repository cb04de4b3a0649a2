"""hub.unreachable: the quick check before a download (HF_HUB_OFFLINE, or one HEAD request)."""

import time

from pdfnet_pipeline import hub


def test_offline_env_and_an_unreachable_endpoint_are_named(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.unreachable() == "HF_HUB_OFFLINE is set"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens: refused
    start = time.perf_counter()
    reason = hub.unreachable()
    assert reason.startswith("http://127.0.0.1:9 cannot be reached (") and time.perf_counter() - start < 5


def test_cache_only_restores_the_offline_flag():
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    with hub.cache_only():
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE == before
