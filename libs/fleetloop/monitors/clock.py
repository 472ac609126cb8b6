"""The monitors' event-time clock: a watermark driven by the data, optionally by a wall clock.

Two explicit modes:

* `ClockMode.EVENT` (accelerated simulation, replays, tests): the watermark is the newest event
  time seen minus the allowed lateness, or whatever the caller passes to `advance_to`. Nothing
  but data moves it, so a fleet day can run in minutes and results are deterministic.
* `ClockMode.LIVE` (production): as EVENT, plus `tick(now_wall_ms)`. Every observed message
  records offset = receiving wall clock - newest event time; a tick maps the wall clock back
  to event time with that offset, so the watermark keeps moving when the whole fleet is silent
  (a silent fleet is exactly when OFFLINE must fire).

With `external=True` the data does not move the watermark at all: a stream agent that reads
several partitions computes it with the streaming edge's `Watermark` (fleetloop.bus.watermark: the
minimum over its partitions, so a partition fetched ahead of the others during catch-up cannot
declare the lagging partitions' vehicles offline) and passes it to `advance_to`.

The offset is deliberately not persisted: after a restart the consumer first replays its
backlog, and a stale offset would declare every vehicle offline before the backlog is read.
"""

from __future__ import annotations

import enum
from typing import Any


class ClockMode(enum.Enum):
    EVENT = "event"
    LIVE = "live"


class EventClock:
    """Monotonic watermark in epoch ms (None until the first message or advance)."""

    __slots__ = ("mode", "allowed_lateness_ms", "external", "max_event_ms", "watermark_ms", "_offset_ms")

    def __init__(self, mode: ClockMode, allowed_lateness_ms: int, external: bool = False) -> None:
        self.mode = mode
        self.allowed_lateness_ms = allowed_lateness_ms
        self.external = external
        self.max_event_ms: int | None = None
        self.watermark_ms: int | None = None
        self._offset_ms: int | None = None

    def observe(self, event_ms: int, wall_ms: int | None = None) -> int:
        """Account for one message with event time `event_ms` received at wall time `wall_ms`.

        LIVE mode requires `wall_ms`; EVENT mode ignores it. Returns the (possibly advanced)
        watermark.
        """
        if self.max_event_ms is None or event_ms > self.max_event_ms:
            self.max_event_ms = event_ms
        if self.mode is ClockMode.LIVE:
            if wall_ms is None:
                raise ValueError("a LIVE clock needs the receiving wall time (wall_ms) of every message")
            self._offset_ms = wall_ms - self.max_event_ms
        if self.external:
            return self.watermark_ms
        return self._raise_to(self.max_event_ms - self.allowed_lateness_ms)

    def tick(self, now_wall_ms: int) -> int | None:
        """LIVE mode: advance the watermark by wall time elapsed since the last message.

        Returns the watermark; unchanged until a message has been observed since start/restore.
        """
        if self.mode is not ClockMode.LIVE:
            raise ValueError("tick() needs ClockMode.LIVE; in EVENT mode only data (or advance_to) moves time")
        if self._offset_ms is None:
            return self.watermark_ms
        return self._raise_to(now_wall_ms - self._offset_ms - self.allowed_lateness_ms)

    def advance_to(self, watermark_ms: int) -> int:
        """Move the watermark to `watermark_ms` if that is later (e.g. a global simulation clock)."""
        return self._raise_to(watermark_ms)

    def _raise_to(self, candidate_ms: int) -> int:
        if self.watermark_ms is None or candidate_ms > self.watermark_ms:
            self.watermark_ms = candidate_ms
        return self.watermark_ms

    def snapshot(self) -> dict[str, Any]:
        """JSON-compatible state (mode, lateness, newest event time, watermark; not the offset)."""
        return {"mode": self.mode.value, "lateness_ms": self.allowed_lateness_ms,
                "max_event_ms": self.max_event_ms, "watermark_ms": self.watermark_ms}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> EventClock:
        clock = cls(ClockMode(state["mode"]), int(state["lateness_ms"]))
        clock.max_event_ms = state["max_event_ms"]
        clock.watermark_ms = state["watermark_ms"]
        return clock

