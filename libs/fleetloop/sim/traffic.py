"""Other road users as the ego's perception sees them: a lead vehicle in the ego lane on clear straights
and agents beside the path (pedestrians on sidewalks, cyclists, parked cars, oncoming traffic), all
outside the ego path so normal driving triggers nothing. Updated once a second, vectorised."""

from __future__ import annotations

import numpy as np

from fleetloop.sim.state import ROAD_NAMES, RUNNING, FleetState
from fleetloop.v1 import common_pb2

_CLASSES = {"car": common_pb2.OBJECT_CLASS_CAR, "truck": common_pb2.OBJECT_CLASS_TRUCK,
            "bus": common_pb2.OBJECT_CLASS_BUS, "pedestrian": common_pb2.OBJECT_CLASS_PEDESTRIAN,
            "cyclist": common_pb2.OBJECT_CLASS_CYCLIST, "tricycle": common_pb2.OBJECT_CLASS_TRICYCLE,
            "cone": common_pb2.OBJECT_CLASS_CONE, "unknown": common_pb2.OBJECT_CLASS_UNKNOWN}
# Agent kinds per road: (class, length, width, own speed m/s along the road (negative: oncoming),
# lateral position band (m, + left)). Pedestrians walk on the sidewalks, parked cars and cones sit on
# the kerb, other traffic uses the neighbour lanes: all outside the ego path.
_AGENTS = {
    "park": [("pedestrian", 0.5, 0.5, 1.2, (3.0, 6.0)), ("cyclist", 1.8, 0.6, 4.0, (-3.5, -2.7)),
             ("tricycle", 2.8, 1.2, 3.0, (-3.8, -2.9)), ("cone", 0.4, 0.4, 0.0, (2.8, 4.0)),
             ("pedestrian", 0.5, 0.5, -1.2, (-6.0, -3.0))],
    "urban": [("car", 4.6, 1.9, -11.0, (3.0, 4.0)), ("car", 4.6, 1.9, 0.0, (-4.0, -3.0)),
              ("pedestrian", 0.5, 0.5, 1.3, (5.0, 8.0)), ("cyclist", 1.8, 0.6, 4.5, (-3.6, -2.8)),
              ("tricycle", 2.8, 1.2, 3.5, (-3.8, -2.9)), ("bus", 12.0, 2.5, -9.0, (3.2, 4.2)),
              ("truck", 8.0, 2.4, 0.0, (3.3, 4.0)), ("unknown", 1.0, 1.0, 0.0, (4.0, 7.0))],
    "tunnel": [("car", 4.6, 1.9, 0.0, (3.0, 4.0)), ("truck", 9.0, 2.5, 0.0, (3.2, 4.0))],
    "elevated": [("car", 4.6, 1.9, 0.0, (3.0, 4.0)), ("truck", 9.0, 2.5, 0.0, (3.2, 4.0)),
                 ("car", 4.6, 1.9, 0.0, (-4.0, -3.0))],
    "highway": [("car", 4.6, 1.9, 3.0, (3.0, 4.0)), ("truck", 12.0, 2.5, -2.0, (-4.0, -3.2)),
                ("car", 4.6, 1.9, 5.0, (6.5, 7.5)), ("bus", 12.0, 2.5, 1.0, (3.2, 4.0))],
}


class Traffic:
    """Moves the lead vehicle and the agent slots of `state` (1 Hz); draws from `rng`."""

    def __init__(self, state: FleetState, params: dict, rng: np.random.Generator) -> None:
        self.state, self.p, self.rng = state, params, rng
        self._agent_share = np.array([params["agents"]["active_share"][r] for r in ROAD_NAMES])
        widest = max(len(kinds) for kinds in _AGENTS.values())
        self._agent_kinds = np.array([len(_AGENTS[r]) for r in ROAD_NAMES])
        self._agent_table = np.zeros((len(ROAD_NAMES), widest, 6))
        for r, name in enumerate(ROAD_NAMES):
            for m, (cls, length, width, own_v, (y_lo, y_hi)) in enumerate(_AGENTS[name]):
                self._agent_table[r, m] = (_CLASSES[cls], length, width, own_v, y_lo, y_hi)

    def lead_update(self) -> None:
        """A lead appears ahead on clear straights at speed, keeps a time gap it closes gently, leaves."""
        st = self.state
        ld = self.p["lead"]
        n = st.n
        clear = st.straight_ahead_m() > ld["clear_ahead_m"]
        allowed = clear & (st.speed_mps > 3.0) & (st.road_index != 0) & ~st.override_on & (st.task_state == RUNNING)
        r1, r2 = self.rng.random(n), self.rng.random(n)
        g_des = ld["standstill_gap_m"] + ld["time_gap_s"] * st.speed_mps
        start = allowed & ~st.lead_present & (r1 < ld["start_prob_per_s"])
        stop = st.lead_present & (~allowed | (r2 < ld["end_prob_per_s"]))
        st.lead_present = (st.lead_present | start) & ~stop
        if start.any():
            extra = self.rng.uniform(*ld["start_extra_gap_m"], n)
            st.lead_gap_m = np.where(start, g_des + extra, st.lead_gap_m)
            for i in np.flatnonzero(start).tolist():
                st.lead_track_id[i] = st.new_track_id()
                st.lead_class[i] = common_pb2.OBJECT_CLASS_TRUCK if r2[i] < 0.3 else common_pb2.OBJECT_CLASS_CAR
        cm = ld["closing_max_mps"]
        st.lead_rel_speed_mps = np.clip(0.15 * (g_des - st.lead_gap_m), -cm, cm)
        st.lead_gap_m = np.maximum(st.lead_gap_m + st.lead_rel_speed_mps, ld["standstill_gap_m"])

    def agents_update(self, t_ms: int) -> None:
        """Agents beside the path: move with their own speed, expire, respawn ahead (vectorised)."""
        st = self.state
        ag = self.p["agents"]
        n, k = st.agent_on.shape
        ts = t_ms / 1000.0
        st.agent_x_m += st.agent_rel_vx_mps
        st.agent_on &= (st.agent_until_s > ts) & (st.agent_x_m > -30.0) & (st.agent_x_m < 90.0)
        r = self.rng.random((n, 5, k))
        road = st.road_index[:, None]
        spawn = ~st.agent_on & (r[:, 0] < self._agent_share[road] * 0.25)
        pick = (r[:, 1] * self._agent_kinds[road]).astype(np.int64)
        kt = self._agent_table[road, pick]  # (n, k, 6): class, length, width, own speed, y low, y high
        st.agent_class = np.where(spawn, kt[..., 0].astype(np.int64), st.agent_class)
        st.agent_length_m = np.where(spawn, kt[..., 1], st.agent_length_m)
        st.agent_width_m = np.where(spawn, kt[..., 2], st.agent_width_m)
        st.agent_speed_mps = np.where(spawn, kt[..., 3], st.agent_speed_mps)
        st.agent_y_m = np.where(spawn, kt[..., 4] + (kt[..., 5] - kt[..., 4]) * r[:, 2], st.agent_y_m)
        lo, hi = ag["spawn_ahead_m"]
        st.agent_x_m = np.where(spawn, lo + (hi - lo) * r[:, 3], st.agent_x_m)
        unknown = kt[..., 0] == common_pb2.OBJECT_CLASS_UNKNOWN
        conf = np.where(unknown, 0.55 + 0.25 * r[:, 4], 0.62 + 0.37 * r[:, 4])
        st.agent_confidence = np.where(spawn, conf, st.agent_confidence)
        lo, hi = ag["lifetime_s"]
        st.agent_until_s = np.where(spawn, ts + lo + (hi - lo) * r[:, 4], st.agent_until_s)
        new_ids = 128 + (st.tracks_issued + np.cumsum(spawn.ravel()).reshape(n, k)) % 16000
        st.tracks_issued += int(spawn.sum())
        st.agent_track_id = np.where(spawn, new_ids, st.agent_track_id)
        st.agent_on |= spawn
        st.agent_rel_vx_mps = st.agent_speed_mps - st.speed_mps[:, None]
