"""Can the Hugging Face Hub be reached? Asked before a download, so that an offline machine gets
one clear error at once instead of huggingface_hub's retries (measured: 29 s for DAM v2 large on
a machine without DNS, before the library gave up).

`unreachable()` is cheap: HF_HUB_OFFLINE, else one HEAD request to the endpoint through
huggingface_hub's own HTTP session (its proxy settings apply), with a short timeout and no retry.
Callers ask only after the local cache failed them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

TIMEOUT_S = 5.0


def unreachable(timeout: float = TIMEOUT_S) -> str | None:
    """Why the Hub cannot be reached now (None: it answered, whatever its status code)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as err:  # any transport failure (DNS, refused, timeout, TLS): the download would fail too
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"{constants.ENDPOINT} cannot be reached ({first})"
    return None


@contextmanager
def cache_only() -> Iterator[None]:
    """huggingface_hub in offline mode for the block: cached files load, anything else fails at
    once (for libraries that take no local_files_only, e.g. timm's pretrained weights)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
