"""Synthetic single-vehicle drives with injected episodes, for trigger tests and benchmarks.

Pure and seeded. A `SyntheticDrive` holds per-sample columns (10 Hz) and per-second perception,
heartbeat task state and events; `envelopes()` turns it into the messages a vehicle would send, one
pose batch, one heartbeat and one perception summary per second, in event-time order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetloop.codec import POSE_DTYPES, pose_batch
from fleetloop.v1 import common_pb2

HZ = 10
PO = common_pb2.PerceivedObject


@dataclass
class SyntheticDrive:
    """One vehicle's drive: `speed_mps`, `accel_lon_mps2`, `yaw_rate_rps` (n = seconds × 10,),
    `task_state` and `objects`/`costs`/flags per second (seconds,), `events` as (t_ms, VehicleEvent),
    `window_min_ttc_s` the summaries' in-second minimum TTC by second index (unset elsewhere)."""

    vehicle_id: str
    start_ms: int
    seconds: int
    speed_mps: np.ndarray
    accel_lon_mps2: np.ndarray
    yaw_rate_rps: np.ndarray
    task_state: np.ndarray
    objects: list[list[common_pb2.PerceivedObject]]
    costs: list[list[float]]
    maneuver: list[str]
    unprotected_turn: np.ndarray
    events: list[tuple[int, common_pb2.VehicleEvent]] = field(default_factory=list)
    window_min_ttc_s: dict[int, float] = field(default_factory=dict)

    def t_ms(self) -> np.ndarray:
        return self.start_ms + np.arange(self.seconds * HZ, dtype=np.int64) * (1000 // HZ)

    def envelopes(self) -> list[common_pb2.Envelope]:
        """Messages in event-time order; message ids are stable (`<vehicle>/<kind>/<t_ms>[/<i>]`)."""
        t = self.t_ms()
        heading = np.cumsum(self.yaw_rate_rps) / HZ
        x = np.cumsum(self.speed_mps * np.cos(heading)) / HZ
        y = np.cumsum(self.speed_mps * np.sin(heading)) / HZ
        out = []
        events = sorted(self.events, key=lambda e: e[0])
        k = 0
        for s in range(self.seconds):
            sec_ms = self.start_ms + s * 1000
            sl = slice(s * HZ, (s + 1) * HZ)
            vid = self.vehicle_id
            out.append(common_pb2.Envelope(
                schema_version=1, vehicle_id=vid, event_time_ms=sec_ms, message_id=f"{vid}/hb/{sec_ms}",
                heartbeat=common_pb2.Heartbeat(mode=common_pb2.DRIVING_MODE_AUTONOMOUS,
                                               speed_mps=float(self.speed_mps[s * HZ]),
                                               task_state=int(self.task_state[s]))))
            out.append(common_pb2.Envelope(
                schema_version=1, vehicle_id=vid, event_time_ms=sec_ms, message_id=f"{vid}/pose/{sec_ms}",
                pose=pose_batch({
                    **{name: np.zeros(HZ) for name in POSE_DTYPES}, "t_ms": t[sl], "x_m": x[sl], "y_m": y[sl],
                    "speed_mps": self.speed_mps[sl], "accel_lon_mps2": self.accel_lon_mps2[sl],
                    "yaw_rate_rps": self.yaw_rate_rps[sl], "gear": np.ones(HZ),
                    "mode": np.full(HZ, common_pb2.DRIVING_MODE_AUTONOMOUS)})))
            out.append(common_pb2.Envelope(
                schema_version=1, vehicle_id=vid, event_time_ms=sec_ms + 500, message_id=f"{vid}/perc/{sec_ms}",
                perception=common_pb2.PerceptionSummary(
                    objects=self.objects[s], planner_top_costs=self.costs[s], maneuver=self.maneuver[s],
                    unprotected_turn=bool(self.unprotected_turn[s]), window_min_ttc_s=self.window_min_ttc_s.get(s))))
            while k < len(events) and events[k][0] < sec_ms + 1000:
                t_ev, ev = events[k]
                out.append(common_pb2.Envelope(schema_version=1, vehicle_id=vid, event_time_ms=t_ev,
                                               message_id=f"{vid}/ev/{t_ev}/{k}", event=ev))
                k += 1
        return out


def cruise(vehicle_id: str, seconds: int, start_ms: int = 1_700_000_000_000, speed_mps: float = 10.0,
           seed: int = 0) -> SyntheticDrive:
    """Normal driving: steady speed with sensor noise, a lead car 30 m ahead at our speed, a parked
    car to the side, planner costs 30 % apart, task RUNNING. Fires no trigger."""
    rng = np.random.default_rng(seed)
    n = seconds * HZ
    lead = PO(track_id=1, object_class=common_pb2.OBJECT_CLASS_CAR, rel_x_m=30.0, rel_y_m=0.2, rel_vx_mps=0.0,
              length_m=4.5, width_m=1.8, confidence=0.95)
    parked = PO(track_id=2, object_class=common_pb2.OBJECT_CLASS_CAR, rel_x_m=12.0, rel_y_m=4.0,
                rel_vx_mps=-speed_mps, length_m=4.5, width_m=1.8, confidence=0.9)
    return SyntheticDrive(
        vehicle_id=vehicle_id, start_ms=start_ms, seconds=seconds,
        speed_mps=speed_mps + rng.normal(0.0, 0.05, n), accel_lon_mps2=rng.normal(0.0, 0.3, n),
        yaw_rate_rps=rng.normal(0.0, 0.01, n), task_state=np.full(seconds, common_pb2.TASK_STATE_RUNNING),
        objects=[[lead, parked] for _ in range(seconds)], costs=[[1.0, 1.3] for _ in range(seconds)],
        maneuver=["cruise"] * seconds, unprotected_turn=np.zeros(seconds, dtype=bool),
    )


def hard_decel(d: SyntheticDrive, at_s: float, peak_mps2: float = 6.0, duration_s: float = 1.2,
               lead_m: float | None = 12.0) -> None:
    """A trapezoid deceleration peaking at `peak_mps2`, `duration_s` long, from `at_s`. With `lead_m`
    a braking car sits in the path around it; without, the path is clear (only the parked car)."""
    i0, i1 = int(at_s * HZ), int((at_s + duration_s) * HZ)
    ramp = np.minimum(1.0, np.minimum(np.arange(i1 - i0) + 1, i1 - i0 - np.arange(i1 - i0)) / 3.0)
    d.accel_lon_mps2[i0:i1] = -peak_mps2 * ramp
    for s in range(max(int(at_s) - 1, 0), min(int(at_s + duration_s) + 2, d.seconds)):
        side = [o for o in d.objects[s] if abs(o.rel_y_m) > 2.0]
        if lead_m is not None:
            side.append(PO(track_id=7, object_class=common_pb2.OBJECT_CLASS_CAR, rel_x_m=lead_m, rel_y_m=0.3,
                           rel_vx_mps=-1.0, confidence=0.9))
        d.objects[s] = side


def weave(d: SyntheticDrive, at_s: float, amplitude_rps: float = 0.2, period_s: float = 2.0,
          duration_s: float = 8.0) -> None:
    """Sinusoidal yaw-rate oscillation."""
    i0, i1 = int(at_s * HZ), int((at_s + duration_s) * HZ)
    d.yaw_rate_rps[i0:i1] = amplitude_rps * np.sin(2 * np.pi * np.arange(i1 - i0) / (period_s * HZ))


def stop(d: SyntheticDrive, at_s: float, duration_s: float,
         task_state: int = common_pb2.TASK_STATE_RUNNING) -> None:
    """Standing still (speed 0 with standstill noise) for `duration_s` with the given task state."""
    i0, i1 = int(at_s * HZ), int((at_s + duration_s) * HZ)
    d.speed_mps[i0:i1] = np.abs(d.speed_mps[i0:i1] - d.speed_mps[i0:i1].mean()) * 0.5
    d.accel_lon_mps2[i0:i1] *= 0.1
    d.task_state[int(at_s):int(np.ceil(at_s + duration_s))] = task_state


def close_object(d: SyntheticDrive, at_s: int, seconds: int = 1, rel_x_m: float = 8.0, closing_mps: float = 6.0,
                 object_class: int = common_pb2.OBJECT_CLASS_PEDESTRIAN, confidence: float = 0.8) -> None:
    """An object in the path closing at `closing_mps` (TTC = rel_x_m / closing_mps) for `seconds` summaries."""
    for s in range(at_s, at_s + seconds):
        d.objects[s] = d.objects[s] + [PO(track_id=9, object_class=object_class, rel_x_m=rel_x_m, rel_y_m=0.5,
                                          rel_vx_mps=-closing_mps, confidence=confidence)]


def event(d: SyntheticDrive, at_s: float, kind: int, **fields: object) -> None:
    """A VehicleEvent at `at_s` seconds into the drive."""
    d.events.append((d.start_ms + int(round(at_s * 1000)), common_pb2.VehicleEvent(kind=kind, **fields)))


# One of every built-in's incident, each alone in its own 70 s slot: (trigger, injector).
INCIDENTS = (
    ("hard_brake", lambda d, s: hard_decel(d, s + 5.35, 6.5, 1.2, lead_m=8.0)),
    ("phantom_stop", lambda d, s: hard_decel(d, s + 5.05, 5.0, 1.0, lead_m=None)),
    ("weaving", lambda d, s: weave(d, s + 5, 0.2, 2.0, 8.0)),
    ("near_miss", lambda d, s: close_object(d, int(s) + 5)),
    ("contact", lambda d, s: event(d, s + 5.2, common_pb2.EVENT_KIND_CONTACT, value=1.5, source="bumper")),
    ("takeover", lambda d, s: event(d, s + 5.2, common_pb2.EVENT_KIND_TAKEOVER, source="safety_driver",
                                    from_mode=common_pb2.DRIVING_MODE_AUTONOMOUS,
                                    to_mode=common_pb2.DRIVING_MODE_MANUAL)),
    ("call_for_help", lambda d, s: event(d, s + 5.2, common_pb2.EVENT_KIND_CALL_FOR_HELP)),
    ("error_code", lambda d, s: [event(d, s + 5 + 4 * k, common_pb2.EVENT_KIND_ERROR_CODE, module="planning",
                                       code="E42") for k in range(4)]),
    ("operator_speech", lambda d, s: event(d, s + 5.5, common_pb2.EVENT_KIND_OPERATOR_SPEECH,
                                           text="it braked for nothing, braking for nothing again")),
    ("planner_uncertainty", lambda d, s: d.costs.__setitem__(slice(int(s) + 5, int(s) + 8), [[1.0, 1.02]] * 3)),
    ("scene_complexity", lambda d, s: close_object(d, int(s) + 5, rel_x_m=40.0, closing_mps=1.0,
                                                   object_class=common_pb2.OBJECT_CLASS_UNKNOWN, confidence=0.3)),
)
SLOT_S = 70


def incident_drive(vehicle_id: str, seconds: int, seed: int = 0, start_ms: int = 1_700_000_000_000,
                   stop_s: float = 250.0) -> tuple[SyntheticDrive, list[tuple[str, int]]]:
    """A cruise with the INCIDENTS cycled through 70 s slots, then one stop of `stop_s` (task
    RUNNING) at the end when it fits. Returns the drive and the expected (trigger, slot start ms)."""
    d = cruise(vehicle_id, seconds, start_ms=start_ms, seed=seed)
    expected = []
    stop_at = seconds - stop_s - 20 if seconds > stop_s + 100 else seconds
    s, k = 10, 0
    while s + SLOT_S <= stop_at:
        name, inject = INCIDENTS[k % len(INCIDENTS)]
        inject(d, s)
        expected.append((name, start_ms + s * 1000))
        s, k = s + SLOT_S, k + 1
    if stop_at < seconds:
        stop(d, stop_at, stop_s)
        expected.append(("stop_not_go", start_ms + int(stop_at) * 1000))
    return d, expected
