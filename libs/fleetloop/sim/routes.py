"""Routes, holds and tasks: where each vehicle drives next and where it stops.

Vans wander the city grid from drop to drop (greedy toward the task's target node, a depot stop to
charge when the battery runs low); trucks drive a highway leg to a far hub and back, turning in the
hub yard. A route is a deque of road pieces laid 400 m ahead of the vehicle; `load_piece` mirrors
the current piece, the speed limits ahead, the next junction and the next hold into `FleetState`.
"""

from __future__ import annotations

import math

import numpy as np

from fleetloop.sim.state import IDLE, INF, PAUSED, ROAD_NAMES, RUNNING, STATIC_SLOTS, FleetState, Vehicle
from fleetloop.sim.world import (
    DIRS,
    J_NONE,
    J_SIGNAL,
    CurveBank,
    Hold,
    build_sections,
    curve_piece,
    highway_leg,
    piece_end,
    reversed_sections,
    straight_piece,
)

LOOKAHEAD_M = 400.0


class Routes:
    """Builds every vehicle's route as it drives and keeps its holds and task.

    Draws from the simulator's `rng` as routes grow (turn choices, give-way stops, dwell times), so
    the order of calls is part of the simulation's determinism.
    """

    def __init__(self, vehicles: list[Vehicle], state: FleetState, params: dict, rng: np.random.Generator,
                 bank: CurveBank) -> None:
        self.vehicles, self.state, self.p, self.rng, self.bank = vehicles, state, params, rng, bank

    def start_vehicle(self, veh: Vehicle) -> None:
        """Place the vehicle at the start of its first task and lay its first pieces."""
        if veh.kind == "van":
            cmap = veh.city.map
            veh.node = veh.park.nodes[int(self.rng.integers(len(veh.park.nodes)))]
            veh.heading_dir = int(self.rng.choice(cmap.options(veh.node, int(self.rng.integers(4)))))
            veh.edge_s, veh.edge_trim = 0.0, 0.0
            veh.drop_k = int(self.rng.integers(len(veh.drop_nodes)))
            self._new_task(veh)
        else:
            cmap = veh.city.map
            hx, hy = cmap.xy((cmap.n - 1, 0))
            veh.hub_xyh = (hx + 500.0, hy - 500.0, 0.0)
            veh.leg_sections = highway_leg(self.rng, self.p["map"])
            veh.leg_outbound = True
            self._new_task(veh)
            self._append_leg(veh, veh.hub_xyh)
        self.load_piece(veh.index)

    def _new_task(self, veh: Vehicle) -> None:
        i, st = veh.index, self.state
        veh.task_n += 1
        veh.task_id = f"task-{veh.vehicle_id}-{veh.task_n:04d}"
        st.task_state[i] = RUNNING
        st.charging[i] = False
        st.parked[i] = False
        if veh.kind == "van":
            if st.state_of_charge[i] < self.p["energy"]["return_below"]:
                veh.target, veh.charge_next = veh.park.depot, True
                veh.task_id = f"chg-{veh.vehicle_id}-{veh.task_n:04d}"
            else:
                veh.target, veh.charge_next = veh.drop_nodes[veh.drop_k % len(veh.drop_nodes)], False
                veh.drop_k += 1

    # ------------------------------------------------------------------ laying pieces

    def _append_leg(self, veh: Vehicle, start_xyh: tuple[float, float, float]) -> None:
        sections = veh.leg_sections if veh.leg_outbound else reversed_sections(veh.leg_sections)
        s0 = veh.pieces[-1].s1 if veh.pieces else self.state.pos_m[veh.index]
        kin = self.p["kinematics"]
        pieces = build_sections(start_xyh, sections, s0, self.p["roads"], self.bank, kin["lat_accel_turn_mps2"])
        last = pieces[-1]
        last_end = last.s1
        stop_at = last_end - 60.0
        if veh.leg_outbound:
            veh.far_xyh = piece_end(last, self.bank)
        veh.pieces.extend(pieces)
        dwell = float(self.rng.uniform(*self.p["tasks"]["hub_dwell_s"]))
        veh.holds.append(Hold(stop_at, dwell, on_arrive=self._arrive_drop, on_release=self._release_task))
        veh.holds.sort(key=lambda h: h.pos)

    def _extend(self, veh: Vehicle, until_s: float) -> None:
        """Append pieces until the route reaches route position `until_s`."""
        while not veh.pieces or veh.pieces[-1].s1 < until_s:
            if veh.kind == "truck":
                veh.leg_outbound = not veh.leg_outbound
                # turn around in the hub yard (a 180 deg curve 12 m wide), then drive the leg back
                x, y, h = piece_end(veh.pieces[-1], self.bank)
                _, uy = self.bank.end_offset(math.pi)
                yard = curve_piece(veh.pieces[-1].s1, x, y, h, 12.0 / uy, math.pi, "urban", self.p["roads"],
                                   self.bank, self.p["kinematics"]["lat_accel_turn_mps2"])
                veh.pieces.append(yard)
                self._append_leg(veh, piece_end(yard, self.bank))
            else:
                self._extend_grid(veh)

    def _extend_grid(self, veh: Vehicle) -> None:
        cmap = veh.city.map
        kin = self.p["kinematics"]
        roads = self.p["roads"]
        node, d_in = veh.node, veh.heading_dir
        nxt = (node[0] + DIRS[d_in][0], node[1] + DIRS[d_in][1])
        d_out = self._decide(veh, nxt, d_in)
        in_park = any(nxt in r for r in cmap.park_regions)
        r = float(cmap.turn_offset["park" if in_park else "urban"]) if d_out != d_in else 0.0
        x0, y0 = cmap.xy(node)
        h = d_in * math.pi / 2
        x0 += DIRS[d_in][0] * veh.edge_trim
        y0 += DIRS[d_in][1] * veh.edge_trim
        length = cmap.block - veh.edge_trim - r
        road = cmap.road_of(node, nxt)
        straight = straight_piece(veh.edge_s, x0, y0, h, length, road, roads)
        node_s = veh.edge_s + cmap.block - veh.edge_trim
        straight.junction = cmap.junction[nxt]
        if straight.junction != J_NONE:
            straight.stop_line_s = node_s - cmap.stop_back
            if straight.junction == J_SIGNAL:
                cycle, offset = cmap.signal[nxt]
                straight.signal_cycle_s = cycle
                straight.signal_offset_s = offset + (cycle / 2 if d_in % 2 else 0.0)
            elif self.rng.random() < kin["yield_stop_prob"]:
                dwell = float(self.rng.uniform(*kin["yield_stop_s"]))
                veh.holds.append(Hold(straight.stop_line_s, dwell))
        veh.pieces.append(straight)
        if veh.drop_next_edge:
            veh.drop_next_edge = False
            dwell = float(self.rng.uniform(*self.p["tasks"]["drop_dwell_s"]))
            veh.holds.append(Hold(veh.edge_s + cmap.block / 2 - veh.edge_trim, dwell if not veh.charge_next else INF,
                                  on_arrive=self._arrive_drop, on_release=self._release_task))
        veh.holds.sort(key=lambda hd: hd.pos)
        s_next = straight.s1
        if d_out != d_in:
            angle = math.pi / 2 if d_out == (d_in + 1) % 4 else -math.pi / 2
            ux, _ = self.bank.end_offset(angle)
            turn_len = r / ux
            tx, ty = cmap.xy(nxt)
            tx -= DIRS[d_in][0] * r
            ty -= DIRS[d_in][1] * r
            out_road = cmap.road_of(nxt, (nxt[0] + DIRS[d_out][0], nxt[1] + DIRS[d_out][1]))
            turn = curve_piece(s_next, tx, ty, h, turn_len, angle, out_road, roads, self.bank,
                               kin["lat_accel_turn_mps2"])
            turn.junction = cmap.junction[nxt]
            veh.pieces.append(turn)
            s_next = turn.s1
        veh.node, veh.heading_dir = nxt, d_out
        veh.edge_s, veh.edge_trim = s_next, r

    def _decide(self, veh: Vehicle, node: tuple[int, int], d_in: int) -> int:
        """Leaving direction at `node`: greedy toward the task target, straight on to a drop."""
        cmap = veh.city.map
        opts = cmap.options(node, d_in)
        if veh.target is not None and node == veh.target:
            veh.target = None
            veh.drop_next_edge = True
            return d_in if d_in in opts else opts[int(self.rng.integers(len(opts)))]
        if veh.target is None:
            return d_in if d_in in opts and self.rng.random() < 0.7 else opts[int(self.rng.integers(len(opts)))]
        tx, ty = veh.target

        def dist(d: int) -> int:
            return abs(node[0] + DIRS[d][0] - tx) + abs(node[1] + DIRS[d][1] - ty)

        here = abs(node[0] - tx) + abs(node[1] - ty)
        closer = [d for d in opts if dist(d) < here]
        if closer:
            if d_in in closer and self.rng.random() < 0.6:
                return d_in
            return closer[int(self.rng.integers(len(closer)))]
        return opts[int(self.rng.integers(len(opts)))]

    # ------------------------------------------------------------------ mirroring into the arrays

    def load_piece(self, i: int, from_sample: int = 0, samples: dict[str, np.ndarray] | None = None) -> None:
        """Mirror vehicle i's current piece, upcoming limits, junctions and hold into the state arrays;
        inside a second, also into the (n, 10) piece columns of `samples` from `from_sample` on."""
        veh, st = self.vehicles[i], self.state
        s = st.pos_m[i]
        self._extend(veh, s + LOOKAHEAD_M)
        while veh.pieces[0].s1 <= s:
            veh.pieces.popleft()
        p = veh.pieces[0]
        self._extend(veh, p.s1 + LOOKAHEAD_M)  # constraints are refreshed per piece: see past its end
        st.piece_x0_m[i], st.piece_y0_m[i], st.piece_heading_rad[i] = p.x0, p.y0, p.h0
        st.piece_length_m[i], st.piece_turn_rad[i], st.piece_start_m[i] = p.length, p.angle, p.s0
        st.piece_table[i] = p.table
        st.speed_limit_mps[i] = p.limit_mps
        st.piece_end_m[i] = p.s1
        st.cruise_mps[i] = min(p.limit_mps * self.p["kinematics"]["cruise_factor"], st.speed_cap_mps[i])
        if samples is not None and from_sample < 10:
            for name, value in (("x0", p.x0), ("y0", p.y0), ("h0", p.h0), ("L", p.length), ("ang", p.angle),
                                ("tab", p.table), ("s0", p.s0)):
                samples[name][i, from_sample:] = value
        st.road_index[i] = ROAD_NAMES.index(p.road)
        st.lane_count[i] = p.lanes
        st.upcoming_pos_m[i] = INF
        st.upcoming_limit_mps[i] = 0.0
        k = 0
        for q in list(veh.pieces)[1:]:
            if q.s0 > s + LOOKAHEAD_M or k >= STATIC_SLOTS - 1:
                break
            st.upcoming_pos_m[i, k], st.upcoming_limit_mps[i, k] = q.s0, q.limit_mps
            k += 1
        st.signal_pos_m[i] = INF
        st.junction_type[i] = J_NONE
        for q in veh.pieces:
            if q.junction != J_NONE and q.angle == 0.0 and q.stop_line_s >= s - 0.5:
                st.junction_type[i] = q.junction
                if q.junction == J_SIGNAL:
                    st.signal_pos_m[i], st.signal_offset_s[i], st.signal_cycle_s[i] = \
                        q.stop_line_s, q.signal_offset_s, q.signal_cycle_s
                else:
                    st.upcoming_pos_m[i, STATIC_SLOTS - 1] = q.stop_line_s
                    st.upcoming_limit_mps[i, STATIC_SLOTS - 1] = self.p["kinematics"]["yield_speed_mps"]
                break
        st.through_light[i] = False
        self._load_hold(i)

    def _load_hold(self, i: int) -> None:
        veh = self.vehicles[i]
        self.state.hold_pos_m[i] = veh.holds[0].pos if veh.holds else INF

    # ------------------------------------------------------------------ holds

    def add_hold(self, i: int, hold: Hold) -> None:
        """Insert a hold into vehicle i's route (incidents use it for planned stops)."""
        veh = self.vehicles[i]
        veh.holds.append(hold)
        veh.holds.sort(key=lambda hd: hd.pos)
        self._load_hold(i)

    def release_hold(self, i: int, hold: Hold, t_ms: int) -> None:
        """End a hold now (an incident decides when an open-ended stop is over)."""
        veh = self.vehicles[i]
        if hold in veh.holds:
            veh.holds.remove(hold)
        if hold.arrived_ms is not None and self.state.dwell_end_ms[i] != INF:
            self.state.dwell_end_ms[i] = INF
        if hold.on_release:
            hold.on_release(i, t_ms)
        self._load_hold(i)

    def holds_and_dwells(self, t_ms: int) -> None:
        """Start the dwell of vehicles that stopped at their hold, end the dwells that are over (1 Hz)."""
        st = self.state
        arrive = (st.speed_mps == 0.0) & (st.hold_pos_m - st.pos_m < 1.0) & (st.dwell_end_ms == INF)
        for i in np.flatnonzero(arrive).tolist():
            hold = self.vehicles[i].holds[0]
            if hold.arrived_ms is None:
                hold.arrived_ms = t_ms
                st.dwell_end_ms[i] = t_ms + 1000.0 * hold.dwell_s
                if hold.on_arrive:
                    hold.on_arrive(i, t_ms)
        for i in np.flatnonzero(st.dwell_end_ms <= t_ms).tolist():
            st.dwell_end_ms[i] = INF
            self.release_hold(i, self.vehicles[i].holds[0], t_ms)

    # ------------------------------------------------------------------ task stops

    def _arrive_drop(self, i: int, t_ms: int) -> None:
        veh, st = self.vehicles[i], self.state
        if veh.kind == "van" and veh.charge_next:
            st.task_state[i] = IDLE
            st.charging[i] = True
            st.parked[i] = True
            hold = veh.holds[0]
            en = self.p["energy"]
            hold.dwell_s = max(60.0, (en["charged"] - st.state_of_charge[i]) / en["charge_per_s"])
            st.dwell_end_ms[i] = t_ms + 1000.0 * hold.dwell_s
        else:
            st.task_state[i] = PAUSED
            if veh.kind == "truck" and st.state_of_charge[i] < 0.6:
                st.charging[i] = True

    def _release_task(self, i: int, t_ms: int) -> None:
        """A drop, a charge or a hub dwell is over: the next task starts."""
        self._new_task(self.vehicles[i])
