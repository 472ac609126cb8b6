"""What flows through the edge: a consumed `Record`, a handler's `Refusal`, and the `Handler` type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed message. `value` is always bytes: tombstones are dead-lettered before a handler
    sees them. `timestamp_ms` is the broker's record timestamp (epoch ms)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """A record a handler refused: it goes to the dead-letter topic with this reason."""

    record: Record
    reason: str
    detail: str = ""


Handler = Callable[[list[Record]], Awaitable[Sequence[Refusal]]]
