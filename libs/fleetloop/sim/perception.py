"""What each vehicle perceives once a second, as PerceptionSummary wire bytes: the lead and the agents
of `FleetState`, the environment (weather, light, road, junction, lanes), the maneuver and the
planner's top costs, plus what incidents show this second (`PerceptionHooks`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetloop.sim import wire
from fleetloop.sim.state import ROAD_CODES, FleetState
from fleetloop.sim.world import J_NONE, J_YIELD, City, light_of
from fleetloop.v1 import common_pb2

_MANEUVERS = ("cruise", "follow", "stop", "turn_left", "turn_right", "lane_change_left", "lane_change_right",
              "yield")
_MANEUVER_BYTES = [wire.length_delimited(wire.K_MANEUVER, m.encode()) for m in _MANEUVERS]


@dataclass
class PerceptionHooks:
    """What incidents add to this second's perception, by vehicle index; cleared every second."""

    objects: dict[int, list[common_pb2.PerceivedObject]] = field(default_factory=dict)  # shown besides the rest
    no_lead: set[int] = field(default_factory=set)  # the lead is hidden
    planner_costs: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # replace the drawn ones
    unprotected_turn: set[int] = field(default_factory=set)
    # summary-level fields (the criticality contract: position reference, ego box, in-second minima)
    summary: dict[int, common_pb2.PerceptionSummary] = field(default_factory=dict)

    def clear(self) -> None:
        self.summary.clear()
        self.objects.clear()
        self.no_lead.clear()
        self.planner_costs.clear()
        self.unprotected_turn.clear()


class Perception:
    """Builds every vehicle's PerceptionSummary body; draws the planner's top costs from `rng`."""

    def __init__(self, state: FleetState, cities: list[City], params: dict, rng: np.random.Generator,
                 start_ms: int, hooks: PerceptionHooks) -> None:
        self.state, self.cities, self.p, self.rng, self.start_ms, self.hooks = \
            state, cities, params, rng, start_ms, hooks

    def summaries(self, t_ms: int, road0: np.ndarray) -> list[bytes]:
        """Wire bytes of every vehicle's PerceptionSummary at the start of the second (`road0`: road
        index of each vehicle then)."""
        st, hooks = self.state, self.hooks
        n, k = st.agent_on.shape
        objs = wire.OBJECT.empty((n, k + 1))
        objs["size"] = wire.OBJECT.body_size
        lead_on = st.lead_present.copy()
        for i in hooks.no_lead:
            lead_on[i] = False
        on = np.concatenate([lead_on[:, None], st.agent_on], axis=1)
        lead, agents = objs[:, 0], objs[:, 1:]
        lead["track_id"], agents["track_id"] = wire.track_id_bytes(st.lead_track_id), \
            wire.track_id_bytes(st.agent_track_id)
        lead["object_class"], agents["object_class"] = st.lead_class, st.agent_class
        lead["rel_x_m"], agents["rel_x_m"] = st.lead_gap_m, st.agent_x_m
        agents["rel_y_m"] = st.agent_y_m
        lead["rel_vx_mps"], agents["rel_vx_mps"] = st.lead_rel_speed_mps, st.agent_rel_vx_mps
        lead["length_m"], agents["length_m"] = np.where(st.lead_class == common_pb2.OBJECT_CLASS_TRUCK, 9.0, 4.6), \
            st.agent_length_m
        lead["width_m"], agents["width_m"] = 1.9, st.agent_width_m
        lead["confidence"], agents["confidence"] = 0.95, st.agent_confidence
        raw = objs[on].tobytes()  # active objects, vehicle by vehicle
        one = wire.OBJECT.dtype.itemsize
        ends = (np.cumsum(on.sum(axis=1)) * one).tolist()
        summ = wire.SUMMARY.empty(n)
        hour = (t_ms - self.start_ms) // 3_600_000
        utc_h = (t_ms / 3_600_000.0) % 24
        summ["weather"] = np.array([c.weather[hour] for c in self.cities])[st.city_index]
        summ["light"] = np.array([light_of((utc_h + c.utc_offset_h) % 24) for c in self.cities])[st.city_index]
        summ["road_type"] = ROAD_CODES[road0]
        ahead = st.signal_pos_m - st.pos_m
        near_j = np.minimum(ahead, st.upcoming_pos_m[:, -1] - st.pos_m) < 30.0
        in_turn = np.abs(st.piece_turn_rad) > 0.5
        summ["junction_type"] = np.where(near_j | in_turn, st.junction_type, J_NONE)
        summ["speed_limit_mps"] = st.speed_limit_mps
        summ["lane_count"] = st.lane_count
        summ["lane_index"] = st.lane_index
        summ["crosswalk"] = (ahead < 25.0) & (ahead > -5.0)
        pl = self.p["planner"]
        r = self.rng.random((3, n))
        c1 = 1.0 + 4.0 * r[0]
        c2 = c1 * (1 + pl["cost_gap"][0] + (pl["cost_gap"][1] - pl["cost_gap"][0]) * r[1])
        summ["planner_top_costs"] = np.stack([c1, c2, c2 * (1.05 + 0.45 * r[2])], axis=1)
        for i, costs in hooks.planner_costs.items():
            summ["planner_top_costs"][i] = costs
        for i in hooks.unprotected_turn:
            summ["unprotected_turn"][i] = True
        man = np.where(lead_on, 1, 0)
        man = np.where(st.lane_change_on, np.where(st.lane_change_shift_m > 0, 5, 6), man)
        man = np.where(in_turn, np.where(st.piece_turn_rad > 0, 3, 4), man)
        man = np.where((st.speed_mps < 3.5) & (st.junction_type == J_YIELD) & near_j, 7, man)
        man = np.where(st.speed_mps < 0.3, 2, man).tolist()
        srt = summ.tobytes()
        ssz = wire.SUMMARY.dtype.itemsize
        starts = [0] + ends[:-1]
        out = [b"".join((srt[i * ssz:(i + 1) * ssz], _MANEUVER_BYTES[man[i]], raw[starts[i]:ends[i]]))
               for i in range(n)]
        for i, extra in hooks.objects.items():
            out[i] += b"".join(wire.length_delimited(wire.K_OBJECTS, o.SerializeToString()) for o in extra)
        for i, fields in hooks.summary.items():
            out[i] += fields.SerializeToString()  # concatenated protobuf messages merge their fields
        return out
