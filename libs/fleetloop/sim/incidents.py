"""Injected incidents: the schedule and the behaviour of each kind (docs/INCIDENTS.md).

A `Behaviour` waits until its time has come, the vehicle's previous incident ended >= 60 s ago and
the vehicle can show the incident (a hard brake needs speed on a straight road), then drives the
vehicle through the documented signal shape and writes its ground-truth row. Behaviours act on the
simulator only through `fleetloop.sim.control.VehicleControls` (read motion and task; override the
acceleration, hold, mode, connectivity, weaving; emit events; add to this second's perception;
record ground truth). `IncidentBoard` holds the schedule and which vehicle each incident claims.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from fleetloop.sim.config import FAMILY_KINDS, INCIDENT_KINDS, PARK_KINDS, ScheduledIncident, SimConfig
from fleetloop.sim.control import VehicleControls
from fleetloop.sim.ground_truth import Incident
from fleetloop.sim.state import AUTO, MANUAL, REMOTE, RUNNING
from fleetloop.sim.world import J_YIELD, Hold
from fleetloop.triggers import criticality
from fleetloop.triggers.config import TriggerConfig
from fleetloop.triggers.config import load_config as load_trigger_config
from fleetloop.v1 import common_pb2

EV = common_pb2.VehicleEvent
OBJ = common_pb2.PerceivedObject
_PATH_CLASSES = (common_pb2.OBJECT_CLASS_CAR, common_pb2.OBJECT_CLASS_TRUCK, common_pb2.OBJECT_CLASS_TRICYCLE)
_CROSSING_CLASSES = (common_pb2.OBJECT_CLASS_PEDESTRIAN, common_pb2.OBJECT_CLASS_CYCLIST,
                     common_pb2.OBJECT_CLASS_CAR)


class Behaviour:
    """One incident of one vehicle (or, for park-level kinds, of one park).

    Lifecycle: "pending" until `try_start` finds it ready, "active" while it shapes the signals,
    "done" once its ground-truth row is written.
    """

    kind = ""
    expected: tuple[str, ...] = ()
    longest_s = 30.0  # max_s() of kinds whose length does not depend on their draws

    def __init__(self, ctl: VehicleControls, board: IncidentBoard, incident_id: str, vehicle: int, at_ms: int,
                 duration_s: float | None, params: dict | None, rng: np.random.Generator) -> None:
        self.ctl, self.board, self.id, self.i, self.at_ms = ctl, board, incident_id, vehicle, at_ms
        self.q = ctl.params["incidents"]
        self.rng = rng
        self.params = params or {}
        self.duration_s = duration_s
        self.state = "pending"
        self.start_ms: int | None = None
        self.end_ms: int | None = None
        self.detail: dict = {}
        self.on_done = None  # park-level parent callback

    # -- to override
    def max_s(self) -> float:
        """Upper bound of the incident's length (s): it only starts when it can finish in the run."""
        return self.longest_s

    def ready(self, t_ms: int) -> bool:
        return True

    def start(self, t_ms: int) -> None:
        self.start_ms = t_ms

    def on_second(self, t_ms: int) -> None:
        """Called at the start of every second while active, before perception is built."""

    def on_substep(self, i: int, t_ms: int) -> None:
        """Called after every 10 Hz step while the vehicle's speed override is on."""

    # -- shared
    def try_start(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        claimed = self.board.active[i]
        if (claimed is not None and claimed is not self) or t_ms < self.board.free_at_ms[i]:
            return
        if t_ms + 1000 * self.max_s() > ctl.end_ms or not self.ready(t_ms):
            return
        self.state = "active"
        self.board.active[i] = self
        self.start(t_ms)

    def end(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        self.state = "done"
        self.end_ms = t_ms
        self.board.active[i] = None
        ctl.release_override(i)
        self.board.free_at_ms[i] = t_ms + int(1000 * self.q["min_gap_s"])
        self.record()
        if self.on_done:
            self.on_done(self)

    def record(self) -> None:
        veh = self.ctl.vehicle(self.i)
        self.ctl.record_incident(Incident(
            incident_id=self.id, kind=self.kind, vehicle_id=veh.vehicle_id, start_ms=int(self.start_ms),
            end_ms=int(self.end_ms), expected_triggers=self.expected, park=veh.park, city=veh.city,
            detail=self.detail))

    def finish(self) -> None:
        """At the end of the run: an incident still active is recorded up to the end, marked truncated."""
        if self.state == "active" and self.start_ms is not None:
            self.detail["truncated"] = True
            self.end_ms = self.ctl.end_ms
            self.state = "done"
            self.record()

    # -- readiness helpers
    def cruising(self, min_speed: float, straight_m: float) -> bool:
        """Autonomous, task running, at speed on a straight with `straight_m` of clear road ahead."""
        ctl, i = self.ctl, self.i
        return (ctl.speed_mps(i) >= min_speed and ctl.task_state(i) == RUNNING and ctl.mode(i) == AUTO
                and not ctl.changing_lane(i) and not ctl.weaving(i) and ctl.straight_ahead_m(i) >= straight_m)

    def comfortable_stop_m(self) -> float:
        """Braking distance (m) of a comfortable 1.4 m/s^2 stop from the current speed."""
        v = self.ctl.speed_mps(self.i)
        return v * v / 2.8

    def uniform(self, bounds: list[float]) -> float:
        return float(self.rng.uniform(bounds[0], bounds[1]))

    def obj(self, cls: int, x: float, y: float, vx: float, vy: float = 0.0, conf: float = 0.9,
            emerged: bool = False, track: int | None = None) -> OBJ:
        size = {common_pb2.OBJECT_CLASS_PEDESTRIAN: (0.5, 0.5), common_pb2.OBJECT_CLASS_CYCLIST: (1.8, 0.6),
                common_pb2.OBJECT_CLASS_TRICYCLE: (2.8, 1.2), common_pb2.OBJECT_CLASS_TRUCK: (9.0, 2.5),
                common_pb2.OBJECT_CLASS_UNKNOWN: (1.2, 0.9)}.get(cls, (4.6, 1.9))
        return OBJ(track_id=track or self.ctl.new_track_id(), object_class=cls, rel_x_m=x, rel_y_m=y,
                   rel_vx_mps=vx, rel_vy_mps=vy, length_m=size[0], width_m=size[1], confidence=conf,
                   emerged_from_occlusion=emerged)

    def show(self, *objects: OBJ, no_lead: bool = True) -> None:
        self.ctl.show_objects(self.i, objects)
        if no_lead:
            self.ctl.hide_lead(self.i)

    def override(self, accel: float, jerk: float) -> None:
        ctl, i = self.ctl, self.i
        ctl.override(i, accel, jerk)


class HardBrake(Behaviour):
    """Decel ramps at 20 m/s^3 to a 5.4-6.6 m/s^2 peak held ~0.9 s (>= 0.6 s beyond 4), then releases.

    hard_brake: a lead object in the path (|rel_y| <= 1.5 m, 14 m ahead, TTC 3 s) brakes; phantom_stop:
    the same profile while perception shows the path clear (no lead, all agents >= 2.6 m aside)."""

    kind, expected = "hard_brake", ("hard_brake",)
    longest_s = 20.0
    phantom = False

    def ready(self, t_ms: int) -> bool:
        return self.cruising(7.0, 60.0)

    def start(self, t_ms: int) -> None:
        self.phase = "arm"
        self.brake_ms = t_ms + 1000
        self.peak = self.uniform(self.q["brake_peak_mps2"])
        self.track = self.ctl.new_track_id()
        self.cls = _PATH_CLASSES[int(self.rng.integers(len(_PATH_CLASSES)))]
        self.lat = self.uniform([-0.6, 0.6])
        self.detail = {"peak_decel_mps2": round(self.peak, 3)}

    def on_second(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        k = (t_ms - self.brake_ms) // 1000
        if not self.phantom and k <= 2:
            # the lead: closing gently, then braking hard in front of us (TTC 3 s), then stopped ahead
            x = (20.0, 14.0, 10.0, 11.0)[k + 1]
            vx = (-1.5, -14.0 / 3.0, 0.5, 1.0)[k + 1]
            self.show(self.obj(self.cls, x, self.lat, vx, track=self.track))
        elif self.phantom:
            ctl.hide_lead(i)
        if self.phase == "arm" and t_ms >= self.brake_ms:
            self.phase = "brake"
            self.start_ms = t_ms
            self.v0 = ctl.speed_mps(i)
            self.detail["speed_before_mps"] = round(self.v0, 2)
            self.override(-self.peak, self.q["brake_jerk_mps3"])
        elif self.phase == "after" and t_ms >= self.release_ms + 2000 and k >= 3:
            self.end(t_ms)

    def on_substep(self, i: int, t_ms: int) -> None:
        ctl = self.ctl
        held = (t_ms - self.start_ms) / 1000.0 >= self.q["brake_hold_s"]
        slow = ctl.speed_mps(i) <= self.v0 - self.q["brake_speed_drop_mps"]
        if self.phase == "brake" and (ctl.speed_mps(i) == 0.0 or (held and slow)):
            self.phase = "release"
            self.override(0.0, self.q["brake_jerk_mps3"])
        elif self.phase == "release" and (ctl.accel_mps2(i) >= -0.05 or ctl.speed_mps(i) == 0.0):
            self.phase = "after"
            self.release_ms = t_ms
            ctl.release_override(i)


class PhantomStop(HardBrake):
    kind, expected = "phantom_stop", ("phantom_stop",)
    phantom = True


class NearMiss(Behaviour):
    """A pedestrian / cyclist / car crosses into the path 1.3 s ahead (TTC < 1.5 s in two summaries);
    the ego brakes at 3.0 m/s^2 (<= 3.5, no hard brake) for 1.5 s."""

    kind, expected = "near_miss", ("near_miss",)
    longest_s = 10.0

    def ready(self, t_ms: int) -> bool:
        return self.cruising(6.0, 70.0)

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        ctl, i = self.ctl, self.i
        self.s0, self.v0 = ctl.route_pos_m(i), ctl.speed_mps(i)
        self.x0 = 1.3 * self.v0
        self.cls = _CROSSING_CLASSES[int(self.rng.integers(len(_CROSSING_CLASSES)))]
        self.track = ctl.new_track_id()
        self.detail = {"ttc_s": 1.3, "object_class": int(self.cls)}
        self.override(-self.q["near_miss_decel_mps2"], 10.0)

    def on_second(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        k = (t_ms - self.start_ms) // 1000
        x = max(2.0, self.x0 - (ctl.route_pos_m(i) - self.s0))
        v = ctl.speed_mps(i)
        if k == 0:
            self.show(self.obj(self.cls, self.x0, 1.2, -v, -1.5, track=self.track))
        elif k == 1:
            self.show(self.obj(self.cls, x, -0.3, -v, -1.5, track=self.track))
        elif k == 2:
            self.show(self.obj(self.cls, x - v, -2.6, -v, -1.5, track=self.track))
        else:
            self.end(t_ms)

    def on_substep(self, i: int, t_ms: int) -> None:
        ctl = self.ctl
        if t_ms - self.start_ms >= 1500 and ctl.override_accel_mps2(i) < 0:
            self.override(0.0, 10.0)
        elif ctl.override_accel_mps2(i) == 0.0 and (ctl.accel_mps2(i) >= -0.05 or ctl.speed_mps(i) == 0.0):
            ctl.release_override(i)


class Contact(Behaviour):
    """A bumper contact at low speed: a CONTACT event (impact m/s), ego brakes at 3.0 m/s^2 to a stop
    and waits 8-25 s."""

    kind, expected = "contact", ("contact",)
    longest_s = 45.0

    def ready(self, t_ms: int) -> bool:
        ctl, i = self.ctl, self.i
        return ctl.vehicle(i).kind == "van" and ctl.speed_mps(i) <= 8.0 and self.cruising(2.0, 40.0)

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        ctl, i = self.ctl, self.i
        impact = self.uniform(self.q["contact_impact_mps"])
        self.detail = {"impact_mps": round(impact, 3)}
        ctl.emit_event(i, t_ms + 50, EV(kind=common_pb2.EVENT_KIND_CONTACT, value=impact, source="system",
                                       text="front bumper contact sensor"))
        decel = self.q["contact_decel_mps2"]
        v = ctl.speed_mps(i)
        self.override(-decel, 10.0)
        stop_at = ctl.route_pos_m(i) + v * v / (2 * decel) + 0.15 * v + 0.3  # + the 0.3 s jerk ramp
        ctl.add_hold(i, Hold(stop_at, self.uniform(self.q["contact_hold_s"]), on_release=self._released))

    def on_substep(self, i: int, t_ms: int) -> None:
        if self.ctl.speed_mps(i) == 0.0:
            self.ctl.release_override(i)

    def _released(self, i: int, t_ms: int) -> None:
        self.end(t_ms)


class Weaving(Behaviour):
    """Yaw-rate oscillation 0.18-0.28 rad/s, period 1.8-2.6 s, for 7-10 s at > 4 m/s ("drawing a dragon")."""

    kind, expected = "weaving", ("weaving",)
    longest_s = 15.0

    def ready(self, t_ms: int) -> bool:
        ctl, i = self.ctl, self.i
        return self.cruising(5.0, ctl.speed_limit_mps(i) * 10.0 + 20.0)

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        ctl, i = self.ctl, self.i
        period = self.uniform(self.q["weaving_period_s"])
        total = self.duration_s or self.uniform(self.q["weaving_total_s"])
        periods = max(2, math.floor(total / period))
        if periods * period < self.q["weaving_total_s"][0]:
            periods += 1
        amp = self.uniform(self.q["weaving_amp_rps"])
        ctl.start_weave(i, t_ms / 1000.0, amp, period, 2 * periods)
        self.until_ms = t_ms + 1000 * math.ceil(periods * period)
        self.detail = {"amplitude_rps": round(amp, 3), "period_s": round(period, 3), "periods": periods}

    def on_second(self, t_ms: int) -> None:
        if t_ms >= self.until_ms:
            self.ctl.end_weave(self.i)
            self.end(t_ms)


class StopNotGo(Behaviour):
    """Comfortable stop with the task RUNNING, standstill for 240-700 s, then moves on. The row spans
    standstill: start = the stop, end = moving again."""

    kind, expected = "stop_not_go", ("stop_not_go",)

    def hold_s(self) -> float:
        return self.duration_s or self.uniform(self.q["stop_not_go_s"])

    def max_s(self) -> float:
        return self.q["stop_not_go_s"][1] + 90.0 if self.duration_s is None else self.duration_s + 90.0

    def ready(self, t_ms: int) -> bool:
        return self.cruising(3.0, self.comfortable_stop_m() + 40.0)

    def start(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        self.dwell = self.hold_s()
        self.detail["stall_s"] = round(self.dwell, 1)
        ctl.add_hold(i, Hold(ctl.route_pos_m(i) + self.comfortable_stop_m() + 10.0, self.dwell,
                             on_arrive=self._arrived, on_release=self._released))

    def _arrived(self, i: int, t_ms: int) -> None:
        self.start_ms = t_ms

    def _released(self, i: int, t_ms: int) -> None:
        self.end(t_ms)


class Takeover(Behaviour):
    """A TAKEOVER event (autonomous -> manual, safety driver), manual for 20-120 s, then a MODE_CHANGE back."""

    kind, expected = "takeover", ("takeover",)

    def max_s(self) -> float:
        return (self.duration_s or self.q["takeover_s"][1]) + 5.0

    def ready(self, t_ms: int) -> bool:
        ctl, i = self.ctl, self.i
        return ctl.speed_mps(i) >= 2.0 and ctl.task_state(i) == RUNNING and ctl.mode(i) == AUTO

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        ctl, i = self.ctl, self.i
        dur = self.duration_s or self.uniform(self.q["takeover_s"])
        self.until_ms = t_ms + 1000 * int(round(dur))
        torque = self.uniform([2.5, 6.0])
        ctl.emit_event(i, t_ms, EV(kind=common_pb2.EVENT_KIND_TAKEOVER, from_mode=AUTO, to_mode=MANUAL,
                                   value=torque, source="safety_driver"))
        ctl.set_mode(i, MANUAL)
        self.detail = {"manual_s": round(dur), "torque_nm": round(torque, 2)}

    def on_second(self, t_ms: int) -> None:
        if t_ms >= self.until_ms:
            self.ctl.emit_event(self.i, t_ms, EV(kind=common_pb2.EVENT_KIND_MODE_CHANGE, from_mode=MANUAL,
                                                 to_mode=AUTO, source="safety_driver"))
            self.ctl.set_mode(self.i, AUTO)
            self.end(t_ms)


class CallForHelp(Behaviour):
    """Blocked: the vehicle stops, sends CALL_FOR_HELP, a remote operator takes over (MODE_CHANGE to
    REMOTE) and drives slowly for 30-180 s, then hands back (MODE_CHANGE to AUTONOMOUS)."""

    kind, expected = "call_for_help", ("call_for_help",)

    def max_s(self) -> float:
        return (self.duration_s or self.q["call_for_help_remote_s"][1]) + 90.0

    def ready(self, t_ms: int) -> bool:
        return self.cruising(3.0, self.comfortable_stop_m() + 40.0)

    def start(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        self.phase = "stopping"
        self.hold = Hold(ctl.route_pos_m(i) + self.comfortable_stop_m() + 10.0, math.inf, on_arrive=self._arrived)
        ctl.add_hold(i, self.hold)
        self.remote_s = self.duration_s or self.uniform(self.q["call_for_help_remote_s"])
        self.detail = {"remote_s": round(self.remote_s)}

    def _arrived(self, i: int, t_ms: int) -> None:
        self.start_ms = t_ms
        self.phase = "stopped"
        self.call_ms = (t_ms // 1000 + int(self.rng.integers(5, 12))) * 1000
        self.remote_ms = self.call_ms + 1000 * int(self.rng.integers(5, 12))
        self.back_ms = self.remote_ms + 1000 * int(round(self.remote_s))

    def on_second(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        if self.phase == "stopped" and t_ms >= self.call_ms:
            ctl.emit_event(i, t_ms + int(self.rng.integers(1000)), EV(
                kind=common_pb2.EVENT_KIND_CALL_FOR_HELP, source="system", text="blocked by a double-parked truck"))
            self.phase = "called"
        elif self.phase == "called" and t_ms >= self.remote_ms:
            ctl.emit_event(i, t_ms, EV(kind=common_pb2.EVENT_KIND_MODE_CHANGE, from_mode=AUTO, to_mode=REMOTE,
                                       source="remote_operator"))
            ctl.set_mode(i, REMOTE)
            ctl.cap_speed(i, self.q["remote_speed_mps"])
            ctl.release_hold(i, self.hold, t_ms)
            self.phase = "remote"
        elif self.phase == "remote" and t_ms >= self.back_ms:
            ctl.emit_event(i, t_ms, EV(kind=common_pb2.EVENT_KIND_MODE_CHANGE, from_mode=REMOTE, to_mode=AUTO,
                                       source="remote_operator"))
            ctl.set_mode(i, AUTO)
            ctl.cap_speed(i)
            self.end(t_ms)


class ErrorCode(Behaviour):
    """3-8 ERROR_CODE events of one module/code within 18 s (a burst), or, as a park error-burst
    member that does not burst itself, 1 event."""

    kind, expected = "error_code", ("error_code",)
    longest_s = 25.0

    def ready(self, t_ms: int) -> bool:
        return self.ctl.online(self.i)

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        codes = self.q["error_codes"]
        module, code = self.params.get("code") or codes[int(self.rng.integers(len(codes)))]
        lo, hi = self.q["error_code_count"]
        count = int(self.params.get("count") or self.rng.integers(lo, hi + 1))
        offsets = [0] if count == 1 else sorted(
            [0, int(1000 * self.q["error_code_window_s"])]
            + self.rng.integers(0, int(1000 * self.q["error_code_window_s"]), count - 2).tolist())
        self.times = [t_ms + 137 + off for off in offsets]
        self.module, self.code = module, code
        self.detail = {"module": module, "code": code, "count": count, **(
            {"park_incident": self.params["park_incident"]} if "park_incident" in self.params else {})}

    def on_second(self, t_ms: int) -> None:
        for t_ev in [t for t in self.times if t_ms <= t < t_ms + 1000]:
            self.ctl.emit_event(self.i, t_ev, EV(kind=common_pb2.EVENT_KIND_ERROR_CODE, module=self.module,
                                                 code=self.code, source="system"))
        if t_ms > self.times[-1]:
            self.end(self.times[-1])

    def record(self) -> None:
        if len(self.times) >= 3:
            super().record()


class OperatorSpeech(Behaviour):
    """One OPERATOR_SPEECH event whose transcript holds a safety keyword."""

    kind, expected = "operator_speech", ("operator_speech",)
    longest_s = 5.0

    def ready(self, t_ms: int) -> bool:
        return self.ctl.task_state(self.i) == RUNNING

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        texts = self.q["safety_speech"]
        text = texts[int(self.rng.integers(len(texts)))]
        self.ctl.emit_event(self.i, t_ms + int(self.rng.integers(1000)), EV(
            kind=common_pb2.EVENT_KIND_OPERATOR_SPEECH, text=text, source="safety_driver"))
        self.detail = {"text": text}

    def on_second(self, t_ms: int) -> None:
        if t_ms > self.start_ms:
            self.end(t_ms)


class PlannerUncertainty(Behaviour):
    """Planner top-2 costs within 0.5-4 % of each other in consecutive summaries spanning 2-5 s."""

    kind, expected = "planner_uncertainty", ("planner_uncertainty",)
    longest_s = 10.0

    def ready(self, t_ms: int) -> bool:
        return self.ctl.speed_mps(self.i) >= 2.0 and self.ctl.task_state(self.i) == RUNNING

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        lo, hi = self.q["planner_uncertainty_s"]
        span = int(self.duration_s or self.rng.integers(lo, hi + 1))
        self.until_ms = t_ms + 1000 * (span + 1)
        self.detail = {"tied_s": span}

    def on_second(self, t_ms: int) -> None:
        if t_ms >= self.until_ms:
            self.end(t_ms)
            return
        c1 = self.uniform([1.0, 5.0])
        tie = self.uniform(self.ctl.params["planner"]["tie_gap"])
        self.ctl.set_planner_costs(self.i, (c1, c1 * (1 + tie), c1 * (1 + tie) * self.uniform([1.1, 1.5])))


class SceneComplexity(Behaviour):
    """One of: an unprotected left turn with an oncoming car, a pedestrian emerging from occlusion
    within 15 m (beside the path), an UNKNOWN object with confidence < 0.5."""

    kind, expected = "scene_complexity", ("scene_complexity",)
    longest_s = 20.0
    VARIANTS = ("unprotected_left", "occluded_pedestrian", "unknown_object")

    def ready(self, t_ms: int) -> bool:
        ctl, i = self.ctl, self.i
        if not self.params.get("variant"):
            self.params["variant"] = self.VARIANTS[int(self.rng.integers(len(self.VARIANTS)))]
        if self.params["variant"] == "unprotected_left":
            if t_ms - self.at_ms > 180_000 or ctl.vehicle(i).kind == "truck":
                self.params["variant"] = "occluded_pedestrian"
            else:
                p = ctl.piece(i)
                return (p.angle > 0.5 and p.junction == J_YIELD and ctl.route_pos_m(i) - p.s0 < 0.4 * p.length
                        and ctl.task_state(i) == RUNNING and ctl.mode(i) == AUTO)
        return self.cruising(3.0, 20.0)

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        self.variant = self.params["variant"]
        self.piece_s0 = self.ctl.piece(self.i).s0
        self.track = self.ctl.new_track_id()
        self.detail = {"variant": self.variant}

    def on_second(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        k = (t_ms - self.start_ms) // 1000
        v = ctl.speed_mps(i)
        if self.variant == "unprotected_left":
            if ctl.piece(i).s0 != self.piece_s0 or k >= 4:
                self.end(t_ms)
                return
            ctl.mark_unprotected_turn(i)
            self.show(self.obj(common_pb2.OBJECT_CLASS_CAR, 30.0 - 9.0 * k, 3.5, -(v + 8.0), track=self.track))
        elif self.variant == "occluded_pedestrian":
            if k >= 1:
                self.end(t_ms)
                return
            self.show(self.obj(common_pb2.OBJECT_CLASS_PEDESTRIAN, self.uniform([8.0, 14.0]),
                               -self.uniform([2.6, 3.2]), -v, 0.6, conf=0.7, emerged=True, track=self.track),
                      no_lead=False)
        else:
            if k >= 2:
                self.end(t_ms)
                return
            self.show(self.obj(common_pb2.OBJECT_CLASS_UNKNOWN, 28.0 - v * k, 4.0, -v,
                               conf=self.uniform([0.3, 0.45]), track=self.track), no_lead=False)


class Offline(Behaviour):
    """The vehicle sends nothing for 30-300 s while it keeps driving."""

    kind, expected = "offline", ()

    def max_s(self) -> float:
        return (self.duration_s or self.q["offline_s"][1]) + 2.0

    def ready(self, t_ms: int) -> bool:
        # a driving vehicle: a parked one going silent is powered down on purpose (monitors.yaml)
        return self.ctl.speed_mps(self.i) >= 1.0 and self.ctl.task_state(self.i) == RUNNING

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        dur = self.duration_s or self.uniform(self.q["offline_s"])
        self.until_ms = t_ms + 1000 * int(round(dur))
        self.ctl.set_online(self.i, False)
        self.detail = {"silent_s": int(round(dur))}

    def on_second(self, t_ms: int) -> None:
        if t_ms >= self.until_ms:
            self.ctl.set_online(self.i, True)
            self.end(t_ms)


class _ParkIncident(Behaviour):
    """A park-level incident: claims member vans of the park and runs one member behaviour on each."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        veh = self.ctl.vehicle(self.i)
        self.park, self.city = veh.park, veh.city
        self.members: list[Behaviour] = []
        self.pending_members = 0

    def candidates(self, t_ms: int) -> list[int]:
        ctl, board = self.ctl, self.board
        out = []
        for i in range(ctl.vehicle_count):
            veh = ctl.vehicle(i)
            if (veh.park == self.park and veh.city == self.city and veh.kind == "van" and board.active[i] is None
                    and board.free_at_ms[i] <= t_ms and ctl.online(i) and self.member_ok(i)):
                out.append(i)
        return out

    def member_ok(self, i: int) -> bool:
        return True

    def try_start(self, t_ms: int) -> None:
        if t_ms + 1000 * self.max_s() > self.ctl.end_ms:
            return
        cands = self.candidates(t_ms)
        lo, hi = self.count_range()
        if len(cands) < lo:
            return
        k = min(len(cands), int(self.rng.integers(lo, hi + 1)))
        chosen = sorted(self.rng.choice(cands, size=k, replace=False).tolist())
        self.state = "active"
        self.start_ms = t_ms
        for n, i in enumerate(chosen):
            member = self.make_member(n, i, t_ms)
            member.on_done = self._member_done
            self.board.active[i] = member
            self.board.behaviours.append(member)
            self.members.append(member)
        self.pending_members = len(self.members)

    def _member_done(self, member: Behaviour) -> None:
        self.pending_members -= 1
        if self.pending_members == 0:
            self.state = "done"
            started = [m for m in self.members if m.start_ms is not None]
            self.start_ms = min(m.start_ms for m in started)
            self.end_ms = max(m.end_ms for m in started)
            self.detail["members"] = [self.ctl.vehicle(m.i).vehicle_id for m in self.members]
            self.ctl.record_incident(Incident(
                incident_id=self.id, kind=self.kind, vehicle_id="", start_ms=int(self.start_ms),
                end_ms=int(self.end_ms), expected_triggers=(), park=self.park, city=self.city,
                detail=self.detail))

    def finish(self) -> None:
        """Members record themselves; the park row needs them all finished."""


class ParkBlockage(_ParkIncident):
    """4-6 vans of one park stall (task RUNNING, speed 0) within 90 s of each other for 5.5-11.5 min."""

    kind = "park_blockage"

    def count_range(self) -> tuple[int, int]:
        return tuple(self.q["park_blockage_vehicles"])

    def max_s(self) -> float:
        return (self.duration_s or self.q["park_blockage_s"][1]) + self.q["park_blockage_stagger_s"] + 180.0

    def member_ok(self, i: int) -> bool:
        return self.ctl.task_state(i) == RUNNING

    def make_member(self, n: int, i: int, t_ms: int) -> Behaviour:
        at = t_ms + (0 if n == 0 else int(1000 * self.uniform([0.0, self.q["park_blockage_stagger_s"]])))
        dur = self.duration_s or self.uniform(self.q["park_blockage_s"])
        member = StopNotGo(self.ctl, self.board, f"{self.id}-{self.ctl.vehicle(i).vehicle_id}", i, at, dur, None,
                           np.random.default_rng([self.ctl.seed, 3, len(self.board.behaviours)]))
        member.detail = {"park_incident": self.id}
        return member


class ErrorBurst(_ParkIncident):
    """10+ ERROR_CODE events of one code across 4-6 vans of one park within 100 s: all members but one
    burst (3-5 codes within 18 s: error_code expected), one sends a single code."""

    kind = "error_burst"

    def count_range(self) -> tuple[int, int]:
        return tuple(self.q["error_burst_vehicles"])

    def max_s(self) -> float:
        return self.q["error_burst_window_s"] + 60.0

    def make_member(self, n: int, i: int, t_ms: int) -> Behaviour:
        if not self.members:
            codes = self.q["error_codes"]
            self.code = codes[int(self.rng.integers(len(codes)))]
            self.detail = {"module": self.code[0], "code": self.code[1], "counts": {}}
            self.single = int(self.rng.integers(self.count_range()[0]))
        count = 1 if n == self.single else int(self.rng.integers(3, 6))
        at = t_ms + (0 if n == 0 else int(1000 * self.uniform([0.0, self.q["error_burst_window_s"] - 20.0])))
        member = ErrorCode(self.ctl, self.board, f"{self.id}-{self.ctl.vehicle(i).vehicle_id}", i, at, None,
                           {"code": self.code, "count": count, "park_incident": self.id},
                           np.random.default_rng([self.ctl.seed, 4, len(self.board.behaviours)]))
        self.detail["counts"][self.ctl.vehicle(i).vehicle_id] = count
        return member


@lru_cache(maxsize=1)
def _trigger_config() -> TriggerConfig:
    """The packaged triggers.yaml: the vehicle computes its in-second minima by the fleet's rules."""
    return load_trigger_config()


class Encounter(Behaviour):
    """A near-miss situation family: one object's scripted motion near the ego on a straight road,
    with its truth from the 10 Hz states.

    The object moves in the ground frame of the encounter's start (x along the road from the ego's
    centre, y to the left): x = x0 + u τ + ½ a τ² (a braking object stops and stays), y moves at
    `w` m/s between `lat_from_s` and `lat_to_s`; it exists from `appear_s` to `vanish_s`. The ego
    holds its speed (an override at 0 m/s², so every 10 Hz step is seen) and brakes at
    `react_decel_mps2` (below hard_decel's 4 m/s²) once its TTC falls below `react_ttc_s`, down to
    the object's speed along the road.

    At every 10 Hz step the vehicle side measures the object with `fleetloop.triggers.criticality`
    (forward TTC of the boxes within the horizon, the bumper gap in the path) by triggers.yaml's
    rules; each summary shows the object at its instant (bumper gap, relative velocity, the object's
    acceleration) with the minima of the second ending there, and the summary's own window minima,
    position reference (BUMPER_GAP) and ego box. Truth, over all 10 Hz states: the least TTC and the
    least path gap while the ego moves faster than near_miss's `min_speed_mps`; the incident expects
    near_miss exactly when near_miss's rule holds for them (TTC < `ttc_s` or gap < `min_distance_m`).
    """

    longest_s = 12.0
    encounter_s: float = 7.0
    min_speed_mps = 6.0
    react_ttc_s = 1.5
    react_decel_mps2 = 3.0

    def ready(self, t_ms: int) -> bool:
        return self.cruising(self.min_speed_mps, 40.0 + self.ctl.speed_mps(self.i) * self.encounter_s)

    def start(self, t_ms: int) -> None:
        super().start(t_ms)
        ctl, i = self.ctl, self.i
        cfg = _trigger_config()
        self.crit, self.nm = cfg.criticality, cfg.triggers["near_miss"].params
        self.reach_floor_m = cfg.ego_path.lookahead_m
        self.s0, self.v0 = ctl.route_pos_m(i), ctl.speed_mps(i)
        self.ego_l, self.ego_w = (9.0, 2.5) if ctl.vehicle(i).kind == "truck" else (4.6, 1.9)
        self.track = ctl.new_track_id()
        self.appear_s, self.vanish_s = 0.0, self.encounter_s
        self.lat_from_s, self.lat_to_s, self.w = 0.0, 0.0, 0.0
        self.a, self.brake_from_s = 0.0, 0.0
        self.script()
        self.hx, self.hy = 0.5 * (self.length + self.ego_l), 0.5 * (self.width + self.ego_w)
        self.window: list[tuple[float, float]] = []
        self.truth_ttc = self.truth_gap = math.inf
        self.braking = False
        self.override(0.0, 10.0)
        self.measure(t_ms)

    def script(self) -> None:
        """Set the object: cls, length, width, x0, y0, u (and a, brake_from_s, w, lat_*, appear/vanish)."""
        raise NotImplementedError

    def object_at(self, tau: float) -> tuple[float, float, float, float, float] | None:
        """Ground x, y (m), vx, vy (m/s) and ax (m/s²) of the object τ s into the encounter, None when absent."""
        if not self.appear_s <= tau <= self.vanish_s:
            return None
        tb = max(tau - self.brake_from_s, 0.0)
        stop_s = -self.u / self.a if self.a < 0 else math.inf
        tb_eff = min(tb, stop_s)
        x = self.x0 + self.u * tau + 0.5 * self.a * tb_eff * tb_eff
        vx = self.u + self.a * tb_eff
        ax = self.a if 0 < tb < stop_s else 0.0
        tl = min(max(tau - self.lat_from_s, 0.0), self.lat_to_s - self.lat_from_s)
        moving = self.lat_from_s <= tau < self.lat_to_s
        return x, self.y0 + self.w * tl, vx, self.w if moving else 0.0, ax

    def measure(self, t_ms: int) -> tuple[float, float, tuple | None]:
        """TTC (s) and path gap (m) at `t_ms`, as the vehicle computes them, and the object's ego-frame state."""
        ctl, i = self.ctl, self.i
        tau = (t_ms - self.start_ms) / 1000.0
        obj = self.object_at(tau)
        if obj is None:
            self.window.append((math.inf, math.inf))
            return math.inf, math.inf, None
        x, y, vx, vy, ax = obj
        v = ctl.speed_mps(i)
        cx, rvx = x - (ctl.route_pos_m(i) - self.s0), vx - v
        c = self.crit
        ttc = float(criticality.forward_ttc(cx, y, rvx, vy, self.hx, self.hy, c.horizon_s,
                                            self.nm["min_closing_mps"], ax, 0.0))
        reach = float(criticality.lookahead_m(v, c.lookahead_s, self.reach_floor_m))
        gap = float(criticality.path_gap_m(cx, y, self.hx, self.hy, c.path_margin_m, reach))
        self.window.append((ttc, gap))
        self.truth_ttc = min(self.truth_ttc, ttc)
        if v > self.nm["min_speed_mps"]:  # the distance envelope counts while the ego moves
            self.truth_gap = min(self.truth_gap, gap)
        return ttc, gap, (cx, y, rvx, vy, ax)

    def on_substep(self, i: int, t_ms: int) -> None:
        ttc, _, _ = self.measure(t_ms)
        if not self.braking and ttc < self.react_ttc_s:
            self.braking = True
            self.override(-self.react_decel_mps2, 10.0)
        elif self.braking and self.ctl.override_accel_mps2(i) < 0:
            # brake down to the object's speed along the road (a follower's answer), then hold
            obj = self.object_at((t_ms - self.start_ms) / 1000.0)
            if self.ctl.speed_mps(i) <= max(obj[2] if obj else 0.0, 0.0) + 0.3:
                self.override(0.0, 10.0)

    def on_second(self, t_ms: int) -> None:
        ctl, i = self.ctl, self.i
        # This second's instant was measured by the last substep (or by start); the window ends here.
        w_ttc = min((t for t, _ in self.window), default=math.inf)
        w_gap = min((g for _, g in self.window), default=math.inf)
        self.window = []
        fields = common_pb2.PerceptionSummary(position_reference=common_pb2.POSITION_REFERENCE_BUMPER_GAP,
                                              ego_length_m=self.ego_l, ego_width_m=self.ego_w)
        if math.isfinite(w_ttc):
            fields.window_min_ttc_s = w_ttc
        if math.isfinite(w_gap):
            fields.window_min_distance_m = w_gap
        ctl.set_summary_fields(i, fields)
        tau = (t_ms - self.start_ms) / 1000.0
        if tau >= self.encounter_s:
            self.end(t_ms)
            return
        obj = self.object_at(tau)
        if obj is None:
            ctl.hide_lead(i)
            return
        x, y, vx, vy, ax = obj
        cx = x - (ctl.route_pos_m(i) - self.s0)
        o = OBJ(track_id=self.track, object_class=self.cls, rel_x_m=cx - self.hx, rel_y_m=y,
                rel_vx_mps=vx - ctl.speed_mps(i), rel_vy_mps=vy, length_m=self.length, width_m=self.width,
                confidence=0.9, accel_x_mps2=ax)
        if math.isfinite(w_ttc):
            o.min_ttc_s = w_ttc
        if math.isfinite(w_gap):
            o.min_distance_m = w_gap
        self.show(o)

    def record(self) -> None:
        near = self.truth_ttc < self.nm["ttc_s"] or self.truth_gap < self.nm["min_distance_m"]
        self.expected = ("near_miss",) if near else ()
        self.detail = {**self.detail, "family": self.kind, "truth_min_ttc_s": round(self.truth_ttc, 4)
                       if math.isfinite(self.truth_ttc) else None,
                       "truth_min_gap_m": round(self.truth_gap, 4) if math.isfinite(self.truth_gap) else None}
        super().record()


class CutIn(Encounter):
    """A car in the next lane, 2-20 m ahead, closing at 0-6 m/s, moves into the ego's lane at 1-2 m/s."""

    kind = "cut_in"

    def script(self) -> None:
        self.cls, self.length, self.width = common_pb2.OBJECT_CLASS_CAR, 4.6, 1.9
        side = 1.0 if self.rng.random() < 0.5 else -1.0
        self.x0 = 0.5 * (4.6 + self.ego_l) + self.uniform([2.0, 20.0])
        self.y0, self.u = 3.5 * side, self.v0 - self.uniform([0.0, 6.0])
        self.w = -side * self.uniform([1.0, 2.0])
        self.lat_from_s = self.uniform([0.5, 1.5])
        self.lat_to_s = self.lat_from_s + 3.5 / abs(self.w)


class Sideswipe(Encounter):
    """A car alongside and slightly ahead drifts toward the ego (0.3-1.5 m/s) from 3.6 m to 1.0-3.0 m
    off its axis (TTC predicts the drift onward: a near miss when it would touch within 2 s)."""

    kind = "sideswipe"

    def script(self) -> None:
        self.cls, self.length, self.width = common_pb2.OBJECT_CLASS_CAR, 4.6, 1.9
        side = 1.0 if self.rng.random() < 0.5 else -1.0
        self.x0, self.y0 = self.uniform([0.5, 3.0]), 3.6 * side
        self.u = self.v0 + self.uniform([0.0, 0.5])
        self.w = -side * self.uniform([0.3, 1.5])
        self.lat_from_s = self.uniform([0.5, 1.5])
        self.lat_to_s = self.lat_from_s + (3.6 - self.uniform([1.0, 3.0])) / abs(self.w)


class CrossingPedestrian(Encounter):
    """A pedestrian 1-2.5 s ahead steps from the kerb (3-5 m aside) and crosses at 1.2-3 m/s."""

    kind = "crossing_pedestrian"

    def script(self) -> None:
        self.cls, self.length, self.width = common_pb2.OBJECT_CLASS_PEDESTRIAN, 0.5, 0.5
        side = 1.0 if self.rng.random() < 0.5 else -1.0
        self.x0 = 0.5 * (0.5 + self.ego_l) + self.v0 * self.uniform([1.0, 2.5])
        self.y0, self.u = self.uniform([3.0, 5.0]) * side, 0.0
        self.w = -side * self.uniform([1.2, 3.0])
        self.lat_from_s, self.lat_to_s = 0.0, self.encounter_s


class LeadBraking(Encounter):
    """A lead at our speed 8-25 m ahead brakes at 2-7 m/s² to a stop."""

    kind = "lead_braking"

    def script(self) -> None:
        self.cls, self.length, self.width = common_pb2.OBJECT_CLASS_CAR, 4.6, 1.9
        self.x0 = 0.5 * (4.6 + self.ego_l) + self.uniform([8.0, 25.0])
        self.y0, self.u = self.uniform([-0.3, 0.3]), self.v0
        self.a, self.brake_from_s = -self.uniform([2.0, 7.0]), self.uniform([0.5, 1.5])


class HighwayClosing(Encounter):
    """A slow truck 45-60 m ahead, closing at 70-100 % of the ego's speed (at ≥ 12 m/s); in half of
    them it changes lanes out of the way at 1.5-2.5 m/s."""

    kind = "highway_closing"
    min_speed_mps = 12.0
    react_ttc_s = 1.2

    def script(self) -> None:
        self.cls, self.length, self.width = common_pb2.OBJECT_CLASS_TRUCK, 12.0, 2.5
        self.x0 = 0.5 * (12.0 + self.ego_l) + self.uniform([45.0, 60.0])
        self.y0, self.u = self.uniform([-0.3, 0.3]), self.v0 * (1.0 - self.uniform([0.7, 1.0]))
        if self.rng.random() < 0.5:
            self.w = self.uniform([1.5, 2.5]) * (1.0 if self.rng.random() < 0.5 else -1.0)
            self.lat_from_s = self.uniform([0.0, 1.0])
            self.lat_to_s = self.lat_from_s + 3.5 / abs(self.w)


class ShortEncounter(Encounter):
    """A cyclist swerves toward or into the ego's path for 0.3-0.7 s between two summaries: never in a
    summary's objects, seen only through the summary's in-second minima."""

    kind = "short_encounter"
    encounter_s = 4.0

    def script(self) -> None:
        self.cls, self.length, self.width = common_pb2.OBJECT_CLASS_CYCLIST, 1.8, 0.6
        side = 1.0 if self.rng.random() < 0.5 else -1.0
        closing = self.uniform([4.0, 8.0])
        self.x0 = 0.5 * (1.8 + self.ego_l) + closing * self.uniform([0.8, 3.0])
        self.y0, self.u = 2.2 * side, self.v0 - closing
        self.w = -side * self.uniform([1.5, 4.0])
        self.appear_s = 1.0 + self.uniform([0.15, 0.25])
        self.vanish_s = self.appear_s + self.uniform([0.3, 0.7])
        self.lat_from_s, self.lat_to_s = self.appear_s, self.vanish_s


FAMILIES: dict[str, type[Encounter]] = {
    "cut_in": CutIn, "sideswipe": Sideswipe, "crossing_pedestrian": CrossingPedestrian,
    "lead_braking": LeadBraking, "highway_closing": HighwayClosing, "short_encounter": ShortEncounter,
}
assert set(FAMILIES) == set(FAMILY_KINDS)


KINDS: dict[str, type[Behaviour]] = {
    "hard_brake": HardBrake, "phantom_stop": PhantomStop, "near_miss": NearMiss, "contact": Contact,
    "weaving": Weaving, "stop_not_go": StopNotGo, "takeover": Takeover, "call_for_help": CallForHelp,
    "error_code": ErrorCode, "operator_speech": OperatorSpeech, "planner_uncertainty": PlannerUncertainty,
    "scene_complexity": SceneComplexity, "offline": Offline, "park_blockage": ParkBlockage,
    "error_burst": ErrorBurst, **FAMILIES,
}
assert set(KINDS) == set(INCIDENT_KINDS) | set(FAMILY_KINDS)


def random_schedule(ctl: VehicleControls, cfg: SimConfig) -> list[ScheduledIncident]:
    """Poisson-like schedule: per vehicle, gaps of >= 60 s plus the longest duration of the previous
    kind plus an exponential with mean 1 / incidents_per_vehicle_hour; kinds drawn by weight."""
    q = ctl.params["incidents"]
    rng = np.random.default_rng([cfg.seed, 1])
    weights = q["weights"]
    mean_gap = 3600.0 / cfg.incidents_per_vehicle_hour if cfg.incidents_per_vehicle_hour > 0 else math.inf
    out = []
    for i in range(ctl.vehicle_count):
        veh = ctl.vehicle(i)
        t = q["first_at_s"] + rng.exponential(mean_gap)
        while t < cfg.duration_s:
            kinds = [k for k in INCIDENT_KINDS
                     if not (veh.kind == "truck" and k in (*PARK_KINDS, "contact"))
                     and not (k in PARK_KINDS and t < q["park_first_at_s"])]
            w = np.array([weights[k] for k in kinds], dtype=float)
            kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
            out.append(ScheduledIncident(kind=kind, vehicle_index=i, at_s=float(round(t, 1))))
            longest = {"stop_not_go": 760, "park_blockage": 900, "takeover": 125, "call_for_help": 250,
                       "offline": 300}.get(kind, 30)
            t += longest + q["min_gap_s"] + rng.exponential(mean_gap)
    return out


def family_schedule(ctl: VehicleControls, cfg: SimConfig) -> list[ScheduledIncident]:
    """The near-miss situation families at `cfg.near_miss_families_per_vehicle_hour` (none at 0): per
    vehicle, exponential gaps after the first minutes, families drawn uniformly, from their own stream."""
    if cfg.near_miss_families_per_vehicle_hour <= 0:
        return []
    q = ctl.params["incidents"]
    rng = np.random.default_rng([cfg.seed, 5])
    mean_gap = 3600.0 / cfg.near_miss_families_per_vehicle_hour
    out = []
    for i in range(ctl.vehicle_count):
        t = q["first_at_s"] + rng.exponential(mean_gap)
        while t < cfg.duration_s:
            kind = FAMILY_KINDS[int(rng.integers(len(FAMILY_KINDS)))]
            out.append(ScheduledIncident(kind=kind, vehicle_index=i, at_s=float(round(t, 1))))
            t += Encounter.longest_s + q["min_gap_s"] + rng.exponential(mean_gap)
    return out


def build_schedule(ctl: VehicleControls, board: IncidentBoard, cfg: SimConfig) -> list[Behaviour]:
    """Behaviours for the explicit `cfg.incidents`, or for a random schedule, plus the near-miss
    families when asked for, in start-time order."""
    scheduled = cfg.incidents if cfg.incidents is not None else random_schedule(ctl, cfg)
    scheduled = list(scheduled) + family_schedule(ctl, cfg)  # appended: the others keep their rng streams
    order = sorted(range(len(scheduled)), key=lambda k: (scheduled[k].at_s, k))
    out = []
    for n, k in enumerate(order):
        inc = scheduled[k]
        at_ms = cfg.start_ms + int(round(1000 * inc.at_s))
        rng = np.random.default_rng([cfg.seed, 2, k])
        out.append(KINDS[inc.kind](ctl, board, f"inc-{n:04d}-{inc.kind}", inc.vehicle_index, at_ms, inc.duration_s,
                                   dict(inc.params or {}), rng))
    return out


class IncidentBoard:
    """Every incident of a run and which vehicle each one holds.

    The simulator calls `run_second` at the start of every second, `on_substep` after every 10 Hz
    step of a vehicle whose acceleration an incident overrides, and `finish` after the last second.
    """

    def __init__(self, ctl: VehicleControls, cfg: SimConfig) -> None:
        self.active: list[Behaviour | None] = [None] * ctl.vehicle_count  # the incident holding each vehicle
        self.free_at_ms = np.full(ctl.vehicle_count, cfg.start_ms, dtype=np.int64)  # earliest next incident
        self.behaviours: list[Behaviour] = build_schedule(ctl, self, cfg)  # park members join as they start

    def run_second(self, t_ms: int) -> None:
        """Start the incidents that are due and ready, then let every active one shape this second."""
        for b in self.behaviours:  # members a park incident adds while starting get their turn in this pass
            if b.state == "pending" and b.at_ms <= t_ms:
                b.try_start(t_ms)
        for b in self.behaviours:
            if b.state == "active":
                b.on_second(t_ms)

    def on_substep(self, i: int, t_ms: int) -> None:
        """After a 10 Hz step of vehicle i, whose acceleration its incident overrides."""
        self.active[i].on_substep(i, t_ms)

    def is_free(self, i: int, t_ms: int) -> bool:
        """No incident holds vehicle i, and its last one ended long enough ago."""
        return self.active[i] is None and t_ms >= self.free_at_ms[i]

    def finish(self) -> None:
        for b in self.behaviours:
            b.finish()
