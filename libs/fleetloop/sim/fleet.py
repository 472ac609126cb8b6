"""The deterministic fleet simulator.

One `FleetSimulator.seconds()` step advances every vehicle by one second of event time: ten 10 Hz
kinematic steps vectorised over the fleet with numpy (jerk-limited speed control toward speed
limits, braking curves to stop lines and holds, smooth curvature in turns, lane changes), then the
1 Hz state (tasks, perception, energy, incidents) and the messages of that second. Nothing reads
the wall clock; the same `SimConfig` gives byte-identical messages and ground truth.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from fleetloop import topics
from fleetloop.sim import wire
from fleetloop.sim.config import SimConfig, load_sim_params
from fleetloop.sim.ground_truth import GroundTruth, Incident, MileageRow, VehicleInfo
from fleetloop.sim.incidents import Behaviour, build_schedule
from fleetloop.sim.world import (
    DIRS,
    J_NONE,
    J_SIGNAL,
    J_YIELD,
    ROAD_TYPES,
    City,
    CityMap,
    CurveBank,
    Hold,
    Park,
    Piece,
    build_sections,
    curve_piece,
    highway_leg,
    latlon,
    light_of,
    reversed_sections,
    straight_piece,
    weather_hours,
)
from fleetloop.v1 import common_pb2

SCHEMA_VERSION = 1
AUTO, REMOTE, MANUAL = (common_pb2.DRIVING_MODE_AUTONOMOUS, common_pb2.DRIVING_MODE_REMOTE,
                        common_pb2.DRIVING_MODE_MANUAL)
IDLE, RUNNING, PAUSED = common_pb2.TASK_STATE_IDLE, common_pb2.TASK_STATE_RUNNING, common_pb2.TASK_STATE_PAUSED
LOOKAHEAD_M = 400.0
STATIC_SLOTS = 4  # next piece limits + the next give-way line
INF = math.inf
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
_ROAD_NAMES = tuple(ROAD_TYPES)  # index <-> road name
_MANEUVERS = ("cruise", "follow", "stop", "turn_left", "turn_right", "lane_change_left", "lane_change_right",
              "yield")


@dataclass
class SimSecond:
    """One simulated second: its start (epoch ms) and the (topic, envelope) messages of all vehicles."""

    t_ms: int
    messages: list[tuple[str, common_pb2.Envelope]]


@dataclass
class Vehicle:
    """Python-side state of one vehicle: route pieces, navigation, holds and task."""

    index: int
    vehicle_id: str
    kind: str
    city: City
    park: Park
    route: str
    software_version: str
    pieces: deque = field(default_factory=deque)
    holds: list = field(default_factory=list)
    task_n: int = 0
    task_id: str = ""
    # van navigation on the grid
    node: tuple[int, int] = (0, 0)
    heading_dir: int = 0
    edge_s: float = 0.0
    edge_trim: float = 0.0
    drop_nodes: list = field(default_factory=list)
    drop_k: int = 0
    target: tuple[int, int] | None = None
    drop_next_edge: bool = False
    charge_next: bool = False
    # truck legs
    leg_sections: list = field(default_factory=list)
    leg_outbound: bool = True
    hub_xyh: tuple[float, float, float] = (0.0, 0.0, 0.0)
    far_xyh: tuple[float, float, float] = (0.0, 0.0, 0.0)


class FleetSimulator:
    """Simulates a fleet second by second; see the module docstring.

    `seconds()` yields one `SimSecond` per simulated second in event-time order; after it is
    exhausted `ground_truth` holds every incident that happened, the cloud-visible mileage and the
    vehicles.
    """

    def __init__(self, config: SimConfig) -> None:
        config.validate()
        self.cfg = config
        self.p = load_sim_params()
        self.rng = np.random.default_rng(config.seed)
        self.bank = CurveBank()
        kin = self.p["kinematics"]
        self.dt = float(kin["dt_s"])
        self.end_ms = config.start_ms + 1000 * config.duration_s
        self.ground_truth = GroundTruth()
        self._build_world()
        self._build_fleet()
        self._init_arrays()
        self._strings_of: list[bytes] = [b""] * self.n
        for v in self.vehicles:
            self._start_vehicle(v)
        self.behaviours: list[Behaviour] = build_schedule(self, config)
        self.active: list[Behaviour | None] = [None] * self.n
        self.free_at_ms = np.full(self.n, config.start_ms, dtype=np.int64)
        self._mileage: dict[tuple, list] = {}
        self._day: str | None = None
        self._flush_mileage()
        self._finished = False

    # ------------------------------------------------------------------ world and fleet

    def _build_world(self) -> None:
        fleet = self.p["fleet"]
        n_cities = min(len(self.p["cities"]), max(1, math.ceil(self.cfg.vehicles / fleet["vehicles_per_city"])))
        hours = self.cfg.duration_s // 3600 + 2
        self.cities: list[City] = []
        for spec in self.p["cities"][:n_cities]:
            cmap = CityMap(self.p["map"], self.p["roads"], self.rng, self.bank)
            short = spec["name"][:2]
            parks = []
            for k, region in enumerate(cmap.park_regions):
                nodes = sorted(region)
                parks.append(Park(name=f"{short}-park-{k + 1}", city=spec["name"], nodes=nodes,
                                  depot=nodes[len(nodes) // 2]))
            hub = Park(name=f"{short}-hub", city=spec["name"], nodes=[], depot=(0, 0))
            self.cities.append(City(name=spec["name"], lat0=spec["lat0"], lon0=spec["lon0"],
                                    utc_offset_h=spec["utc_offset_h"], map=cmap, parks=parks, hub=hub,
                                    weather=weather_hours(self.rng, hours)))

    def _build_fleet(self) -> None:
        fleet = self.p["fleet"]
        n = self.cfg.vehicles
        self.n = n
        n_trucks = int(round(n * fleet["truck_share"])) if n >= 4 else 0
        versions = [v["version"] for v in fleet["software_versions"]]
        shares = np.array([v["share"] for v in fleet["software_versions"]], dtype=float)
        self.vehicles: list[Vehicle] = []
        tasks = self.p["tasks"]
        for i in range(n):
            kind = "truck" if i % max(1, round(n / max(n_trucks, 1))) == 1 and n_trucks and \
                sum(v.kind == "truck" for v in self.vehicles) < n_trucks else "van"
            city = self.cities[i % len(self.cities)]
            sw = versions[int(self.rng.choice(len(versions), p=shares / shares.sum()))]
            vid = f"veh-{i + 1:04d}"
            if kind == "van":
                park = city.parks[(i // len(self.cities)) % len(city.parks)]
                route_k = int(self.rng.integers(1, 4))
                veh = Vehicle(i, vid, kind, city, park, f"{park.name}-r{route_k}", sw)
                cmap = city.map
                n_stops = int(self.rng.integers(tasks["route_stops"][0], tasks["route_stops"][1] + 1))
                urban = [nd for nd in cmap.junction_nodes if not any(nd in r for r in cmap.park_regions)]
                for _ in range(n_stops):
                    if self.rng.random() < tasks["urban_drop_share"]:
                        veh.drop_nodes.append(urban[int(self.rng.integers(len(urban)))])
                    else:
                        veh.drop_nodes.append(park.nodes[int(self.rng.integers(len(park.nodes)))])
            else:
                hub = city.hub
                leg = int(self.rng.integers(1, 4))
                veh = Vehicle(i, vid, kind, city, hub, f"G{leg * 2 + 40}-{city.name}-{leg}", sw)
            self.vehicles.append(veh)
            self.ground_truth.vehicles.append(VehicleInfo(vid, veh.park.name, city.name, kind, sw))
        self._prefix = [wire.envelope_prefix(SCHEMA_VERSION, v.vehicle_id) for v in self.vehicles]

    def _init_arrays(self) -> None:
        n = self.n
        z = lambda: np.zeros(n)  # noqa: E731
        self.s, self.v, self.a = z(), z(), z()
        self.px0, self.py0, self.ph0, self.pL, self.pang, self.ps0 = z(), z(), z(), z(), z(), z()
        self.ptab = np.zeros(n, dtype=np.int64)
        self.plimit, self.pend, self.vlim = z(), z(), z()
        self.proad = np.zeros(n, dtype=np.int64)
        self._rec: dict[str, np.ndarray] | None = None
        self.c_pos = np.full((n, STATIC_SLOTS), INF)
        self.c_v = np.zeros((n, STATIC_SLOTS))
        self.sig_pos, self.sig_off, self.sig_cycle = np.full(n, INF), z(), np.ones(n)
        self.sig_junction = np.zeros(n, dtype=np.int64)
        self.commit = np.zeros(n, dtype=bool)
        self.hold_pos = np.full(n, INF)
        self.dwell_end = np.full(n, INF)
        self.v_cap = np.full(n, INF)
        self.ovr = np.zeros(n, dtype=bool)
        self.ovr_a, self.ovr_j = z(), z()
        is_truck = np.array([v.kind == "truck" for v in self.vehicles])
        kin = self.p["kinematics"]
        self.a_max = np.where(is_truck, kin["accel_max_mps2"]["truck"], kin["accel_max_mps2"]["van"])
        self.wheelbase = np.where(is_truck, kin["wheelbase_m"]["truck"], kin["wheelbase_m"]["van"])
        en = self.p["energy"]
        self.use_per_m = np.where(is_truck, en["use_per_m"]["truck"], en["use_per_m"]["van"])
        # lane change (distance-based S-curve) and weaving (time-based yaw oscillation)
        self.lc_on = np.zeros(n, dtype=bool)
        self.lc_s0, self.lc_len, self.lc_d0, self.lc_delta = z(), np.ones(n), z(), z()
        self.lc_return_ms = np.full(n, INF)
        self.lane = np.zeros(n, dtype=np.int64)
        self.w_on = np.zeros(n, dtype=bool)
        self.w_t0, self.w_amp, self.w_period, self.w_lobes = z(), z(), np.ones(n), np.ones(n)
        self.psi_w, self.d_w = z(), z()
        self._recentre = False
        # 1 Hz state
        self.mode = np.full(n, AUTO, dtype=np.int64)
        self.task_state = np.full(n, RUNNING, dtype=np.int64)
        self.online = np.ones(n, dtype=bool)
        self.charging = np.zeros(n, dtype=bool)
        self.parked = np.zeros(n, dtype=bool)
        self.soc = self.rng.uniform(0.45, 1.0, n)
        self.odometer = self.rng.uniform(1e6, 8e7, n)
        self.temp = self.rng.uniform(42, 50, n)
        self.lat0 = np.array([v.city.lat0 for v in self.vehicles])
        self.lon0 = np.array([v.city.lon0 for v in self.vehicles])
        self.is_truck = is_truck
        # perception: lead vehicle and agent slots
        self.lead_on = np.zeros(n, dtype=bool)
        self.lead_gap, self.lead_dv = z(), z()
        self.lead_track = np.zeros(n, dtype=np.int64)
        self.lead_class = np.full(n, common_pb2.OBJECT_CLASS_CAR, dtype=np.int64)
        k = int(self.p["agents"]["slots"])
        self.ag_on = np.zeros((n, k), dtype=bool)
        self.ag_class = np.zeros((n, k), dtype=np.int64)
        self.ag_x, self.ag_y, self.ag_vx = (np.zeros((n, k)) for _ in range(3))
        self.ag_len, self.ag_wid, self.ag_conf, self.ag_until = (np.zeros((n, k)) for _ in range(4))
        self.ag_track = np.zeros((n, k), dtype=np.int64)
        self.ag_own_v = np.zeros((n, k))  # agent speed along the road (m/s), relative speed follows the ego
        self.plane = np.ones(n, dtype=np.int64)
        self.city_idx = np.array([self.cities.index(v.city) for v in self.vehicles])
        self._road_codes = np.array([ROAD_TYPES[r] for r in _ROAD_NAMES])
        self._agent_share = np.array([self.p["agents"]["active_share"][r] for r in _ROAD_NAMES])
        widest = max(len(kinds) for kinds in _AGENTS.values())
        self._agent_kinds = np.array([len(_AGENTS[r]) for r in _ROAD_NAMES])
        self._agent_table = np.zeros((len(_ROAD_NAMES), widest, 6))
        for r, name in enumerate(_ROAD_NAMES):
            for m, (cls, length, width, own_v, (y_lo, y_hi)) in enumerate(_AGENTS[name]):
                self._agent_table[r, m] = (_CLASSES[cls], length, width, own_v, y_lo, y_hi)
        self._maneuver_bytes = [wire.length_delimited(wire.K_MANEUVER, m.encode()) for m in _MANEUVERS]
        self._heads = []
        for veh, prefix in zip(self.vehicles, self._prefix, strict=True):
            heads = []
            for tag in ("hb", "pose", "pe"):
                mid_len = len(f"{veh.vehicle_id}/{tag}/") + len(str(self.cfg.start_ms))
                heads.append(prefix + wire.K_MESSAGE_ID + wire.varint(mid_len) + f"{veh.vehicle_id}/{tag}/".encode())
            self._heads.append(tuple(heads))
        self._track_counter = 0
        self.next_warning_ms = self.cfg.start_ms + (self.rng.exponential(
            3600e3 / self.p["normal_events"]["warning_per_vehicle_hour"], n)).astype(np.int64)
        self.next_speech_ms = self.cfg.start_ms + (self.rng.exponential(
            3600e3 / self.p["normal_events"]["speech_per_vehicle_hour"], n)).astype(np.int64)
        # per-second incident hooks
        self.perc_objects: dict[int, list[common_pb2.PerceivedObject]] = {}
        self.perc_no_lead: set[int] = set()
        self.perc_costs: dict[int, tuple[float, float, float]] = {}
        self.perc_unprotected: set[int] = set()
        self._events: list[tuple[int, int, common_pb2.VehicleEvent]] = []

    # ------------------------------------------------------------------ routes

    def _start_vehicle(self, veh: Vehicle) -> None:
        i = veh.index
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
        self._load_piece(i)

    def _new_task(self, veh: Vehicle) -> None:
        i = veh.index
        veh.task_n += 1
        veh.task_id = f"task-{veh.vehicle_id}-{veh.task_n:04d}"
        self.task_state[i] = RUNNING
        self.charging[i] = False
        self.parked[i] = False
        if veh.kind == "van":
            if self.soc[i] < self.p["energy"]["return_below"]:
                veh.target, veh.charge_next = veh.park.depot, True
                veh.task_id = f"chg-{veh.vehicle_id}-{veh.task_n:04d}"
            else:
                veh.target, veh.charge_next = veh.drop_nodes[veh.drop_k % len(veh.drop_nodes)], False
                veh.drop_k += 1
        self._strings(veh)

    def _strings(self, veh: Vehicle) -> None:
        self._strings_of[veh.index] = wire.heartbeat_strings(veh.task_id, veh.city.name, veh.park.name, veh.route,
                                                             veh.software_version)

    def _append_leg(self, veh: Vehicle, start_xyh: tuple[float, float, float]) -> None:
        sections = veh.leg_sections if veh.leg_outbound else reversed_sections(veh.leg_sections)
        s0 = veh.pieces[-1].s1 if veh.pieces else self.s[veh.index]
        kin = self.p["kinematics"]
        pieces = build_sections(start_xyh, sections, s0, self.p["roads"], self.bank, kin["lat_accel_turn_mps2"])
        last = pieces[-1]
        last_end = last.s1
        stop_at = last_end - 60.0
        if veh.leg_outbound:
            ex, ey, eh = self._piece_end(last)
            veh.far_xyh = (ex, ey, eh)
        veh.pieces.extend(pieces)
        dwell = float(self.rng.uniform(*self.p["tasks"]["hub_dwell_s"]))
        veh.holds.append(Hold(stop_at, dwell, on_arrive=self._arrive_drop, on_release=self._release_hub))
        veh.holds.sort(key=lambda h: h.pos)

    def _piece_end(self, piece: Piece) -> tuple[float, float, float]:
        ux, uy = self.bank.end_offset(piece.angle)
        c, s = math.cos(piece.h0), math.sin(piece.h0)
        return (piece.x0 + piece.length * (c * ux - s * uy), piece.y0 + piece.length * (s * ux + c * uy),
                piece.h0 + piece.angle)

    def _extend(self, veh: Vehicle, until_s: float) -> None:
        """Append pieces until the route reaches route position `until_s`."""
        while not veh.pieces or veh.pieces[-1].s1 < until_s:
            if veh.kind == "truck":
                veh.leg_outbound = not veh.leg_outbound
                # turn around in the hub yard (a 180 deg curve 12 m wide), then drive the leg back
                x, y, h = self._piece_end(veh.pieces[-1])
                _, uy = self.bank.end_offset(math.pi)
                yard = curve_piece(veh.pieces[-1].s1, x, y, h, 12.0 / uy, math.pi, "urban", self.p["roads"],
                                   self.bank, self.p["kinematics"]["lat_accel_turn_mps2"])
                veh.pieces.append(yard)
                self._append_leg(veh, self._piece_end(yard))
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
            release = self._release_charge if veh.charge_next else self._release_drop
            veh.holds.append(Hold(veh.edge_s + cmap.block / 2 - veh.edge_trim, dwell if not veh.charge_next else INF,
                                  on_arrive=self._arrive_drop, on_release=release))
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

    def _load_piece(self, i: int, from_sample: int = 0) -> None:
        """Mirror vehicle i's current piece, upcoming limits, junctions and hold into the arrays;
        inside a second, also into the sample records from `from_sample` on."""
        veh = self.vehicles[i]
        s = self.s[i]
        self._extend(veh, s + LOOKAHEAD_M)
        while veh.pieces[0].s1 <= s:
            veh.pieces.popleft()
        p = veh.pieces[0]
        self._extend(veh, p.s1 + LOOKAHEAD_M)  # constraints are refreshed per piece: see past its end
        self.px0[i], self.py0[i], self.ph0[i], self.pL[i], self.pang[i], self.ps0[i] = \
            p.x0, p.y0, p.h0, p.length, p.angle, p.s0
        self.ptab[i] = p.table
        self.plimit[i] = p.limit_mps
        self.pend[i] = p.s1
        self.vlim[i] = min(p.limit_mps * self.p["kinematics"]["cruise_factor"], self.v_cap[i])
        rec = self._rec
        if rec is not None and from_sample < 10:
            for name, value in (("x0", p.x0), ("y0", p.y0), ("h0", p.h0), ("L", p.length), ("ang", p.angle),
                                ("tab", p.table), ("s0", p.s0)):
                rec[name][i, from_sample:] = value
        self.proad[i] = _ROAD_NAMES.index(p.road)
        self.plane[i] = p.lanes
        self.c_pos[i] = INF
        self.c_v[i] = 0.0
        k = 0
        for q in list(veh.pieces)[1:]:
            if q.s0 > s + LOOKAHEAD_M or k >= STATIC_SLOTS - 1:
                break
            self.c_pos[i, k], self.c_v[i, k] = q.s0, q.limit_mps
            k += 1
        self.sig_pos[i] = INF
        self.sig_junction[i] = J_NONE
        for q in veh.pieces:
            if q.junction != J_NONE and q.angle == 0.0 and q.stop_line_s >= s - 0.5:
                self.sig_junction[i] = q.junction
                if q.junction == J_SIGNAL:
                    self.sig_pos[i], self.sig_off[i], self.sig_cycle[i] = \
                        q.stop_line_s, q.signal_offset_s, q.signal_cycle_s
                else:
                    self.c_pos[i, STATIC_SLOTS - 1] = q.stop_line_s
                    self.c_v[i, STATIC_SLOTS - 1] = self.p["kinematics"]["yield_speed_mps"]
                break
        self.commit[i] = False
        self._load_hold(i)

    def _load_hold(self, i: int) -> None:
        veh = self.vehicles[i]
        self.hold_pos[i] = veh.holds[0].pos if veh.holds else INF

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
        if hold.arrived_ms is not None and self.dwell_end[i] != INF:
            self.dwell_end[i] = INF
        if hold.on_release:
            hold.on_release(i, t_ms)
        self._load_hold(i)

    # ------------------------------------------------------------------ task callbacks

    def _arrive_drop(self, i: int, t_ms: int) -> None:
        veh = self.vehicles[i]
        if veh.kind == "van" and veh.charge_next:
            self.task_state[i] = IDLE
            self.charging[i] = True
            self.parked[i] = True
            hold = veh.holds[0]
            hold.dwell_s = max(60.0, (self.p["energy"]["charged"] - self.soc[i]) / self.p["energy"]["charge_per_s"])
            self.dwell_end[i] = t_ms + 1000.0 * hold.dwell_s
        else:
            self.task_state[i] = PAUSED
            if veh.kind == "truck" and self.soc[i] < 0.6:
                self.charging[i] = True

    def _release_drop(self, i: int, t_ms: int) -> None:
        self._new_task(self.vehicles[i])

    def _release_charge(self, i: int, t_ms: int) -> None:
        self._new_task(self.vehicles[i])

    def _release_hub(self, i: int, t_ms: int) -> None:
        self._new_task(self.vehicles[i])

    # ------------------------------------------------------------------ incident hooks

    def emit_event(self, i: int, t_ms: int, event: common_pb2.VehicleEvent) -> None:
        """Queue a vehicle event at `t_ms` (inside the current second) if the vehicle is online."""
        if self.online[i]:
            self._events.append((i, t_ms, event))

    def set_mode(self, i: int, mode: int) -> None:
        self.mode[i] = mode

    def end_weave(self, i: int) -> None:
        """Stop vehicle `i`'s weave; the lane keeper then re-centres the fleet's lateral offsets."""
        self.w_on[i] = False
        self._recentre = True

    def new_track_id(self) -> int:
        self._track_counter += 1
        return 128 + self._track_counter % 16000

    def add_incident(self, incident: Incident) -> None:
        self.ground_truth.incidents.append(incident)

    def straight_ahead_m(self, i: int) -> float:
        """Metres of straight road ahead of vehicle i before a curve, junction line or hold."""
        if self.pang[i] != 0.0:
            return 0.0
        return float(min(self.pend[i], self.hold_pos[i], self.sig_pos[i], self.c_pos[i, STATIC_SLOTS - 1]) - self.s[i])

    def piece(self, i: int) -> Piece:
        return self.vehicles[i].pieces[0]

    # ------------------------------------------------------------------ stepping

    def seconds(self) -> Iterator[SimSecond]:
        """Advance the fleet one second at a time (see the class docstring)."""
        if self._finished:
            raise RuntimeError("a FleetSimulator runs once; build a new one to simulate again")
        for k in range(self.cfg.duration_s):
            yield self._second(self.cfg.start_ms + 1000 * k)
        self._finish()

    def _second(self, t_ms: int) -> SimSecond:
        self.perc_objects.clear()
        self.perc_no_lead.clear()
        self.perc_costs.clear()
        self.perc_unprotected.clear()
        self._events.clear()
        self._holds_and_dwells(t_ms)
        self._run_incidents(t_ms)
        self._normal_events(t_ms)
        self._lane_change_decisions(t_ms)
        self._lead_update()
        self._agents_update(t_ms)
        online = self.online.copy()
        mode0, task0, road0 = self.mode.copy(), self.task_state.copy(), self.proad.copy()
        perception = self._perception(t_ms, road0)
        rec = self._substeps(t_ms)
        geo = self._geometry(rec)
        self._energy_and_temperature(geo)
        return SimSecond(t_ms, self._messages(t_ms, online, mode0, task0, road0, perception, geo))

    def _holds_and_dwells(self, t_ms: int) -> None:
        """Start the dwell of vehicles that stopped at their hold, end the dwells that are over (1 Hz)."""
        arrive = (self.v == 0.0) & (self.hold_pos - self.s < 1.0) & (self.dwell_end == INF)
        for i in np.flatnonzero(arrive).tolist():
            hold = self.vehicles[i].holds[0]
            if hold.arrived_ms is None:
                hold.arrived_ms = t_ms
                self.dwell_end[i] = t_ms + 1000.0 * hold.dwell_s
                if hold.on_arrive:
                    hold.on_arrive(i, t_ms)
        for i in np.flatnonzero(self.dwell_end <= t_ms).tolist():
            self.dwell_end[i] = INF
            self.release_hold(i, self.vehicles[i].holds[0], t_ms)

    def _run_incidents(self, t_ms: int) -> None:
        for b in self.behaviours:
            if b.state == "pending" and b.at_ms <= t_ms:
                b.try_start(t_ms)
        for b in self.behaviours:
            if b.state == "active":
                b.on_second(t_ms)

    def _normal_events(self, t_ms: int) -> None:
        ne = self.p["normal_events"]
        codes = self.p["incidents"]["warning_codes"]
        for i in np.flatnonzero(self.next_warning_ms <= t_ms).tolist():
            gap = max(ne["warning_min_gap_s"], self.rng.exponential(3600 / ne["warning_per_vehicle_hour"]))
            self.next_warning_ms[i] = t_ms + int(1000 * gap)
            if self.active[i] is None and t_ms >= self.free_at_ms[i] and self.task_state[i] != IDLE:
                module, code = codes[int(self.rng.integers(len(codes)))]
                self.emit_event(i, t_ms + int(self.rng.integers(1000)), common_pb2.VehicleEvent(
                    kind=common_pb2.EVENT_KIND_ERROR_CODE, module=module, code=code, source="system"))
        for i in np.flatnonzero(self.next_speech_ms <= t_ms).tolist():
            self.next_speech_ms[i] = t_ms + int(1000 * self.rng.exponential(3600 / ne["speech_per_vehicle_hour"]))
            if self.active[i] is None and t_ms >= self.free_at_ms[i]:
                text = ne["benign_speech"][int(self.rng.integers(len(ne["benign_speech"])))]
                self.emit_event(i, t_ms + int(self.rng.integers(1000)), common_pb2.VehicleEvent(
                    kind=common_pb2.EVENT_KIND_OPERATOR_SPEECH, text=text, source="safety_driver"))

    def _binding_constraint(self, t_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Per vehicle, the stop line / hold / speed-limit change that restricts it most now (1 Hz,
        a driver's reaction time): (route position m, speed there m/s). Lights are judged here too:
        a light turning red with less room than the dilemma decel needs is driven through."""
        kin = self.p["kinematics"]
        ts = t_ms / 1000.0
        v, s = self.v, self.s
        red = ((ts + self.sig_off) % self.sig_cycle) >= self.sig_cycle / 2
        self.commit |= red & (v > 1.5) & (self.sig_pos - s < v * v / (2.0 * kin["dilemma_decel_mps2"]))
        stop = np.minimum(np.where(red & ~self.commit, self.sig_pos, INF), self.hold_pos)
        pos = np.concatenate([self.c_pos, stop[:, None]], axis=1)
        cv = np.concatenate([self.c_v * kin["cruise_factor"], np.zeros((self.n, 1))], axis=1)
        dp = np.maximum(pos - s[:, None], 0.0)
        va = np.minimum(np.sqrt(cv * cv + 2.0 * kin["plan_decel_mps2"] * dp), cv + kin["final_approach_gain"] * dp)
        j = np.argmin(va, axis=1)
        rows = np.arange(self.n)
        return pos[rows, j], cv[rows, j]

    def _substeps(self, t_ms: int) -> dict[str, np.ndarray]:
        """Ten 10 Hz steps of jerk-limited speed control; returns (n, 10) records of every sample."""
        n = self.n
        kin = self.p["kinematics"]
        f64 = np.float64
        # numpy scalars and full arrays: ufuncs on 50-element arrays cost ~1 us; Python floats double it
        dt, half_dt = f64(self.dt), f64(self.dt / 2)
        b, b2, k2, gain = (f64(x) for x in (kin["plan_decel_mps2"], 2 * kin["plan_decel_mps2"],
                                             kin["final_approach_gain"], kin["speed_gain"]))
        jdt, snap = f64(kin["jerk_max_mps3"] * self.dt), f64(kin["stop_snap_mps"])
        zero, tenth, low = np.zeros(n), f64(0.1), f64(-kin["comfort_decel_mps2"])
        bpos, bcv = self._binding_constraint(t_ms)
        bcv2 = bcv * bcv
        self.vlim = np.minimum(self.plimit * kin["cruise_factor"], self.v_cap)
        rec = {name: np.repeat(arr[:, None], 10, axis=1) for name, arr in (
            ("x0", self.px0), ("y0", self.py0), ("h0", self.ph0), ("L", self.pL), ("ang", self.pang),
            ("tab", self.ptab), ("s0", self.ps0))}
        rs, rv, ra = np.empty((n, 10)), np.empty((n, 10)), np.empty((n, 10))
        self._rec = rec
        any_ovr = bool(self.ovr.any())
        a_max = self.a_max
        s, v, a_prev = self.s, self.v, self.a
        for k in range(10):
            rs[:, k] = s
            rv[:, k] = v
            dp = np.maximum(bpos - s, zero)
            va_sq = np.sqrt(bcv2 + b2 * dp)
            va_lin = bcv + k2 * dp
            use_sq = va_sq < va_lin
            va = np.where(use_sq, va_sq, va_lin)
            slope = np.where(use_sq, b / np.maximum(va_sq, tenth), k2)
            a_des = np.minimum(gain * (self.vlim - v), gain * (va - v) - v * slope)
            if any_ovr:
                ovr = self.ovr
                a_des = np.where(ovr, self.ovr_a, a_des)
                j = np.where(ovr, self.ovr_j * dt, jdt)
                a = np.minimum(np.maximum(a_des, a_prev - j), a_prev + j)
                a = np.where(ovr, np.minimum(a, a_max), np.minimum(np.maximum(a, low), a_max))
            else:
                a = np.minimum(np.maximum(a_des, a_prev - jdt), a_prev + jdt)
                a = np.minimum(np.maximum(a, low), a_max)
            v_new = v + a * dt
            stopped = (v_new <= snap) & ((a < zero) | (va < tenth))
            v_new = np.where(stopped, zero, np.maximum(v_new, zero))
            ra[:, k] = a
            a_prev = a  # kept through a stop: the brake releases within the jerk limit before moving off
            s = s + half_dt * (v + v_new)
            v = v_new
            moved_on = (s >= self.pend).nonzero()[0]
            if len(moved_on) or any_ovr:
                self.s, self.v, self.a = s, v, a_prev
                for i in moved_on.tolist():
                    self._load_piece(i, k + 1)
                if any_ovr:
                    for i in self.ovr.nonzero()[0].tolist():
                        self.active[i].on_substep(i, t_ms + 100 * (k + 1))
        self.s, self.v, self.a = s, v, a_prev
        ra[rv == 0.0] = np.maximum(ra[rv == 0.0], 0.0)  # standing still: no braking reads
        self._rec = None
        self.odometer += self.s - rs[:, 0]
        rec["srel"] = rs - rec["s0"]
        rec["v"], rec["a"] = rv, ra
        rec["d"], rec["psi"], rec["yaw_x"] = self._lateral(t_ms, rs, rv)
        return rec

    def _lateral(self, t_ms: int, rs: np.ndarray, rv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lateral offset (m, + left), heading offset (rad) and extra yaw rate (rad/s) of every sample:
        lane changes are S-curves over distance; weaving is alternating yaw lobes over time, the
        first and last at half amplitude so the heading swings around the lane and ends aligned."""
        u = np.clip((rs - self.lc_s0[:, None]) / self.lc_len[:, None], 0.0, 1.0)
        two_pi_u = 2 * np.pi * u
        delta, length = self.lc_delta[:, None], self.lc_len[:, None]
        slope = delta / length * (1 - np.cos(two_pi_u))
        d = self.lc_d0[:, None] + delta * (u - np.sin(two_pi_u) / (2 * np.pi))
        curv = delta / length**2 * 2 * np.pi * np.sin(two_pi_u)
        yaw = np.where(self.lc_on[:, None], rv * curv / (1 + slope**2), 0.0)
        psi = np.arctan(slope)
        if self.w_on.any():
            tau = (t_ms / 1000.0 + 0.1 * np.arange(10))[None, :] - self.w_t0[:, None]
            half = self.w_period[:, None] / 2
            lobe = np.floor(tau / half)
            amp = np.where((lobe == 0) | (lobe == self.w_lobes[:, None] - 1), 0.5, 1.0) * self.w_amp[:, None]
            live = self.w_on[:, None] & (tau >= 0) & (lobe < self.w_lobes[:, None])
            yaw_w = np.where(live, amp * np.sin(2 * np.pi * tau / self.w_period[:, None]), 0.0)
            psi_w = self.psi_w[:, None] + self.dt * (np.cumsum(yaw_w, axis=1) - yaw_w)
            lat_rate = rv * np.sin(psi_w)
            d_w = self.d_w[:, None] + self.dt * (np.cumsum(lat_rate, axis=1) - lat_rate)
            self.psi_w = np.where(self.w_on, psi_w[:, -1] + self.dt * yaw_w[:, -1], 0.0)
            self.d_w = d_w[:, -1] + self.dt * lat_rate[:, -1]
            return d + d_w, psi + psi_w, yaw + yaw_w
        if self._recentre:
            # after a weave the lane keeper re-centres slowly (a few cm per second, no visible yaw)
            self.d_w *= 0.95
            self._recentre = bool(np.abs(self.d_w).max() > 0.01)
            if not self._recentre:
                self.d_w[:] = 0.0
        return d + self.d_w[:, None], psi, yaw

    def _geometry(self, rec: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """World pose of every sample from piece tables, lateral offsets and speeds."""
        L = rec["L"]
        points = self.bank.tables.shape[1]
        u = np.clip(rec["srel"] / L, 0.0, 1.0)
        f = u * (points - 1)
        i0 = np.minimum(f.astype(np.int64), points - 2)
        w = f - i0
        flat = self.bank.tables.reshape(-1, 2)
        base = rec["tab"] * points + i0
        p0, p1 = flat[base], flat[base + 1]
        lx = (p0[..., 0] + (p1[..., 0] - p0[..., 0]) * w) * L
        ly = (p0[..., 1] + (p1[..., 1] - p0[..., 1]) * w) * L
        h0 = rec["h0"]
        c, s = np.cos(h0), np.sin(h0)
        ang = rec["ang"]
        heading = h0 + ang * (u - np.sin(2 * np.pi * u) / (2 * np.pi))
        kappa = ang / L * (1 - np.cos(2 * np.pi * u))
        d = rec["d"]
        x = rec["x0"] + c * lx - s * ly - np.sin(heading) * d
        y = rec["y0"] + s * lx + c * ly + np.cos(heading) * d
        v = rec["v"]
        yaw = v * kappa + rec["yaw_x"]
        steer = np.arctan(self.wheelbase[:, None] * (kappa + rec["yaw_x"] / np.maximum(v, 1.0)))
        heading = np.mod(heading + rec["psi"] + np.pi, 2 * np.pi) - np.pi
        lat, lon = latlon(x, y, self.lat0[:, None], self.lon0[:, None])
        a = rec["a"]
        return {"x": x, "y": y, "lat": lat, "lon": lon, "heading": heading, "yaw": yaw, "steer": steer,
                "v": v, "a": a, "alat": v * yaw,
                "throttle": np.clip((a + 0.15) / self.a_max[:, None], 0.0, 1.0) * (v > 0),
                "brake": np.clip(-a / 8.0, 0.0, 1.0)}

    # ------------------------------------------------------------------ 1 Hz state

    def _energy_and_temperature(self, geo: dict[str, np.ndarray]) -> None:
        en = self.p["energy"]
        dist = geo["v"].sum(axis=1) * self.dt
        self.soc = np.clip(self.soc - dist * self.use_per_m - 2e-6
                           + np.where(self.charging, en["charge_per_s"], 0.0), 0.0, 1.0)
        target = 48.0 + 12.0 * geo["v"][:, 0] / 25.0 - 6.0 * self.parked
        self.temp += 0.02 * (target - self.temp) + self.rng.normal(0, 0.05, self.n)

    def _lane_change_decisions(self, t_ms: int) -> None:
        lc = self.p["lane_change"]
        ts = t_ms / 1000.0
        self.lc_on &= (self.s - self.lc_s0) < self.lc_len
        room = self.straight_ahead_m_all()
        length = np.sqrt(2 * np.pi * lc["lateral_m"] * self.plimit / lc["max_yaw_rate_rps"])
        free = ~self.lc_on & ~self.w_on & (self.v >= lc["min_speed_mps"]) & (self.pang == 0.0) & ~self.ovr
        in_left = self.lane > 0
        go_back = free & in_left & ((self.lc_return_ms <= t_ms) | (room < length + 60.0)) & (room > length + 5)
        draw = self.rng.random(self.n)
        go_left = free & ~in_left & (self.plane > 1) & (room > 2 * length + 10 * self.v + 120) \
            & (draw < lc["prob_per_s"])
        start = go_back | go_left
        if start.any():
            d_now = self.lc_d0 + self.lc_delta
            self.lc_d0 = np.where(start, d_now, self.lc_d0)
            self.lc_delta = np.where(go_left, lc["lateral_m"], np.where(go_back, -lc["lateral_m"], self.lc_delta))
            self.lc_s0 = np.where(start, self.s, self.lc_s0)
            self.lc_len = np.where(start, length, self.lc_len)
            self.lc_on |= start
            self.lane = self.lane + go_left - go_back
            back_after = ts + self.rng.uniform(*lc["return_after_s"], self.n) + length / np.maximum(self.v, 1)
            self.lc_return_ms = np.where(go_left, back_after * 1000.0, np.where(go_back, INF, self.lc_return_ms))

    def straight_ahead_m_all(self) -> np.ndarray:
        ahead = np.minimum(np.minimum(self.pend, self.hold_pos), np.minimum(self.sig_pos, self.c_pos[:, -1])) - self.s
        return np.where(self.pang == 0.0, ahead, 0.0)

    def _lead_update(self) -> None:
        ld = self.p["lead"]
        n = self.n
        clear = self.straight_ahead_m_all() > ld["clear_ahead_m"]
        allowed = clear & (self.v > 3.0) & (self.proad != 0) & ~self.ovr & (self.task_state == RUNNING)
        r1, r2 = self.rng.random(n), self.rng.random(n)
        g_des = ld["standstill_gap_m"] + ld["time_gap_s"] * self.v
        start = allowed & ~self.lead_on & (r1 < ld["start_prob_per_s"])
        stop = self.lead_on & (~allowed | (r2 < ld["end_prob_per_s"]))
        self.lead_on = (self.lead_on | start) & ~stop
        if start.any():
            extra = self.rng.uniform(*ld["start_extra_gap_m"], n)
            self.lead_gap = np.where(start, g_des + extra, self.lead_gap)
            for i in np.flatnonzero(start).tolist():
                self.lead_track[i] = self.new_track_id()
                self.lead_class[i] = common_pb2.OBJECT_CLASS_TRUCK if r2[i] < 0.3 else common_pb2.OBJECT_CLASS_CAR
        cm = ld["closing_max_mps"]
        self.lead_dv = np.clip(0.15 * (g_des - self.lead_gap), -cm, cm)
        self.lead_gap = np.maximum(self.lead_gap + self.lead_dv, ld["standstill_gap_m"])

    def _agents_update(self, t_ms: int) -> None:
        """Agents beside the path: move with their own speed, expire, respawn ahead (vectorised)."""
        ag = self.p["agents"]
        n, k = self.ag_on.shape
        ts = t_ms / 1000.0
        self.ag_x += self.ag_vx
        self.ag_on &= (self.ag_until > ts) & (self.ag_x > -30.0) & (self.ag_x < 90.0)
        r = self.rng.random((n, 5, k))
        road = self.proad[:, None]
        spawn = ~self.ag_on & (r[:, 0] < self._agent_share[road] * 0.25)
        pick = (r[:, 1] * self._agent_kinds[road]).astype(np.int64)
        kt = self._agent_table[road, pick]  # (n, k, 6): class, length, width, own speed, y low, y high
        self.ag_class = np.where(spawn, kt[..., 0].astype(np.int64), self.ag_class)
        self.ag_len = np.where(spawn, kt[..., 1], self.ag_len)
        self.ag_wid = np.where(spawn, kt[..., 2], self.ag_wid)
        self.ag_own_v = np.where(spawn, kt[..., 3], self.ag_own_v)
        self.ag_y = np.where(spawn, kt[..., 4] + (kt[..., 5] - kt[..., 4]) * r[:, 2], self.ag_y)
        lo, hi = ag["spawn_ahead_m"]
        self.ag_x = np.where(spawn, lo + (hi - lo) * r[:, 3], self.ag_x)
        unknown = kt[..., 0] == common_pb2.OBJECT_CLASS_UNKNOWN
        conf = np.where(unknown, 0.55 + 0.25 * r[:, 4], 0.62 + 0.37 * r[:, 4])
        self.ag_conf = np.where(spawn, conf, self.ag_conf)
        lo, hi = ag["lifetime_s"]
        self.ag_until = np.where(spawn, ts + lo + (hi - lo) * r[:, 4], self.ag_until)
        new_ids = 128 + (self._track_counter + np.cumsum(spawn.ravel()).reshape(n, k)) % 16000
        self._track_counter += int(spawn.sum())
        self.ag_track = np.where(spawn, new_ids, self.ag_track)
        self.ag_on |= spawn
        self.ag_vx = self.ag_own_v - self.v[:, None]

    # ------------------------------------------------------------------ messages

    def _messages(self, t_ms: int, online: np.ndarray, mode0: np.ndarray, task0: np.ndarray, road0: np.ndarray,
                  perc: list[bytes], geo: dict[str, np.ndarray]) -> list[tuple[str, common_pb2.Envelope]]:
        n = self.n
        pose = wire.POSE.empty(n)
        pose["sample_count"] = wire.SAMPLES
        pose["t_ms"] = t_ms + 100 * np.arange(wire.SAMPLES)
        pose["x_m"], pose["y_m"], pose["lat_deg"], pose["lon_deg"] = geo["x"], geo["y"], geo["lat"], geo["lon"]
        speed32 = geo["v"].astype(np.float32)
        pose["speed_mps"] = speed32
        pose["accel_lon_mps2"], pose["accel_lat_mps2"] = geo["a"], geo["alat"]
        pose["heading_rad"], pose["yaw_rate_rps"], pose["steering_rad"] = geo["heading"], geo["yaw"], geo["steer"]
        pose["throttle"], pose["brake"] = geo["throttle"], geo["brake"]
        pose["gear"] = (~self.parked)[:, None].astype(np.int8)
        pose["mode"] = mode0[:, None]
        hb = wire.HEARTBEAT.empty(n)
        road_codes = self._road_codes[road0]
        hb["mode"], hb["road_type"], hb["task_state"] = mode0, road_codes, task0
        hb["connectivity"] = np.where((road0 == 0) | self.parked, common_pb2.CONNECTIVITY_WIFI,
                                      common_pb2.CONNECTIVITY_CELLULAR)
        hb["charging"], hb["parked"] = self.charging, self.parked
        hb["speed_mps"], hb["lat_deg"], hb["lon_deg"] = geo["v"][:, 0], geo["lat"][:, 0], geo["lon"][:, 0]
        hb["x_m"], hb["y_m"] = geo["x"][:, 0], geo["y"][:, 0]
        hb["state_of_charge"], hb["odometer_m"], hb["compute_temp_c"] = self.soc, self.odometer, self.temp
        pose_raw, hb_raw = pose.tobytes(), hb.tobytes()
        pose_size, hb_size = wire.POSE.dtype.itemsize, wire.HEARTBEAT.dtype.itemsize
        tail = str(t_ms).encode() + wire.K_TIME + wire.varint(t_ms)
        self._account_mileage(t_ms, online, mode0, task0, road0, speed32)
        varints = wire.VARINTS
        from_env = common_pb2.Envelope.FromString
        heads, strings = self._heads, self._strings_of
        k_hb, k_pe, hb_topic, pose_topic, pe_topic = (wire.K_HEARTBEAT, wire.K_PERCEPTION, topics.HEARTBEAT,
                                                      topics.POSE, topics.PERCEPTION)
        pose_head = tail + wire.K_POSE + varints[pose_size]
        idx = online.nonzero()[0].tolist()
        heartbeats = [(hb_topic, from_env(b"".join((
            heads[i][0], tail, k_hb, varints[hb_size + len(strings[i])], hb_raw[i * hb_size:(i + 1) * hb_size],
            strings[i])))) for i in idx]
        poses = [(pose_topic, from_env(b"".join((
            heads[i][1], pose_head, pose_raw[i * pose_size:(i + 1) * pose_size])))) for i in idx]
        perceptions = [(pe_topic, from_env(b"".join((
            heads[i][2], tail, k_pe, varints[len(perc[i])], perc[i])))) for i in idx]
        out: list[tuple[str, common_pb2.Envelope]] = heartbeats + poses + perceptions
        seq: dict[int, int] = {}
        for i, t_ev, event in sorted(self._events, key=lambda e: (e[0], e[1])):
            nseq = seq.get(i, 0)
            seq[i] = nseq + 1
            vid = self.vehicles[i].vehicle_id
            out.append((topics.EVENTS, common_pb2.Envelope(
                schema_version=SCHEMA_VERSION, vehicle_id=vid, event_time_ms=t_ev,
                message_id=f"{vid}/ev/{t_ev}/{nseq}", event=event)))
        return out

    def _account_mileage(self, t_ms: int, online: np.ndarray, mode0: np.ndarray, task0: np.ndarray,
                         road0: np.ndarray, speed32: np.ndarray) -> None:
        """Add this second's cloud-visible distance / operating / autonomous time per vehicle and road
        class (the other key fields are fixed per vehicle); a new UTC day starts a new accumulator."""
        day = datetime.fromtimestamp(t_ms // 1000, tz=UTC).strftime("%Y-%m-%d")
        if day != self._day:
            self._flush_mileage()
            self._day = day
        rows = np.arange(self.n)
        dist = (speed32.astype(np.float64) * self.dt).sum(axis=1)
        operating = online & ((task0 == RUNNING) | (task0 == PAUSED))
        self._acc_seen[rows, road0] |= online
        self._acc_dist[rows, road0] += np.where(online, dist, 0.0)
        self._acc_oper[rows, road0] += operating
        self._acc_auto[rows, road0] += operating & (mode0 == AUTO)

    def _flush_mileage(self) -> None:
        if self._day is not None:
            for i, r in zip(*self._acc_seen.nonzero(), strict=True):
                veh = self.vehicles[i]
                key = (veh.vehicle_id, self._day, veh.park.name, veh.city.name, veh.route,
                       int(self._road_codes[r]), veh.software_version)
                self._mileage[key] = [float(self._acc_dist[i, r]), int(self._acc_oper[i, r]),
                                      int(self._acc_auto[i, r])]
        shape = (self.n, len(_ROAD_NAMES))
        self._acc_seen = np.zeros(shape, dtype=bool)
        self._acc_dist = np.zeros(shape)
        self._acc_oper = np.zeros(shape, dtype=np.int64)
        self._acc_auto = np.zeros(shape, dtype=np.int64)

    def _perception(self, t_ms: int, road0: np.ndarray) -> list[bytes]:
        """Wire bytes of every vehicle's PerceptionSummary at the start of the second."""
        n, k = self.ag_on.shape
        objs = wire.OBJECT.empty((n, k + 1))
        objs["size"] = wire.OBJECT.body_size
        lead_on = self.lead_on.copy()
        for i in self.perc_no_lead:
            lead_on[i] = False
        on = np.concatenate([lead_on[:, None], self.ag_on], axis=1)
        lead, agents = objs[:, 0], objs[:, 1:]
        lead["track_id"], agents["track_id"] = wire.track_id_bytes(self.lead_track), wire.track_id_bytes(self.ag_track)
        lead["object_class"], agents["object_class"] = self.lead_class, self.ag_class
        lead["rel_x_m"], agents["rel_x_m"] = self.lead_gap, self.ag_x
        agents["rel_y_m"] = self.ag_y
        lead["rel_vx_mps"], agents["rel_vx_mps"] = self.lead_dv, self.ag_vx
        lead["length_m"], agents["length_m"] = np.where(self.lead_class == common_pb2.OBJECT_CLASS_TRUCK, 9.0, 4.6), \
            self.ag_len
        lead["width_m"], agents["width_m"] = 1.9, self.ag_wid
        lead["confidence"], agents["confidence"] = 0.95, self.ag_conf
        raw = objs[on].tobytes()  # active objects, vehicle by vehicle
        one = wire.OBJECT.dtype.itemsize
        ends = (np.cumsum(on.sum(axis=1)) * one).tolist()
        summ = wire.SUMMARY.empty(n)
        hour = (t_ms - self.cfg.start_ms) // 3_600_000
        utc_h = (t_ms / 3_600_000.0) % 24
        summ["weather"] = np.array([c.weather[hour] for c in self.cities])[self.city_idx]
        summ["light"] = np.array([light_of((utc_h + c.utc_offset_h) % 24) for c in self.cities])[self.city_idx]
        summ["road_type"] = self._road_codes[road0]
        ahead = self.sig_pos - self.s
        near_j = np.minimum(ahead, self.c_pos[:, -1] - self.s) < 30.0
        in_turn = np.abs(self.pang) > 0.5
        summ["junction_type"] = np.where(near_j | in_turn, self.sig_junction, J_NONE)
        summ["speed_limit_mps"] = self.plimit
        summ["lane_count"] = self.plane
        summ["lane_index"] = self.lane
        summ["crosswalk"] = (ahead < 25.0) & (ahead > -5.0)
        pl = self.p["planner"]
        r = self.rng.random((3, n))
        c1 = 1.0 + 4.0 * r[0]
        c2 = c1 * (1 + pl["cost_gap"][0] + (pl["cost_gap"][1] - pl["cost_gap"][0]) * r[1])
        summ["planner_top_costs"] = np.stack([c1, c2, c2 * (1.05 + 0.45 * r[2])], axis=1)
        for i, costs in self.perc_costs.items():
            summ["planner_top_costs"][i] = costs
        for i in self.perc_unprotected:
            summ["unprotected_turn"][i] = True
        man = np.where(lead_on, 1, 0)
        man = np.where(self.lc_on, np.where(self.lc_delta > 0, 5, 6), man)
        man = np.where(in_turn, np.where(self.pang > 0, 3, 4), man)
        man = np.where((self.v < 3.5) & (self.sig_junction == J_YIELD) & near_j, 7, man)
        man = np.where(self.v < 0.3, 2, man).tolist()
        srt = summ.tobytes()
        ssz = wire.SUMMARY.dtype.itemsize
        mb = self._maneuver_bytes
        starts = [0] + ends[:-1]
        out = [b"".join((srt[i * ssz:(i + 1) * ssz], mb[man[i]], raw[starts[i]:ends[i]])) for i in range(n)]
        for i, extra in self.perc_objects.items():
            out[i] += b"".join(wire.length_delimited(wire.K_OBJECTS, o.SerializeToString()) for o in extra)
        return out

    # ------------------------------------------------------------------ ground truth

    def _finish(self) -> None:
        self._finished = True
        self._flush_mileage()
        for b in self.behaviours:
            b.finish()
        self.ground_truth.incidents.sort(key=lambda r: (r.start_ms, r.incident_id))
        self.ground_truth.mileage = [
            MileageRow(vehicle_id=k[0], day=k[1], park=k[2], city=k[3], route=k[4], road_type=k[5],
                       software_version=k[6], distance_m=acc[0], operating_s=acc[1], autonomous_s=acc[2])
            for k, acc in sorted(self._mileage.items())]
