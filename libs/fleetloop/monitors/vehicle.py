"""Per-vehicle monitors: OFFLINE / RECOVERED and stop-and-not-go (pure, event time).

`VehicleMonitor` holds one small record per vehicle and needs only that vehicle's heartbeats,
so it runs on a stream keyed by vehicle id (any partitioning by vehicle works). Time moves
only through `advance(watermark_ms)`; the caller (normally `FleetMonitor`) owns the clock.
"""

from __future__ import annotations

import heapq
from typing import Any

from fleetloop.monitors.alerts import (
    OPEN,
    RESOLVED,
    Alert,
    make_alert,
    offline_alert_id,
    stop_alert_id,
)
from fleetloop.monitors.config import MonitorConfig
from fleetloop.v1 import alerts_pb2, common_pb2

_RUNNING = common_pb2.TASK_STATE_RUNNING
# _Vehicle.offline is _ONLINE, _SILENT (quiet but not alerted: parked, or never heard yet) or the
# event time (ms > 0) its OFFLINE alert was raised.
_ONLINE, _SILENT = 0, -1


class _Vehicle:
    __slots__ = ("last_seen_ms", "timeout_ms", "queued_ms", "park", "city", "running", "parked_idle",
                 "offline", "stop_start_ms", "stop_x", "stop_y", "stop_level", "stop_opened_ms")

    def __init__(self, timeout_ms: int) -> None:
        self.last_seen_ms = 0
        self.timeout_ms = timeout_ms
        self.queued_ms: int | None = None    # deadline of this vehicle's live entry in the heap
        self.park = ""
        self.city = ""
        self.running = False
        self.parked_idle = False
        self.offline = _ONLINE
        self.stop_start_ms: int | None = None
        self.stop_x = 0.0
        self.stop_y = 0.0
        self.stop_level = 0                  # escalation steps reached; 0 = nothing raised yet
        self.stop_opened_ms = 0


class VehicleMonitor:
    """OFFLINE after N expected heartbeat periods of silence; RECOVERED on the next heartbeat;
    one escalating STOP_NOT_GO alert per stop episode.

    Inputs: `on_heartbeat(vehicle_id, event_ms, heartbeat)` in per-vehicle event-time order
    (older or duplicate heartbeats of a vehicle are ignored, which makes replays harmless) and
    `advance(watermark_ms)`. Outputs: lists of Alert updates (see fleetloop.v1.alerts_pb2).
    Positions are the heartbeat's local map frame `x_m`, `y_m` in metres.
    """

    def __init__(self, config: MonitorConfig) -> None:
        self._config = config
        self._default_timeout_ms = config.offline.timeout_ms(config.offline.default_rate_hz)
        self._stop_r2 = config.stop.radius_m ** 2
        self._vehicles: dict[str, _Vehicle] = {}
        self._deadlines: list[tuple[int, str]] = []  # min-heap; at most one live entry per vehicle
        self._watermark_ms: int | None = None
        self._dirty: set[str] = set()

    @property
    def watermark_ms(self) -> int | None:
        return self._watermark_ms

    def on_heartbeat(self, vehicle_id: str, event_ms: int, hb: common_pb2.Heartbeat) -> list[Alert]:
        """Account for one heartbeat (event time `event_ms`, epoch ms). Returns RECOVERED and
        stop-and-not-go updates it causes; timeouts come from `advance`."""
        v = self._vehicles.get(vehicle_id)
        alerts: list[Alert] = []
        if v is None:
            v = self._vehicles[vehicle_id] = _Vehicle(self._default_timeout_ms)
            self._queue(vehicle_id, v, event_ms + v.timeout_ms)
        elif event_ms <= v.last_seen_ms:
            return alerts
        elif v.offline != _ONLINE:
            if v.offline > 0:
                alerts.append(self._recovered(vehicle_id, v, event_ms))
            v.offline = _ONLINE
            self._queue(vehicle_id, v, event_ms + v.timeout_ms)
        elif event_ms - v.last_seen_ms > v.timeout_ms and not (
                self._config.offline.suppress_when_parked and v.parked_idle):
            # The outage shows in the vehicle's own data, but the watermark never reached its
            # deadline before it came back (a sharded agent's watermark waits for its slowest
            # partition). Raise the same OFFLINE, at its deadline, and the RECOVERED.
            v.offline = v.last_seen_ms + v.timeout_ms
            alerts.append(self._offline(vehicle_id, v, v.offline))
            alerts.append(self._recovered(vehicle_id, v, event_ms))
            v.offline = _ONLINE
            self._queue(vehicle_id, v, event_ms + v.timeout_ms)
        self._dirty.add(vehicle_id)
        v.last_seen_ms = event_ms
        running = hb.task_state == _RUNNING
        v.running = running
        v.parked_idle = hb.parked and not running
        if hb.park != v.park or hb.city != v.city:
            v.park, v.city = hb.park, hb.city
        if running and hb.speed_mps < self._config.stop.speed_max_mps:
            if v.stop_start_ms is None:
                v.stop_start_ms, v.stop_x, v.stop_y = event_ms, hb.x_m, hb.y_m
            elif (hb.x_m - v.stop_x) ** 2 + (hb.y_m - v.stop_y) ** 2 > self._stop_r2:
                # Crept out of the stop circle: that stop is over, a new one may begin here.
                self._end_stop(vehicle_id, v, event_ms, "moved", alerts)
                v.stop_start_ms, v.stop_x, v.stop_y = event_ms, hb.x_m, hb.y_m
            levels = self._config.stop.levels
            if v.stop_level < len(levels) and event_ms - v.stop_start_ms >= levels[v.stop_level].after_ms:
                alerts.append(self._escalate(vehicle_id, v, event_ms))
        elif v.stop_start_ms is not None:
            self._end_stop(vehicle_id, v, event_ms, "moved" if running else "task not running", alerts)
        return alerts

    def advance(self, watermark_ms: int) -> list[Alert]:
        """Move event time to `watermark_ms` (never backwards) and raise OFFLINE for every
        vehicle whose last heartbeat is at least its timeout older than the watermark."""
        if self._watermark_ms is not None and watermark_ms <= self._watermark_ms:
            return []
        self._watermark_ms = watermark_ms
        heap = self._deadlines
        alerts: list[Alert] = []
        while heap and heap[0][0] <= watermark_ms:
            deadline, vehicle_id = heapq.heappop(heap)
            v = self._vehicles.get(vehicle_id)
            if v is None or v.queued_ms != deadline:
                continue  # superseded entry
            due = v.last_seen_ms + v.timeout_ms
            if due > watermark_ms:  # heard from since the entry was queued: look again later
                self._queue(vehicle_id, v, due)
                continue
            v.queued_ms = None
            self._dirty.add(vehicle_id)
            if self._config.offline.suppress_when_parked and v.parked_idle:
                v.offline = _SILENT
                continue
            v.offline = v.last_seen_ms + v.timeout_ms  # the event time it went offline (see _offline)
            alerts.append(self._offline(vehicle_id, v, watermark_ms))
        return alerts

    def _offline(self, vehicle_id: str, v: _Vehicle, at_ms: int) -> Alert:
        """OFFLINE found at watermark `at_ms`. It opens at the deadline, the event time the silence
        crossed the threshold, however coarsely the caller advances the watermark."""
        deadline_ms = v.last_seen_ms + v.timeout_ms
        return make_alert(
            alert_id=offline_alert_id(vehicle_id, v.last_seen_ms),
            kind=alerts_pb2.ALERT_KIND_OFFLINE,
            severity=alerts_pb2.ALERT_SEVERITY_CRITICAL if v.running else alerts_pb2.ALERT_SEVERITY_WARNING,
            level=1, revision=1, state=OPEN, opened_ms=deadline_ms, event_ms=at_ms,
            incident_start_ms=v.last_seen_ms, vehicle_id=vehicle_id, park=v.park, city=v.city,
            summary=(f"{vehicle_id} offline: no heartbeat for {(at_ms - v.last_seen_ms) / 1000:.0f} s"
                     f"{' while on a running task' if v.running else ''}"),
            details={"last_seen_ms": str(v.last_seen_ms), "timeout_s": f"{v.timeout_ms / 1000:g}",
                     "task_running": str(v.running).lower()},
        )

    def set_expected_rate(self, vehicle_id: str, rate_hz: float) -> None:
        """Declare that `vehicle_id` heartbeats at `rate_hz` (its offline timeout follows)."""
        timeout_ms = self._config.offline.timeout_ms(rate_hz)
        v = self._vehicles.get(vehicle_id)
        if v is None:
            v = self._vehicles[vehicle_id] = _Vehicle(timeout_ms)
            v.offline = _SILENT  # not heard yet: nothing to time out until its first heartbeat
            return
        v.timeout_ms = timeout_ms
        self._dirty.add(vehicle_id)
        if v.queued_ms is not None and v.last_seen_ms + timeout_ms < v.queued_ms:
            self._queue(vehicle_id, v, v.last_seen_ms + timeout_ms)

    def vehicle_scope(self, vehicle_id: str) -> tuple[str, str] | None:
        """(park, city) of the vehicle's latest heartbeat, or None if never heard."""
        v = self._vehicles.get(vehicle_id)
        return None if v is None or not v.last_seen_ms else (v.park, v.city)

    def is_offline(self, vehicle_id: str) -> bool:
        """Whether an OFFLINE alert is open for the vehicle."""
        v = self._vehicles.get(vehicle_id)
        return v is not None and v.offline > 0

    # -- state -------------------------------------------------------------------------------

    def pop_dirty(self) -> set[str]:
        """Vehicle ids whose state changed since the last call (to write back to a table)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def snapshot_vehicle(self, vehicle_id: str) -> dict[str, Any] | None:
        """One vehicle's state as a compact JSON-compatible dict (None if unknown)."""
        v = self._vehicles.get(vehicle_id)
        if v is None:
            return None
        state: dict[str, Any] = {"t": v.last_seen_ms, "to": v.timeout_ms, "pk": v.park, "c": v.city,
                                 "r": v.running, "pi": v.parked_idle, "off": v.offline}
        if v.stop_start_ms is not None:
            state["s"] = [v.stop_start_ms, v.stop_x, v.stop_y, v.stop_level, v.stop_opened_ms]
        return state

    def restore_vehicle(self, vehicle_id: str, state: dict[str, Any]) -> None:
        """Replace one vehicle's state with an `snapshot_vehicle` dict (e.g. from a faust table)."""
        v = _Vehicle(int(state["to"]))
        v.last_seen_ms, v.park, v.city = int(state["t"]), state["pk"], state["c"]
        v.running, v.parked_idle, v.offline = bool(state["r"]), bool(state["pi"]), int(state["off"])
        stop = state.get("s")
        if stop is not None:
            v.stop_start_ms, v.stop_x, v.stop_y = int(stop[0]), float(stop[1]), float(stop[2])
            v.stop_level, v.stop_opened_ms = int(stop[3]), int(stop[4])
        self._vehicles[vehicle_id] = v
        if v.offline == _ONLINE:
            self._queue(vehicle_id, v, v.last_seen_ms + v.timeout_ms)

    def snapshot(self) -> dict[str, Any]:
        """The whole monitor as a JSON-compatible dict."""
        return {"watermark_ms": self._watermark_ms,
                "vehicles": {vid: self.snapshot_vehicle(vid) for vid in self._vehicles}}

    @classmethod
    def restore(cls, config: MonitorConfig, state: dict[str, Any]) -> VehicleMonitor:
        """A monitor continuing from `snapshot()`: open incidents stay open, none is raised twice."""
        monitor = cls(config)
        for vehicle_id, vehicle_state in state["vehicles"].items():
            monitor.restore_vehicle(vehicle_id, vehicle_state)
        monitor._watermark_ms = state["watermark_ms"]
        return monitor

    # -- internals ---------------------------------------------------------------------------

    def _queue(self, vehicle_id: str, v: _Vehicle, deadline_ms: int) -> None:
        v.queued_ms = deadline_ms
        heapq.heappush(self._deadlines, (deadline_ms, vehicle_id))

    def _recovered(self, vehicle_id: str, v: _Vehicle, event_ms: int) -> Alert:
        outage_s = (event_ms - v.last_seen_ms) / 1000
        return make_alert(
            alert_id=offline_alert_id(vehicle_id, v.last_seen_ms), kind=alerts_pb2.ALERT_KIND_RECOVERED,
            severity=alerts_pb2.ALERT_SEVERITY_INFO, level=1, revision=2, state=RESOLVED,
            opened_ms=v.offline, event_ms=event_ms, incident_start_ms=v.last_seen_ms,
            vehicle_id=vehicle_id, park=v.park, city=v.city,
            summary=f"{vehicle_id} back online after {outage_s:.0f} s without heartbeat",
            details={"outage_s": f"{outage_s:.3f}", "last_seen_ms": str(v.last_seen_ms)},
        )

    def _escalate(self, vehicle_id: str, v: _Vehicle, event_ms: int) -> Alert:
        assert v.stop_start_ms is not None
        levels = self._config.stop.levels
        stopped_ms = event_ms - v.stop_start_ms
        while v.stop_level < len(levels) and stopped_ms >= levels[v.stop_level].after_ms:
            v.stop_level += 1
        if not v.stop_opened_ms:
            v.stop_opened_ms = event_ms
        return self._stop_alert(vehicle_id, v, event_ms, OPEN, v.stop_level,
                                f"{vehicle_id} stopped {stopped_ms / 60000:.1f} min on a running task",
                                {"stopped_s": f"{stopped_ms / 1000:.0f}"})

    def _end_stop(self, vehicle_id: str, v: _Vehicle, event_ms: int, reason: str, alerts: list[Alert]) -> None:
        assert v.stop_start_ms is not None
        if v.stop_level:
            stopped_ms = event_ms - v.stop_start_ms
            alerts.append(self._stop_alert(
                vehicle_id, v, event_ms, RESOLVED, v.stop_level + 1,
                f"{vehicle_id} stop cleared after {stopped_ms / 60000:.1f} min ({reason})",
                {"stopped_s": f"{stopped_ms / 1000:.0f}", "cleared_by": reason}))
        v.stop_start_ms, v.stop_level, v.stop_opened_ms = None, 0, 0

    def _stop_alert(self, vehicle_id: str, v: _Vehicle, event_ms: int, state: int, revision: int,
                    summary: str, details: dict[str, str]) -> Alert:
        assert v.stop_start_ms is not None
        level = self._config.stop.levels[v.stop_level - 1]
        details.update({"stop_x_m": f"{v.stop_x:.1f}", "stop_y_m": f"{v.stop_y:.1f}"})
        return make_alert(
            alert_id=stop_alert_id(vehicle_id, v.stop_start_ms), kind=alerts_pb2.ALERT_KIND_STOP_NOT_GO,
            severity=level.severity, level=v.stop_level, revision=revision, state=state,
            opened_ms=v.stop_opened_ms, event_ms=event_ms, incident_start_ms=v.stop_start_ms,
            vehicle_id=vehicle_id, park=v.park, city=v.city, summary=summary, details=details,
        )
