"""`SecondJoiner`: the per-vehicle-second join of heartbeat, pose and perception (pure, no I/O).

The three parts of a second arrive on three topics, in any order, possibly late. An entry
keyed (vehicle, second) collects them and becomes due

- at once when all three parts are there (complete), or
- when the event-time watermark passes the end of the second by `lateness_ms` (labelled with
  what is there; the missing inputs make their tags unknown, never false).

An emitted entry is retained for `retain_ms` more: a part arriving meanwhile makes it due again
and it is re-labelled with all its parts (the label table keeps the last insert). A part older
than that is `too_late`.

Crash safety: `held_offsets()` names, per partition, the offset of the oldest record whose
second is still pending (not yet emitted). The consumer commits no further than that, so after
a crash every part of every pending second is replayed; records of already-emitted seconds may
be replayed too, and the service guards against them overwriting a fuller row (see
services/label_indexer/service.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetloop.bus.watermark import NO_DATA, Watermark

KINDS = ("heartbeat", "pose", "perception")
Position = tuple[str, int]  # (topic, partition)


@dataclass
class Entry:
    """One vehicle-second: its parts (payload kind -> protobuf payload) and where they came from."""

    vehicle_id: str
    second_ms: int
    parts: dict[str, Any] = field(default_factory=dict)
    offsets: dict[Position, int] = field(default_factory=dict)
    emitted: bool = False
    due: bool = False

    @property
    def complete(self) -> bool:
        return len(self.parts) == len(KINDS)


class TooLate(Exception):
    """A part for a second that was emitted and forgotten (older than the retention)."""


class SecondJoiner:
    """Joins parts per (vehicle, second) and decides when each second is labelled.

    lateness_ms: how long past a second's end the watermark waits for missing parts.
    retain_ms: how long past a second's end an emitted entry is kept for re-labelling.
    align_ms: a partition more than this ahead of the slowest unread one should be paused.
    """

    def __init__(self, lateness_ms: int, retain_ms: int, align_ms: int) -> None:
        if not 0 <= lateness_ms <= retain_ms:
            raise ValueError("need 0 <= lateness_ms <= retain_ms")
        self.lateness_ms = lateness_ms
        self.retain_ms = retain_ms
        self.align_ms = align_ms
        self.entries: dict[tuple[str, int], Entry] = {}
        self.sources = Watermark(idle_after_ms=0)
        self.lagging: set[Position] = set()

    @property
    def watermark_ms(self) -> int:
        """Event time up to which the input is believed complete (0 before any input).

        The edge's one idle rule (fleetloop.bus.watermark.Watermark, idle at once): partitions with
        records not yet read (`lagging`, the consumer's, refreshed before each batch) hold it at the
        newest event they delivered, so a backlog read faster on one topic or partition than another
        does not time seconds out; caught-up partitions do not hold it. Memory stays bounded because
        the consumer pauses the partitions that run ahead (`ahead()`, watermark alignment).
        """
        value = self.sources.value(self.lagging)
        return 0 if value is None or value == NO_DATA else value

    def ahead(self) -> set[Position]:
        """Partitions more than `align_ms` ahead of the watermark (to pause until it catches up)."""
        return self.sources.ahead(self.align_ms, self.lagging)

    def add(self, kind: str, vehicle_id: str, event_ms: int, payload: Any, position: Position, offset: int) -> None:
        """Take one part. Raises TooLate for a part of a second emitted and forgotten."""
        if kind not in KINDS:
            raise ValueError(f"unknown part {kind!r}")
        second_ms = event_ms - event_ms % 1000
        key = (vehicle_id, second_ms)
        entry = self.entries.get(key)
        if entry is None:
            if second_ms + 1000 + self.retain_ms < self.watermark_ms:
                raise TooLate(f"second {second_ms} is {self.watermark_ms - second_ms - 1000} ms behind the watermark")
            entry = self.entries[key] = Entry(vehicle_id, second_ms)
        entry.parts[kind] = payload
        if not entry.emitted:
            entry.offsets[position] = min(offset, entry.offsets.get(position, offset))
        entry.due = entry.due or entry.complete or entry.emitted
        self.sources.observe(position, event_ms)

    def take_due(self) -> list[Entry]:
        """Entries to (re-)label now, in (vehicle, second) order; marks them emitted.

        Also forgets emitted entries older than the retention.
        """
        watermark = self.watermark_ms
        due: list[Entry] = []
        forget: list[tuple[str, int]] = []
        for key, entry in self.entries.items():
            end_ms = entry.second_ms + 1000
            if entry.due or (not entry.emitted and end_ms + self.lateness_ms <= watermark):
                due.append(entry)
                entry.emitted, entry.due = True, False
                entry.offsets.clear()
            elif entry.emitted and end_ms + self.retain_ms < watermark:
                forget.append(key)
        for key in forget:
            del self.entries[key]
        return sorted(due, key=lambda e: (e.vehicle_id, e.second_ms))

    def held_offsets(self) -> dict[Position, int]:
        """Per partition, the oldest offset whose second is still pending (commit no further)."""
        held: dict[Position, int] = {}
        for entry in self.entries.values():
            for position, offset in entry.offsets.items():
                held[position] = min(offset, held.get(position, offset))
        return held

    @property
    def pending(self) -> int:
        return sum(not e.emitted for e in self.entries.values())
