"""The one Redis helper: an asyncio client and the key convention `fl:<service>:<what>:<id>`."""

from __future__ import annotations

import redis.asyncio as aioredis


def key(service: str, what: str, ident: str = "") -> str:
    """A namespaced Redis key; every key that is not a permanent index gets a TTL at write."""
    return f"fl:{service}:{what}:{ident}" if ident else f"fl:{service}:{what}"


def connect(url: str) -> aioredis.Redis:
    """An asyncio Redis client that returns `str` values."""
    return aioredis.from_url(url, decode_responses=True)
