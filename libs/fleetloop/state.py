"""State: the one protocol for everything that resumes, and the one Redis helper (an asyncio client
and the key convention `fl:<service>:<what>:<id>`)."""

from __future__ import annotations

from typing import Any, Protocol

import redis.asyncio as aioredis


class Resumable(Protocol):
    """What every stateful part of the loop implements, under these two names and no others.

    `snapshot()` returns everything the object carries between inputs (JSON-compatible, or bytes for
    the checkpoints written to Kafka); `restore(state)` takes it back. Objects built from configuration
    (triggers, trackers, monitors) are constructed from their config first and `restore` loads into
    them; value objects (an `Episode`, a `FrameCarry`, a `TriggerRunner`, an `EventClock`) offer a
    classmethod `restore(state, ...)` that builds one. A part keyed by many ids saves one id at a time
    with `snapshot_<what>(id)` / `restore_<what>(id, state)`.
    """

    def snapshot(self) -> Any: ...


def key(service: str, what: str, ident: str = "") -> str:
    """A namespaced Redis key; every key that is not a permanent index gets a TTL at write."""
    return f"fl:{service}:{what}:{ident}" if ident else f"fl:{service}:{what}"


# A Redis that stops answering (a stall, a SIGSTOP, a network partition) must fail a call, not hang it:
# the consumer then retries the batch with backoff, uncommitted, and reports itself stalled.
REDIS_TIMEOUT_S = 5.0


def connect(url: str, *, decode_responses: bool = True) -> aioredis.Redis:
    """An asyncio Redis client (returning `str` values unless `decode_responses=False`) whose calls
    raise TimeoutError after REDIS_TIMEOUT_S instead of waiting for a stalled server for good."""
    return aioredis.from_url(url, decode_responses=decode_responses, socket_timeout=REDIS_TIMEOUT_S,
                             socket_connect_timeout=REDIS_TIMEOUT_S)
