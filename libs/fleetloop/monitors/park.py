"""Park-level monitors: PARK_STALL and ERROR_BURST (pure, event time).

`ParkMonitor` needs every heartbeat and error event of a park, so it runs on a stream keyed by
park (or on the whole fleet at once). A park-level scope is the heartbeat's `park`, or
"city:<city>" for vehicles outside any park. Error events carry no park: the vehicle's scope is
taken from its latest heartbeat seen here, so route a vehicle's events with its heartbeats.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from fleetloop.monitors.alerts import (
    OPEN,
    RESOLVED,
    Alert,
    error_burst_alert_id,
    make_alert,
    park_stall_alert_id,
)
from fleetloop.monitors.config import MonitorConfig
from fleetloop.v1 import alerts_pb2, common_pb2

_RUNNING = common_pb2.TASK_STATE_RUNNING
SWEEP_MS = 1000  # how often (event time) advance() re-checks stale vehicles and closing bursts
_MAX_LISTED = 50  # vehicle ids listed in a park alert's details


def scope_of(park: str, city: str) -> str:
    """The park-level scope of a heartbeat: its park, else "city:<city>", else ""."""
    if park:
        return park
    return f"city:{city}" if city else ""


class _ParkVehicle:
    __slots__ = ("scope", "last_seen_ms", "software_version", "running", "stop_start_ms", "stop_x", "stop_y",
                 "stalled")

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.last_seen_ms = 0
        self.software_version = ""
        self.running = False
        self.stop_start_ms: int | None = None
        self.stop_x = 0.0
        self.stop_y = 0.0
        self.stalled = False


class _Stall:
    """An open PARK_STALL incident."""

    __slots__ = ("alert_id", "opened_ms", "start_ms", "peak", "cause", "revision")

    def __init__(self, alert_id: str, opened_ms: int, start_ms: int, peak: int, cause: str,
                 revision: int = 1) -> None:
        self.alert_id, self.opened_ms, self.start_ms, self.peak, self.cause = (
            alert_id, opened_ms, start_ms, peak, cause)
        self.revision = revision  # of the OPEN update; the RESOLVED one is revision + 1


class _Burst:
    """An open ERROR_BURST incident."""

    __slots__ = ("alert_id", "opened_ms", "start_ms", "threshold", "peak")

    def __init__(self, alert_id: str, opened_ms: int, start_ms: int, threshold: int, peak: int) -> None:
        self.alert_id, self.opened_ms, self.start_ms, self.threshold, self.peak = (
            alert_id, opened_ms, start_ms, threshold, peak)


class _CodeWindow:
    """Recent events of one error code in one scope, plus its exponentially weighted baseline."""

    __slots__ = ("events", "base_count", "base_ms", "burst")

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []  # (event ms, message id), sorted; all inside the window
        self.base_count = 0.0                     # decayed count of older events, as of base_ms
        self.base_ms = 0
        self.burst: _Burst | None = None


class _Park:
    __slots__ = ("scope", "park", "city", "first_seen_ms", "vehicles", "n_stalled", "stall", "codes",
                 "last_stall")

    def __init__(self, scope: str, park: str, city: str, first_seen_ms: int) -> None:
        self.scope, self.park, self.city, self.first_seen_ms = scope, park, city, first_seen_ms
        self.vehicles: dict[str, _ParkVehicle] = {}
        self.n_stalled = 0
        self.stall: _Stall | None = None
        # The stall resolved last (stall, resolved ms): one that flares up again within a window
        # continues that incident under its id instead of opening a second alert.
        self.last_stall: tuple[_Stall, int] | None = None
        self.codes: dict[str, _CodeWindow] = {}


class ParkMonitor:
    """One PARK_STALL alert when enough vehicles of a park stall within one window, with a
    suspected cause; one ERROR_BURST alert per burst of one error code well above its baseline.

    Inputs: `on_heartbeat(vehicle_id, event_ms, heartbeat)`, `on_error_code(vehicle_id, event_ms,
    module, code, message_id)` and `advance(watermark_ms)`; all times epoch ms, event time.
    Outputs: lists of Alert updates.
    """

    def __init__(self, config: MonitorConfig) -> None:
        self._config = config
        self._stop_r2 = config.stop.radius_m ** 2
        self._parks: dict[str, _Park] = {}
        self._vehicles: dict[str, _ParkVehicle] = {}
        self._watermark_ms: int | None = None
        self._next_sweep_ms: int | None = None
        self._dirty: set[str] = set()
        self.unscoped_error_events = 0  # error events from vehicles with no heartbeat seen here yet

    # -- inputs ------------------------------------------------------------------------------

    def on_heartbeat(self, vehicle_id: str, event_ms: int, hb: common_pb2.Heartbeat) -> list[Alert]:
        """Track the vehicle's park, software version and stall; may open or clear a PARK_STALL."""
        scope = scope_of(hb.park, hb.city)
        if not scope:
            return []
        rec = self._vehicles.get(vehicle_id)
        if rec is not None and event_ms <= rec.last_seen_ms:
            return []
        alerts: list[Alert] = []
        if rec is None or rec.scope != scope:
            if rec is not None:
                self._leave(vehicle_id, rec)
            rec = self._vehicles[vehicle_id] = _ParkVehicle(scope)
        park = self._parks.get(scope)
        if park is None:
            park = self._parks[scope] = _Park(scope, hb.park, hb.city, event_ms)
        park.vehicles[vehicle_id] = rec
        self._dirty.add(scope)
        rec.last_seen_ms = event_ms
        rec.software_version = hb.software_version
        running = hb.task_state == _RUNNING
        rec.running = running
        if running and hb.speed_mps < self._config.stop.speed_max_mps:
            if (rec.stop_start_ms is None
                    or (hb.x_m - rec.stop_x) ** 2 + (hb.y_m - rec.stop_y) ** 2 > self._stop_r2):
                rec.stop_start_ms, rec.stop_x, rec.stop_y = event_ms, hb.x_m, hb.y_m
        else:
            rec.stop_start_ms = None
        stalled = (rec.stop_start_ms is not None
                   and event_ms - rec.stop_start_ms >= self._config.park_stall.vehicle_stall_ms)
        if stalled != rec.stalled:
            rec.stalled = stalled
            park.n_stalled += 1 if stalled else -1
            now = event_ms if self._watermark_ms is None else max(event_ms, self._watermark_ms)
            self._evaluate_stall(park, now, alerts)
        return alerts

    def on_error_code(self, vehicle_id: str, event_ms: int, module: str, code: str,
                      message_id: str = "") -> list[Alert]:
        """Count one ERROR_CODE event in the vehicle's scope; may open an ERROR_BURST.

        `message_id` (the Envelope's) makes a re-delivered event inside the window count once.
        """
        rec = self._vehicles.get(vehicle_id)
        if rec is None:
            self.unscoped_error_events += 1
            return []
        park = self._parks[rec.scope]
        key = f"{module}/{code}"
        window = park.codes.get(key)
        if window is None:
            window = park.codes[key] = _CodeWindow()
        if message_id and any(mid == message_id for _, mid in window.events):
            return []
        self._dirty.add(park.scope)
        bisect.insort(window.events, (event_ms, message_id))
        latest_ms = window.events[-1][0]
        self._fold(window, latest_ms - self._config.error_burst.window_ms)
        count = len(window.events)
        if window.burst is not None:
            window.burst.peak = max(window.burst.peak, count)
            return []
        threshold, expected = self._burst_threshold(park, window, latest_ms)
        if threshold is None or count < threshold:
            return []
        start_ms = window.events[0][0]
        window.burst = _Burst(error_burst_alert_id(park.scope, key, start_ms), latest_ms, start_ms, threshold,
                              count)
        window_min = self._config.error_burst.window_ms / 60000
        return [make_alert(
            alert_id=window.burst.alert_id, kind=alerts_pb2.ALERT_KIND_ERROR_BURST,
            severity=alerts_pb2.ALERT_SEVERITY_WARNING, level=1, revision=1, state=OPEN,
            opened_ms=latest_ms, event_ms=latest_ms, incident_start_ms=start_ms, park=park.park, city=park.city,
            summary=(f"{count} x error {key} in {park.scope} within {window_min:g} min "
                     f"(usual {expected:.1f} per {window_min:g} min)"),
            details={"module": module, "code": code, "count": str(count), "threshold": str(threshold),
                     "baseline_per_window": f"{expected:.3f}"},
        )]

    def advance(self, watermark_ms: int) -> list[Alert]:
        """Move event time to `watermark_ms`; once per SWEEP_MS of event time, drop stale
        vehicles from stall counts and close bursts whose window has emptied."""
        if self._watermark_ms is not None and watermark_ms <= self._watermark_ms:
            return []
        self._watermark_ms = watermark_ms
        if self._next_sweep_ms is not None and watermark_ms < self._next_sweep_ms:
            return []
        self._next_sweep_ms = watermark_ms + SWEEP_MS
        alerts: list[Alert] = []
        floor = self._config.park_stall.min_vehicles_floor
        for park in self._parks.values():
            if park.stall is not None or park.n_stalled >= floor:
                self._evaluate_stall(park, watermark_ms, alerts)
            if park.codes:
                self._sweep_codes(park, watermark_ms, alerts)
        return alerts

    def park_of(self, vehicle_id: str) -> str | None:
        """The scope of the vehicle's latest heartbeat seen here, or None."""
        rec = self._vehicles.get(vehicle_id)
        return None if rec is None else rec.scope

    # -- park stall --------------------------------------------------------------------------

    def _evaluate_stall(self, park: _Park, now_ms: int, alerts: list[Alert]) -> None:
        cfg = self._config.park_stall
        fresh_after = now_ms - cfg.stale_after_ms
        stalled: list[tuple[int, str, _ParkVehicle]] = []
        moving: list[_ParkVehicle] = []
        active = 0
        for vehicle_id, rec in park.vehicles.items():
            if rec.last_seen_ms < fresh_after or not rec.running:
                continue
            active += 1
            if rec.stalled:
                assert rec.stop_start_ms is not None
                stalled.append((rec.stop_start_ms, vehicle_id, rec))
            elif rec.stop_start_ms is None:
                moving.append(rec)
        if park.stall is not None:
            if len(stalled) >= cfg.resolve_below:
                park.stall.peak = max(park.stall.peak, len(stalled))
                return
            alerts.append(self._stall_alert(park, now_ms, RESOLVED, park.stall.revision + 1, stalled, active,
                                            f"park stall in {park.scope} cleared after "
                                            f"{(now_ms - park.stall.opened_ms) / 60000:.1f} min"))
            park.last_stall = (park.stall, now_ms)
            park.stall = None
            return
        need = min(cfg.min_vehicles, max(cfg.min_vehicles_floor, math.ceil(cfg.min_fraction * active)))
        if len(stalled) < need:
            return
        stalled.sort()
        group = _densest_window(stalled, cfg.window_ms)
        if len(group) < need:
            return
        cause = _suspected_cause([rec for _, _, rec in group], moving)
        if park.last_stall is not None and now_ms - park.last_stall[1] <= cfg.window_ms:
            previous = park.last_stall[0]  # flapping: the same incident again, not a new alert
            park.stall = _Stall(previous.alert_id, previous.opened_ms, previous.start_ms,
                                max(previous.peak, len(group)), cause, previous.revision + 2)
        else:
            park.stall = _Stall(park_stall_alert_id(park.scope, group[0][0]), now_ms, group[0][0], len(group),
                                cause)
        alerts.append(self._stall_alert(
            park, now_ms, OPEN, park.stall.revision, group, active,
            f"{len(group)} of {active} active vehicles stalled in {park.scope} within "
            f"{cfg.window_ms / 60000:g} min; suspected {cause}"))

    def _stall_alert(self, park: _Park, now_ms: int, state: int, revision: int,
                     stalled: list[tuple[int, str, _ParkVehicle]], active: int, summary: str) -> Alert:
        stall = park.stall
        assert stall is not None
        ids = sorted(vehicle_id for _, vehicle_id, _ in stalled)
        versions = sorted({rec.software_version for _, _, rec in stalled})
        return make_alert(
            alert_id=stall.alert_id, kind=alerts_pb2.ALERT_KIND_PARK_STALL,
            severity=alerts_pb2.ALERT_SEVERITY_CRITICAL, level=1, revision=revision, state=state,
            opened_ms=stall.opened_ms, event_ms=now_ms, incident_start_ms=stall.start_ms,
            park=park.park, city=park.city, suspected_cause=stall.cause, summary=summary,
            details={"stalled": str(len(stalled)), "active": str(active), "peak_stalled": str(stall.peak),
                     "vehicles": ",".join(ids[:_MAX_LISTED]), "software_versions": ",".join(versions)},
        )

    def _leave(self, vehicle_id: str, rec: _ParkVehicle) -> None:
        old = self._parks.get(rec.scope)
        if old is not None and old.vehicles.pop(vehicle_id, None) is not None:
            old.n_stalled -= 1 if rec.stalled else 0
            self._dirty.add(old.scope)

    # -- error bursts ------------------------------------------------------------------------

    def _fold(self, window: _CodeWindow, before_ms: int) -> None:
        """Move events at or before `before_ms` out of the window into the baseline."""
        tau = self._config.error_burst.baseline_tau_ms
        events = window.events
        n = 0
        while n < len(events) and events[n][0] <= before_ms:
            t = events[n][0]
            if t >= window.base_ms:
                window.base_count = window.base_count * math.exp(-(t - window.base_ms) / tau) + 1.0
                window.base_ms = t
            else:
                window.base_count += math.exp(-(window.base_ms - t) / tau)
            n += 1
        if n:
            del events[:n]

    def _burst_threshold(self, park: _Park, window: _CodeWindow, now_ms: int) -> tuple[int | None, float]:
        """(count that makes a burst at `now_ms`, baseline count per window); None while the
        scope has less history than min_history before the window."""
        cfg = self._config.error_burst
        window_start = now_ms - cfg.window_ms
        history_ms = window_start - park.first_seen_ms
        if history_ms < cfg.min_history_ms:
            return None, 0.0
        exposure_ms = cfg.baseline_tau_ms * (1.0 - math.exp(-history_ms / cfg.baseline_tau_ms))
        decayed = window.base_count * math.exp(-max(0, window_start - window.base_ms) / cfg.baseline_tau_ms)
        expected = decayed / exposure_ms * cfg.window_ms
        return max(cfg.min_events, math.ceil(cfg.baseline_factor * expected)), expected

    def _sweep_codes(self, park: _Park, now_ms: int, alerts: list[Alert]) -> None:
        cfg = self._config.error_burst
        for key in list(park.codes):
            window = park.codes[key]
            self._fold(window, now_ms - cfg.window_ms)
            burst = window.burst
            if burst is not None and len(window.events) < math.ceil(burst.threshold * cfg.resolve_fraction):
                module, _, code = key.partition("/")
                alerts.append(make_alert(
                    alert_id=burst.alert_id, kind=alerts_pb2.ALERT_KIND_ERROR_BURST,
                    severity=alerts_pb2.ALERT_SEVERITY_WARNING, level=1, revision=2, state=RESOLVED,
                    opened_ms=burst.opened_ms, event_ms=now_ms, incident_start_ms=burst.start_ms,
                    park=park.park, city=park.city,
                    summary=f"error {key} burst in {park.scope} over (peak {burst.peak} in a window)",
                    details={"module": module, "code": code, "peak": str(burst.peak),
                             "threshold": str(burst.threshold)},
                ))
                window.burst = None
                self._dirty.add(park.scope)
            if not window.events and window.burst is None:
                decayed = window.base_count * math.exp(-max(0, now_ms - window.base_ms) / cfg.baseline_tau_ms)
                if decayed < 0.01:  # forgotten: an empty baseline is the same as none
                    del park.codes[key]

    # -- state -------------------------------------------------------------------------------

    def pop_dirty(self) -> set[str]:
        """Scopes whose state changed since the last call (to write back to a table)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def snapshot_park(self, scope: str) -> dict[str, Any] | None:
        """One scope's state (its vehicles, open stall, code windows) as a JSON-compatible dict."""
        park = self._parks.get(scope)
        if park is None:
            return None
        stall = park.stall
        return {
            "park": park.park, "city": park.city, "first": park.first_seen_ms,
            "vehicles": {vid: [r.last_seen_ms, r.software_version, r.running, r.stop_start_ms, r.stop_x,
                               r.stop_y, r.stalled] for vid, r in park.vehicles.items()},
            "stall": None if stall is None else [stall.alert_id, stall.opened_ms, stall.start_ms, stall.peak,
                                                 stall.cause, stall.revision],
            "last_stall": None if park.last_stall is None else [
                [park.last_stall[0].alert_id, park.last_stall[0].opened_ms, park.last_stall[0].start_ms,
                 park.last_stall[0].peak, park.last_stall[0].cause, park.last_stall[0].revision],
                park.last_stall[1]],
            "codes": {key: {"events": [list(e) for e in w.events], "base": [w.base_count, w.base_ms],
                            "burst": None if w.burst is None else [w.burst.alert_id, w.burst.opened_ms,
                                                                   w.burst.start_ms, w.burst.threshold,
                                                                   w.burst.peak]}
                      for key, w in park.codes.items()},
        }

    def restore_park(self, scope: str, state: dict[str, Any]) -> None:
        """Replace one scope's state with an `snapshot_park` dict (e.g. from a faust table)."""
        park = _Park(scope, state["park"], state["city"], int(state["first"]))
        for vehicle_id, (seen, version, running, stop_start, x, y, stalled) in state["vehicles"].items():
            rec = _ParkVehicle(scope)
            rec.last_seen_ms, rec.software_version, rec.running = int(seen), version, bool(running)
            rec.stop_start_ms = None if stop_start is None else int(stop_start)
            rec.stop_x, rec.stop_y, rec.stalled = float(x), float(y), bool(stalled)
            park.vehicles[vehicle_id] = rec
            park.n_stalled += rec.stalled
            previous = self._vehicles.get(vehicle_id)
            if previous is None or previous.last_seen_ms <= rec.last_seen_ms:
                self._vehicles[vehicle_id] = rec
        if state["stall"] is not None:
            park.stall = _Stall(*state["stall"])
        if state.get("last_stall") is not None:
            park.last_stall = (_Stall(*state["last_stall"][0]), int(state["last_stall"][1]))
        for key, w in state["codes"].items():
            window = park.codes[key] = _CodeWindow()
            window.events = [(int(t), mid) for t, mid in w["events"]]
            window.base_count, window.base_ms = float(w["base"][0]), int(w["base"][1])
            if w["burst"] is not None:
                window.burst = _Burst(*w["burst"])
        self._parks[scope] = park

    def snapshot(self) -> dict[str, Any]:
        """The whole monitor as a JSON-compatible dict."""
        return {"watermark_ms": self._watermark_ms, "next_sweep_ms": self._next_sweep_ms,
                "parks": {scope: self.snapshot_park(scope) for scope in self._parks}}

    @classmethod
    def restore(cls, config: MonitorConfig, state: dict[str, Any]) -> ParkMonitor:
        """A monitor continuing from `snapshot()`: open incidents stay open, none is raised twice."""
        monitor = cls(config)
        for scope, park_state in state["parks"].items():
            monitor.restore_park(scope, park_state)
        monitor._watermark_ms = state["watermark_ms"]
        monitor._next_sweep_ms = state["next_sweep_ms"]
        return monitor


def _densest_window(stalled: list[tuple[int, str, _ParkVehicle]],
                    window_ms: int) -> list[tuple[int, str, _ParkVehicle]]:
    """The largest run of stall entries (sorted by stop start) whose starts span <= window_ms;
    the earliest such run on ties."""
    best_lo, best_hi, lo = 0, 0, 0
    for hi in range(len(stalled)):
        while stalled[hi][0] - stalled[lo][0] > window_ms:
            lo += 1
        if hi + 1 - lo > best_hi - best_lo:
            best_lo, best_hi = lo, hi + 1
    return stalled[best_lo:best_hi]


def _suspected_cause(stalled: list[_ParkVehicle], moving: list[_ParkVehicle]) -> str:
    """Software/map if the stalled vehicles share one version no moving vehicle of the park runs;
    road works otherwise. With nobody moving there is nothing to compare against."""
    versions = {rec.software_version for rec in stalled}
    if len(versions) == 1:
        version = versions.pop()
        if version and not moving:
            return f"undetermined: every active vehicle is stalled (all on software version {version})"
        if version and all(rec.software_version != version for rec in moving):
            return f"software or map change (shared software version {version})"
    return "road works or closure"
