"""The simulator's state: per-vehicle Python objects (route, navigation, task) and the fleet's numpy arrays.

`FleetState` holds one array per quantity, indexed by vehicle (shape (n,) unless noted), so the 10 Hz
steps run vectorised over the fleet. Positions (`pos_m`, `*_pos_m`, `piece_start_m`, ...) are metres
along the vehicle's route from where it started; `*_ms` fields are epoch ms of event time, and
`weave_start_s` and `agent_until_s` epoch seconds; other `*_s` fields are durations.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fleetloop.sim.world import ROAD_TYPES, City, Park
from fleetloop.v1 import common_pb2

AUTO, REMOTE, MANUAL = (common_pb2.DRIVING_MODE_AUTONOMOUS, common_pb2.DRIVING_MODE_REMOTE,
                        common_pb2.DRIVING_MODE_MANUAL)
IDLE, RUNNING, PAUSED = common_pb2.TASK_STATE_IDLE, common_pb2.TASK_STATE_RUNNING, common_pb2.TASK_STATE_PAUSED
INF = math.inf
ROAD_NAMES = tuple(ROAD_TYPES)  # road index (FleetState.road_index) -> road name
ROAD_CODES = np.array(list(ROAD_TYPES.values()))  # road index -> ROAD_TYPE_*
STATIC_SLOTS = 4  # upcoming speed-limit changes: the next pieces' limits + the next give-way line (last slot)


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
    pieces: deque = field(default_factory=deque)  # world.Piece, the current one first, laid ~400 m ahead
    holds: list = field(default_factory=list)  # world.Hold ahead on the route, nearest first
    task_n: int = 0  # tasks started so far
    task_id: str = ""
    # van navigation on the grid
    node: tuple[int, int] = (0, 0)  # junction the next edge to lay starts from
    heading_dir: int = 0  # its direction: index into world.DIRS
    edge_s: float = 0.0  # route position (m) where the next edge's pieces start
    edge_trim: float = 0.0  # metres of the next edge a turn into it has already covered
    drop_nodes: list = field(default_factory=list)  # the route's delivery stops, visited in a cycle
    drop_k: int = 0  # index of the next drop in drop_nodes
    target: tuple[int, int] | None = None  # node the task drives to; None: wander
    drop_next_edge: bool = False  # the edge being laid leads to the target: the drop is half-way along it
    charge_next: bool = False  # this task ends charging at the depot
    # truck legs
    leg_sections: list = field(default_factory=list)  # (road, length m, turn rad) of the leg, outbound
    leg_outbound: bool = True
    hub_xyh: tuple[float, float, float] = (0.0, 0.0, 0.0)  # start of the leg at the home hub: x, y (m), heading
    far_xyh: tuple[float, float, float] = (0.0, 0.0, 0.0)  # end of the leg at the far hub


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n)


@dataclass
class FleetState:
    """Every vehicle's numeric state, one array per quantity (see the module docstring for units)."""

    n: int
    # motion along the route
    pos_m: np.ndarray  # route position
    speed_mps: np.ndarray
    accel_mps2: np.ndarray  # longitudinal acceleration of the last 10 Hz step
    cruise_mps: np.ndarray  # speed the controller aims for on this piece: limit x cruise factor, capped
    speed_cap_mps: np.ndarray  # inf, or a cap an incident sets (a remote operator drives slowly)
    # the current road piece, mirrored from the route (fleetloop.sim.world.Piece)
    piece_x0_m: np.ndarray  # world x of the piece start (m, east)
    piece_y0_m: np.ndarray  # world y of the piece start (m, north)
    piece_heading_rad: np.ndarray  # heading at the piece start
    piece_length_m: np.ndarray
    piece_turn_rad: np.ndarray  # total turn of the piece; 0 on a straight
    piece_start_m: np.ndarray  # route position of the piece start
    piece_end_m: np.ndarray  # route position of the piece end
    piece_table: np.ndarray  # int: CurveBank table of the piece's shape
    speed_limit_mps: np.ndarray
    road_index: np.ndarray  # int: index into ROAD_NAMES
    lane_count: np.ndarray  # int
    # what restricts the speed ahead
    upcoming_pos_m: np.ndarray  # (n, STATIC_SLOTS) route positions of speed-limit changes; inf: none
    upcoming_limit_mps: np.ndarray  # (n, STATIC_SLOTS) the limit from there on
    signal_pos_m: np.ndarray  # stop line of the next signalised junction; inf: none
    signal_offset_s: np.ndarray
    signal_cycle_s: np.ndarray  # green for the first half of the cycle, red for the second
    junction_type: np.ndarray  # int: JUNCTION_TYPE_* of the next junction
    through_light: np.ndarray  # bool: committed to drive through a light that turned red too late
    hold_pos_m: np.ndarray  # route position of the next hold (stop and wait); inf: none
    dwell_end_ms: np.ndarray  # float: end of the dwell at the current hold; inf: not dwelling
    # an incident's direct control of the acceleration
    override_on: np.ndarray  # bool
    override_accel_mps2: np.ndarray  # the acceleration the override aims for
    override_jerk_mps3: np.ndarray  # how fast it gets there
    # fixed per vehicle
    is_truck: np.ndarray  # bool
    accel_max_mps2: np.ndarray
    wheelbase_m: np.ndarray
    soc_use_per_m: np.ndarray  # state of charge used per metre driven
    origin_lat_deg: np.ndarray  # the city's projection origin
    origin_lon_deg: np.ndarray
    city_index: np.ndarray  # int: index into the simulator's cities
    # lateral motion: a lane change is an S-curve over distance, weaving yaw lobes over time
    lane_change_on: np.ndarray  # bool
    lane_change_start_m: np.ndarray  # route position where the lane change began
    lane_change_length_m: np.ndarray
    lane_change_from_m: np.ndarray  # lateral offset (m, + left) at its start
    lane_change_shift_m: np.ndarray  # lateral shift it makes (m, + left)
    lane_return_ms: np.ndarray  # float: when to change back to the home lane; inf: no plan
    lane_index: np.ndarray  # int: 0 = the home lane, 1 = one lane to its left
    weave_on: np.ndarray  # bool
    weave_start_s: np.ndarray
    weave_amp_rps: np.ndarray  # yaw-rate amplitude
    weave_period_s: np.ndarray
    weave_lobes: np.ndarray  # number of half periods
    weave_heading_rad: np.ndarray  # heading offset the weave has built up
    weave_offset_m: np.ndarray  # lateral offset (m, + left) the weave has built up
    # 1 Hz vehicle state, as the heartbeat reports it
    mode: np.ndarray  # int: DRIVING_MODE_*
    task_state: np.ndarray  # int: TASK_STATE_*
    online: np.ndarray  # bool: sends messages this second
    charging: np.ndarray  # bool
    parked: np.ndarray  # bool
    state_of_charge: np.ndarray  # 0..1
    odometer_m: np.ndarray
    compute_temp_c: np.ndarray
    # perceived objects: the lead vehicle in the ego lane and agents beside the path (agents: (n, slots))
    lead_present: np.ndarray  # bool
    lead_gap_m: np.ndarray
    lead_rel_speed_mps: np.ndarray  # lead speed minus ego speed
    lead_track_id: np.ndarray  # int
    lead_class: np.ndarray  # int: OBJECT_CLASS_*
    agent_on: np.ndarray  # bool
    agent_class: np.ndarray  # int: OBJECT_CLASS_*
    agent_x_m: np.ndarray  # ego frame: ahead
    agent_y_m: np.ndarray  # ego frame: left
    agent_rel_vx_mps: np.ndarray  # agent speed along the road minus ego speed
    agent_length_m: np.ndarray
    agent_width_m: np.ndarray
    agent_confidence: np.ndarray
    agent_until_s: np.ndarray  # when the agent leaves the scene
    agent_track_id: np.ndarray  # int
    agent_speed_mps: np.ndarray  # agent speed along the road (negative: oncoming)
    tracks_issued: int = 0  # track ids handed out so far (ids cycle through [128, 16128))
    recentring: bool = False  # the lane keeper is pulling the weave offsets back to 0

    @classmethod
    def create(cls, vehicles: list[Vehicle], cities: list[City], params: dict, rng: np.random.Generator) -> FleetState:
        """The state at the start: every vehicle stopped, autonomous, its task running. Draws the state of
        charge, odometer and compute temperature from `rng`, in that order."""
        n = len(vehicles)
        z = _zeros
        is_truck = np.array([v.kind == "truck" for v in vehicles])
        kin, en = params["kinematics"], params["energy"]
        slots = int(params["agents"]["slots"])

        def per_kind(table: dict) -> np.ndarray:
            return np.where(is_truck, table["truck"], table["van"])

        return cls(
            n=n, pos_m=z(n), speed_mps=z(n), accel_mps2=z(n), cruise_mps=z(n), speed_cap_mps=np.full(n, INF),
            piece_x0_m=z(n), piece_y0_m=z(n), piece_heading_rad=z(n), piece_length_m=z(n), piece_turn_rad=z(n),
            piece_start_m=z(n), piece_end_m=z(n), piece_table=np.zeros(n, dtype=np.int64), speed_limit_mps=z(n),
            road_index=np.zeros(n, dtype=np.int64), lane_count=np.ones(n, dtype=np.int64),
            upcoming_pos_m=np.full((n, STATIC_SLOTS), INF), upcoming_limit_mps=np.zeros((n, STATIC_SLOTS)),
            signal_pos_m=np.full(n, INF), signal_offset_s=z(n), signal_cycle_s=np.ones(n),
            junction_type=np.zeros(n, dtype=np.int64), through_light=np.zeros(n, dtype=bool),
            hold_pos_m=np.full(n, INF), dwell_end_ms=np.full(n, INF),
            override_on=np.zeros(n, dtype=bool), override_accel_mps2=z(n), override_jerk_mps3=z(n),
            is_truck=is_truck, accel_max_mps2=per_kind(kin["accel_max_mps2"]), wheelbase_m=per_kind(kin["wheelbase_m"]),
            soc_use_per_m=per_kind(en["use_per_m"]),
            lane_change_on=np.zeros(n, dtype=bool), lane_change_start_m=z(n), lane_change_length_m=np.ones(n),
            lane_change_from_m=z(n), lane_change_shift_m=z(n), lane_return_ms=np.full(n, INF),
            lane_index=np.zeros(n, dtype=np.int64),
            weave_on=np.zeros(n, dtype=bool), weave_start_s=z(n), weave_amp_rps=z(n), weave_period_s=np.ones(n),
            weave_lobes=np.ones(n), weave_heading_rad=z(n), weave_offset_m=z(n),
            mode=np.full(n, AUTO, dtype=np.int64), task_state=np.full(n, RUNNING, dtype=np.int64),
            online=np.ones(n, dtype=bool), charging=np.zeros(n, dtype=bool), parked=np.zeros(n, dtype=bool),
            state_of_charge=rng.uniform(0.45, 1.0, n), odometer_m=rng.uniform(1e6, 8e7, n),
            compute_temp_c=rng.uniform(42, 50, n),
            origin_lat_deg=np.array([v.city.lat0 for v in vehicles]),
            origin_lon_deg=np.array([v.city.lon0 for v in vehicles]),
            city_index=np.array([cities.index(v.city) for v in vehicles]),
            lead_present=np.zeros(n, dtype=bool), lead_gap_m=z(n), lead_rel_speed_mps=z(n),
            lead_track_id=np.zeros(n, dtype=np.int64),
            lead_class=np.full(n, common_pb2.OBJECT_CLASS_CAR, dtype=np.int64),
            agent_on=np.zeros((n, slots), dtype=bool), agent_class=np.zeros((n, slots), dtype=np.int64),
            agent_x_m=np.zeros((n, slots)), agent_y_m=np.zeros((n, slots)), agent_rel_vx_mps=np.zeros((n, slots)),
            agent_length_m=np.zeros((n, slots)), agent_width_m=np.zeros((n, slots)),
            agent_confidence=np.zeros((n, slots)), agent_until_s=np.zeros((n, slots)),
            agent_track_id=np.zeros((n, slots), dtype=np.int64), agent_speed_mps=np.zeros((n, slots)))

    def new_track_id(self) -> int:
        """A fresh perception track id (2-byte varint range)."""
        self.tracks_issued += 1
        return 128 + self.tracks_issued % 16000

    def straight_ahead_m(self) -> np.ndarray:
        """Per vehicle, metres of straight road ahead before a curve, junction line or hold (0 in a curve)."""
        ahead = np.minimum(np.minimum(self.piece_end_m, self.hold_pos_m),
                           np.minimum(self.signal_pos_m, self.upcoming_pos_m[:, -1])) - self.pos_m
        return np.where(self.piece_turn_rad == 0.0, ahead, 0.0)

    def straight_ahead_m_of(self, i: int) -> float:
        """`straight_ahead_m` of vehicle i alone."""
        if self.piece_turn_rad[i] != 0.0:
            return 0.0
        return float(min(self.piece_end_m[i], self.hold_pos_m[i], self.signal_pos_m[i],
                         self.upcoming_pos_m[i, STATIC_SLOTS - 1]) - self.pos_m[i])
