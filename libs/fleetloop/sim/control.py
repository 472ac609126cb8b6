"""The controls incidents drive a vehicle with: the one surface between `fleetloop.sim.incidents` and the
rest of the simulator.

An incident reads a vehicle's motion and task, overrides its acceleration, stops it at a hold, changes
its mode, silences it, makes it weave, emits its events, adds to what it perceives this second and
records its ground truth, all through `VehicleControls`. It never sees the state arrays or the routes.
"""

from __future__ import annotations

import math

from fleetloop.sim.events import EventQueue
from fleetloop.sim.ground_truth import GroundTruth, Incident, VehicleInfo
from fleetloop.sim.perception import PerceptionHooks
from fleetloop.sim.routes import Routes
from fleetloop.sim.state import FleetState
from fleetloop.sim.world import Hold, Piece
from fleetloop.v1 import common_pb2


class VehicleControls:
    """Read and steer vehicle `i` of the fleet; `params` is the simulator's sim.yaml."""

    def __init__(self, state: FleetState, routes: Routes, hooks: PerceptionHooks, events: EventQueue,
                 truth: GroundTruth, params: dict, seed: int, end_ms: int) -> None:
        self._state, self._routes, self._hooks, self._events, self._truth = state, routes, hooks, events, truth
        self.params, self.seed, self.end_ms = params, seed, end_ms
        self.vehicle_count = state.n

    # ------------------------------------------------------------------ reading

    def vehicle(self, i: int) -> VehicleInfo:
        """Who vehicle i is: id, park, city, kind (van / truck), software version."""
        return self._truth.vehicles[i]

    def speed_mps(self, i: int) -> float:
        return float(self._state.speed_mps[i])

    def accel_mps2(self, i: int) -> float:
        return float(self._state.accel_mps2[i])

    def route_pos_m(self, i: int) -> float:
        """Position along the vehicle's route (m); holds are placed in this coordinate."""
        return float(self._state.pos_m[i])

    def speed_limit_mps(self, i: int) -> float:
        return float(self._state.speed_limit_mps[i])

    def task_state(self, i: int) -> int:
        return int(self._state.task_state[i])

    def mode(self, i: int) -> int:
        return int(self._state.mode[i])

    def online(self, i: int) -> bool:
        return bool(self._state.online[i])

    def changing_lane(self, i: int) -> bool:
        return bool(self._state.lane_change_on[i])

    def weaving(self, i: int) -> bool:
        return bool(self._state.weave_on[i])

    def straight_ahead_m(self, i: int) -> float:
        """Metres of straight road ahead of vehicle i before a curve, junction line or hold."""
        return self._state.straight_ahead_m_of(i)

    def piece(self, i: int) -> Piece:
        """The road piece vehicle i is on."""
        return self._routes.vehicles[i].pieces[0]

    def override_accel_mps2(self, i: int) -> float:
        """The acceleration the override aims for (meaningful while `override` is on)."""
        return float(self._state.override_accel_mps2[i])

    # ------------------------------------------------------------------ motion

    def override(self, i: int, accel_mps2: float, jerk_mps3: float) -> None:
        """Drive the acceleration toward `accel_mps2` at `jerk_mps3`, past the comfort limits, until released."""
        st = self._state
        st.override_on[i], st.override_accel_mps2[i], st.override_jerk_mps3[i] = True, accel_mps2, jerk_mps3

    def release_override(self, i: int) -> None:
        self._state.override_on[i] = False

    def add_hold(self, i: int, hold: Hold) -> None:
        """Stop at `hold.pos` (route position) and wait `hold.dwell_s` (inf: until `release_hold`)."""
        self._routes.add_hold(i, hold)

    def release_hold(self, i: int, hold: Hold, t_ms: int) -> None:
        self._routes.release_hold(i, hold, t_ms)

    def cap_speed(self, i: int, speed_mps: float = math.inf) -> None:
        """Keep vehicle i at or below `speed_mps` (inf: no cap) from the next second on."""
        self._state.speed_cap_mps[i] = speed_mps

    def start_weave(self, i: int, start_s: float, amp_rps: float, period_s: float, lobes: int) -> None:
        """Yaw-rate oscillation from epoch second `start_s`: `lobes` half periods of `period_s`."""
        st = self._state
        st.weave_on[i], st.weave_start_s[i], st.weave_amp_rps[i] = True, start_s, amp_rps
        st.weave_period_s[i], st.weave_lobes[i] = period_s, lobes

    def end_weave(self, i: int) -> None:
        """Stop vehicle `i`'s weave; the lane keeper then re-centres the fleet's lateral offsets."""
        self._state.weave_on[i] = False
        self._state.recentring = True

    # ------------------------------------------------------------------ mode, connectivity, events

    def set_mode(self, i: int, mode: int) -> None:
        """DRIVING_MODE_* of vehicle i from now on (events announcing it are the incident's to emit)."""
        self._state.mode[i] = mode

    def set_online(self, i: int, online: bool) -> None:
        """An offline vehicle keeps driving but sends nothing."""
        self._state.online[i] = online

    def emit_event(self, i: int, t_ms: int, event: common_pb2.VehicleEvent) -> None:
        """Queue a vehicle event at `t_ms` (inside the current second) if the vehicle is online."""
        self._events.emit(i, t_ms, event)

    # ------------------------------------------------------------------ perception this second

    def new_track_id(self) -> int:
        return self._state.new_track_id()

    def show_objects(self, i: int, objects: list[common_pb2.PerceivedObject]) -> None:
        """Add objects to vehicle i's perception of this second."""
        self._hooks.objects.setdefault(i, []).extend(objects)

    def set_summary_fields(self, i: int, fields: common_pb2.PerceptionSummary) -> None:
        """Summary-level fields of vehicle i's perception this second (e.g. the criticality contract's
        position_reference, ego box and in-second minima); merged into the summary."""
        self._hooks.summary[i] = fields

    def hide_lead(self, i: int) -> None:
        """Leave the simulated lead vehicle out of vehicle i's perception this second."""
        self._hooks.no_lead.add(i)

    def set_planner_costs(self, i: int, costs: tuple[float, float, float]) -> None:
        """The planner's top three costs in vehicle i's summary this second."""
        self._hooks.planner_costs[i] = costs

    def mark_unprotected_turn(self, i: int) -> None:
        self._hooks.unprotected_turn.add(i)

    # ------------------------------------------------------------------ ground truth

    def record_incident(self, incident: Incident) -> None:
        self._truth.incidents.append(incident)
