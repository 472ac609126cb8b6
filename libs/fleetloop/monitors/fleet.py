"""`FleetMonitor`: the clock plus the vehicle and park monitors behind one message-level API.

This is what a heartbeat-ingest agent calls with each decoded Envelope. It validates the
input, moves the event-time clock, feeds the monitors and returns the Alert updates to publish
on fleet.alerts.v1 (sinks keep the highest `revision` per `alert_id`).

Deployment shapes:
* one instance sees the whole fleet (embedded mode): `FleetMonitor(config, mode)`;
* sharded: per-vehicle monitors on the vehicle-keyed stream (`parks=False`), park monitors on a
  stream re-keyed by park (`vehicles=False`) carrying heartbeats and error events; the
  vehicle-keyed side knows each vehicle's park (`vehicle_scope`) to route its events.
"""

from __future__ import annotations

import math
from typing import Any

from fleetloop.monitors.alerts import Alert
from fleetloop.monitors.clock import ClockMode, EventClock
from fleetloop.monitors.config import MonitorConfig
from fleetloop.monitors.park import ParkMonitor
from fleetloop.monitors.vehicle import VehicleMonitor
from fleetloop.v1 import common_pb2

_ERROR_CODE = common_pb2.EVENT_KIND_ERROR_CODE
STATE_VERSION = 1


class MonitorInputError(ValueError):
    """A message the monitors refuse; `reason` is a machine-readable dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FleetMonitor:
    """OFFLINE/RECOVERED, STOP_NOT_GO, PARK_STALL and ERROR_BURST over one stream of Envelopes.

    `mode` ClockMode.EVENT: data time only (simulation, replay, tests). ClockMode.LIVE: every
    message needs its receiving wall time `wall_ms`, and `tick(now_wall_ms)` on a timer keeps
    event time moving through silence. All times are epoch milliseconds.
    """

    def __init__(self, config: MonitorConfig, mode: ClockMode, *, vehicles: bool = True, parks: bool = True,
                 external_watermark: bool = False) -> None:
        if not (vehicles or parks):
            raise ValueError("a FleetMonitor needs the vehicle monitors, the park monitors or both")
        self.config = config
        # external_watermark: the caller drives event time with advance() (see fleetloop.bus.Watermark).
        self.clock = EventClock(mode, config.clock.allowed_lateness_ms, external=external_watermark)
        self.vehicles: VehicleMonitor | None = VehicleMonitor(config) if vehicles else None
        self.parks: ParkMonitor | None = ParkMonitor(config) if parks else None

    @property
    def watermark_ms(self) -> int | None:
        """Current event-time watermark (None before any data)."""
        return self.clock.watermark_ms

    def on_envelope(self, envelope: common_pb2.Envelope, wall_ms: int | None = None) -> list[Alert]:
        """Feed one decoded Envelope. Heartbeats and vehicle events are monitored; other
        payloads only move the clock. Raises MonitorInputError for input to dead-letter."""
        payload = envelope.WhichOneof("payload")
        if payload == "heartbeat":
            return self.on_heartbeat(envelope.vehicle_id, envelope.event_time_ms, envelope.heartbeat, wall_ms)
        if payload == "event":
            return self.on_event(envelope.vehicle_id, envelope.event_time_ms, envelope.event, wall_ms,
                                 envelope.message_id)
        self._check(envelope.vehicle_id, envelope.event_time_ms, wall_ms)
        return self._advance(self.clock.observe(envelope.event_time_ms, wall_ms))

    def on_heartbeat(self, vehicle_id: str, event_ms: int, heartbeat: common_pb2.Heartbeat,
                     wall_ms: int | None = None) -> list[Alert]:
        """Feed one heartbeat of `vehicle_id` at event time `event_ms`; returns Alert updates."""
        self._check(vehicle_id, event_ms, wall_ms)
        # One test for all three: a NaN or infinity in any of them makes the sum non-finite.
        if not math.isfinite(heartbeat.speed_mps + heartbeat.x_m + heartbeat.y_m):
            raise MonitorInputError("non_finite_value", f"heartbeat of {vehicle_id}: speed or position not finite")
        alerts: list[Alert] = []
        if self.vehicles is not None:
            alerts += self.vehicles.on_heartbeat(vehicle_id, event_ms, heartbeat)
        if self.parks is not None:
            alerts += self.parks.on_heartbeat(vehicle_id, event_ms, heartbeat)
        alerts += self._advance(self.clock.observe(event_ms, wall_ms))
        return alerts

    def on_event(self, vehicle_id: str, event_ms: int, event: common_pb2.VehicleEvent,
                 wall_ms: int | None = None, message_id: str = "") -> list[Alert]:
        """Feed one VehicleEvent; ERROR_CODE events count toward error bursts."""
        self._check(vehicle_id, event_ms, wall_ms)
        alerts: list[Alert] = []
        if event.kind == _ERROR_CODE and self.parks is not None:
            alerts += self.parks.on_error_code(vehicle_id, event_ms, event.module, event.code, message_id)
        alerts += self._advance(self.clock.observe(event_ms, wall_ms))
        return alerts

    def advance(self, watermark_ms: int | None = None) -> list[Alert]:
        """Evaluate timeouts at `watermark_ms` (moved forward only), or at the clock's own
        watermark when None. Use it to drive the monitors from an external event-time clock."""
        if watermark_ms is not None:
            return self._advance(self.clock.advance_to(watermark_ms))
        return self._advance(self.clock.watermark_ms)

    def tick(self, now_wall_ms: int) -> list[Alert]:
        """LIVE mode: map the wall clock to event time (offset seen at the last message) and
        evaluate timeouts, so OFFLINE fires even when the whole fleet is silent."""
        return self._advance(self.clock.tick(now_wall_ms))

    def vehicle_scope(self, vehicle_id: str) -> tuple[str, str] | None:
        """(park, city) of the vehicle's latest heartbeat, or None (needs the vehicle monitors)."""
        return None if self.vehicles is None else self.vehicles.vehicle_scope(vehicle_id)

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue after a restart, as a JSON-compatible dict."""
        return {"version": STATE_VERSION, "clock": self.clock.snapshot(),
                "vehicles": None if self.vehicles is None else self.vehicles.snapshot(),
                "parks": None if self.parks is None else self.parks.snapshot()}

    @classmethod
    def restore(cls, config: MonitorConfig, state: dict[str, Any]) -> FleetMonitor:
        """Continue from `snapshot()`: open incidents neither re-raise nor get lost."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"monitor state version {state.get('version')!r} is not {STATE_VERSION}")
        clock = EventClock.restore(state["clock"])
        monitor = cls(config, clock.mode, vehicles=state["vehicles"] is not None, parks=state["parks"] is not None)
        monitor.clock = clock
        if state["vehicles"] is not None:
            monitor.vehicles = VehicleMonitor.restore(config, state["vehicles"])
        if state["parks"] is not None:
            monitor.parks = ParkMonitor.restore(config, state["parks"])
        return monitor

    def _check(self, vehicle_id: str, event_ms: int, wall_ms: int | None) -> None:
        if wall_ms is None and self.clock.mode is ClockMode.LIVE:
            raise ValueError("a LIVE FleetMonitor needs the receiving wall time (wall_ms) of every message")
        if not vehicle_id:
            raise MonitorInputError("missing_vehicle_id", "envelope has no vehicle_id")
        if event_ms <= 0:
            raise MonitorInputError("bad_event_time", f"event_time_ms {event_ms} of {vehicle_id} is not set")
        if wall_ms is not None and event_ms > wall_ms + self.config.clock.max_future_skew_ms:
            ahead_s = (event_ms - wall_ms) / 1000
            raise MonitorInputError("future_event_time",
                                    f"{vehicle_id}: event time {ahead_s:.0f} s ahead of the wall clock")

    def _advance(self, watermark_ms: int | None) -> list[Alert]:
        if watermark_ms is None:
            return []
        alerts: list[Alert] = []
        if self.vehicles is not None:
            alerts += self.vehicles.advance(watermark_ms)
        if self.parks is not None:
            alerts += self.parks.advance(watermark_ms)
        return alerts
