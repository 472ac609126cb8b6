"""Event time at the edge: `Watermark` aligns sources read at different paces, `FleetClock` judges
each vehicle's clock and keeps a fleet watermark that one vehicle cannot move.

Watermark — the one idle rule. A source (a topic partition) holds the watermark at the newest event
time it has delivered while it still has records to read (it is *lagging*: position below the fetch
high watermark, or not fetched yet). A source with nothing more to read is *idle* once its newest
time is more than `idle_after_ms` behind the newest of all sources (0: at once; None: never idle).
The watermark is the minimum over the sources that hold it; when none holds, the newest of all.
A lagging source that has delivered nothing yet holds it at NO_DATA. Sources running more than an
alignment window ahead of the watermark are to be paused while another source lags (`ahead`), so
state buffered while waiting for the slow source stays bounded.

FleetClock — forged clocks. Each vehicle's newest accepted event time is kept; the fleet watermark W
is the median of those newest times (recomputed once per batch, `advance`), so fewer than half of
the vehicles cannot move it however far their clocks run. Only vehicles heard from lately count: at
each `advance`, a vehicle whose newest record is older than the newest broker append time minus
`silent_after_ms` (limits.yaml) has parked and leaves the bulk (else a parked majority would hold W
back and the driving vehicles' records would be refused as future); and at most `max_vehicles` are
kept, the longest-silent dropped first, so memory does not grow with the ids a producer invents.
A dropped vehicle that comes back is judged against W alone until it is heard again. Record
timestamps can be set by producers (CreateTime), so one later than this host's clock plus
`MAX_HOST_SKEW_MS` moves no vehicle out of the bulk.

A record at event time t, appended by the broker at time a, is refused as
  * `future_timestamp` when t > a + max_ahead (ahead of the broker's own clock; a <= 0: unknown), or
    t > R + max_ahead with R = W once known, else the median of the newest times known so far (in
    the first batch; a lone first vehicle is its own reference, bounded by the append time alone);
  * `stale_timestamp` when t < max(own newest, W) - max_behind.
Bound: W never exceeds the newest accepted time of the median vehicle, and every accepted time is at
most a + max_ahead, so a forged clock moves neither W nor any other vehicle's judgement.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable

from fleetloop import codec

NO_DATA = -1  # the watermark a lagging source holds before it delivered anything
MAX_HOST_SKEW_MS = 60_000  # how far a record's timestamp may run ahead of this host's clock and count


class Watermark:
    """Event-time watermark (epoch ms) over sources; see the module doc for the idle rule."""

    def __init__(self, idle_after_ms: int | None = 0) -> None:
        self.idle_after_ms = idle_after_ms
        self.newest: dict[Hashable, int] = {}

    def observe(self, source: Hashable, event_ms: int) -> None:
        """Account for one record of `source` at `event_ms`."""
        if event_ms > self.newest.get(source, NO_DATA):
            self.newest[source] = event_ms

    def keep(self, sources: Iterable[Hashable]) -> None:
        """Forget every source not in `sources` (after a rebalance took them away)."""
        kept = set(sources)
        self.newest = {s: t for s, t in self.newest.items() if s in kept}

    def value(self, lagging: set, sources: Iterable[Hashable] | None = None) -> int | None:
        """The watermark over `sources` (default: every observed or lagging one), given the `lagging`
        sources (those with records still to read). None when none of them has delivered or lags."""
        scope = self._scope(lagging, sources)
        times = {s: self.newest[s] for s in scope if s in self.newest}
        holding = [times.get(s, NO_DATA) for s in scope if s in lagging]
        if not times:
            return NO_DATA if holding else None
        latest = max(times.values())
        if self.idle_after_ms is not None:
            holding += [t for s, t in times.items() if s not in lagging and t >= latest - self.idle_after_ms]
        else:
            holding += [t for s, t in times.items() if s not in lagging]
        return min(holding)

    def _scope(self, lagging: set, sources: Iterable[Hashable] | None) -> list:
        return [*self.newest, *(s for s in lagging if s not in self.newest)] if sources is None else list(sources)

    def ahead(self, align_ms: int, lagging: set, sources: Iterable[Hashable] | None = None) -> set:
        """Sources more than `align_ms` ahead of the watermark while some source lags (to pause)."""
        scope = self._scope(lagging, sources)
        if not lagging.intersection(scope):
            return set()
        watermark = self.value(lagging, scope)
        if watermark is None or watermark == NO_DATA:
            return set()
        return {s for s in scope if self.newest.get(s, NO_DATA) > watermark + align_ms}


class FleetClock:
    """Per-vehicle plausibility of event times and the fleet's bulk watermark (see module doc)."""

    def __init__(self, max_ahead_ms: int = codec.MAX_AHEAD_OF_WATERMARK_MS,
                 max_behind_ms: int = codec.MAX_BEHIND_WATERMARK_MS,
                 silent_after_ms: int = codec.LIMITS.time.silent_after_ms,
                 max_vehicles: int = codec.LIMITS.time.max_tracked_vehicles) -> None:
        self.max_ahead_ms = max_ahead_ms
        self.max_behind_ms = max_behind_ms
        self.silent_after_ms = silent_after_ms
        self.max_vehicles = max_vehicles
        self.newest: dict[str, int] = {}
        self.heard_ms: dict[str, int] = {}  # broker append time of each vehicle's newest record
        self.append_ms = 0      # newest broker append time seen; 0 while unknown
        self.watermark_ms = 0  # W, epoch ms; 0 until a batch was accepted

    def check(self, vehicle_id: str, event_ms: int, append_ms: int) -> None:
        """Raise codec.Rejected when `event_ms` of `vehicle_id`, appended at `append_ms`, is implausible."""
        if append_ms > 0 and event_ms > append_ms + self.max_ahead_ms:
            raise codec.Rejected("future_timestamp",
                                 f"{(event_ms - append_ms) / 1000:.0f} s ahead of the broker's append time")
        if self.append_ms < append_ms <= time.time() * 1000 + MAX_HOST_SKEW_MS:
            self.append_ms = append_ms
        own = self.newest.get(vehicle_id, 0)
        reference = self.watermark_ms or self._median()
        if reference and event_ms > reference + self.max_ahead_ms:
            raise codec.Rejected("future_timestamp", f"{(event_ms - reference) / 1000:.0f} s ahead of watermark")
        floor = max(own, self.watermark_ms)
        if floor and event_ms < floor - self.max_behind_ms:
            raise codec.Rejected("stale_timestamp", f"{(floor - event_ms) / 1000:.0f} s behind watermark")

    def observe(self, vehicle_id: str, event_ms: int, append_ms: int = 0) -> None:
        """Account for an accepted record appended by the broker at `append_ms` (0: unknown)."""
        if event_ms > self.newest.get(vehicle_id, 0):
            self.newest[vehicle_id] = event_ms
        append_ms = min(append_ms, self.append_ms) if self.append_ms else 0
        if append_ms > self.heard_ms.get(vehicle_id, 0):
            self.heard_ms[vehicle_id] = append_ms
        elif vehicle_id not in self.heard_ms:
            self.heard_ms[vehicle_id] = self.append_ms  # unknown append time: heard now

    def newest_of(self, vehicle_id: str) -> int:
        """The vehicle's newest accepted event time (0: none)."""
        return self.newest.get(vehicle_id, 0)

    def advance(self) -> int:
        """Recompute W, the median of the vehicles' newest times (call once per batch); returns it."""
        self._forget_silent()
        self.watermark_ms = max(self.watermark_ms, self._median())
        return self.watermark_ms

    def _forget_silent(self) -> None:
        if self.append_ms > 0:
            cutoff = self.append_ms - self.silent_after_ms
            for vehicle in [v for v, heard in self.heard_ms.items() if heard < cutoff]:
                del self.heard_ms[vehicle]
                self.newest.pop(vehicle, None)
        if len(self.newest) > self.max_vehicles:
            keep = sorted(self.newest, key=lambda v: (self.heard_ms.get(v, 0), self.newest[v]))
            for vehicle in keep[:len(self.newest) - self.max_vehicles]:
                del self.newest[vehicle]
                self.heard_ms.pop(vehicle, None)

    def _median(self) -> int:
        """The (lower) median of the vehicles' newest times; 0 with none."""
        if not self.newest:
            return 0
        times = sorted(self.newest.values())
        return times[(len(times) - 1) // 2]
