"""The synthetic world: a street grid per city with parks, a tunnel and an elevated road, highway legs
for trucks, road pieces with smooth curvature, weather and daylight.

Geometry is in a local metric frame per city (x east, y north, metres, origin at the grid's
south-west junction); lat/lon come from an equirectangular projection around the city origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fleetloop.v1 import common_pb2

EARTH_RADIUS_M = 6_371_000.0
TABLE_POINTS = 33
DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # E, N, W, S; heading of dir d is d * pi / 2

ROAD_TYPES = {"park": common_pb2.ROAD_TYPE_PARK, "urban": common_pb2.ROAD_TYPE_URBAN,
              "tunnel": common_pb2.ROAD_TYPE_TUNNEL, "elevated": common_pb2.ROAD_TYPE_ELEVATED,
              "highway": common_pb2.ROAD_TYPE_HIGHWAY}
J_NONE = common_pb2.JUNCTION_TYPE_NONE
J_SIGNAL = common_pb2.JUNCTION_TYPE_SIGNALIZED
J_YIELD = common_pb2.JUNCTION_TYPE_UNSIGNALIZED


class CurveBank:
    """Unit-length road pieces of a given total turn angle, as lookup tables.

    A piece turns by `angle` rad with curvature kappa(u) = angle / L * (1 - cos 2 pi u), u = s / L:
    curvature (and so steering and yaw rate) rises and falls smoothly, no step at the ends.
    `tables[i]` holds (TABLE_POINTS, 2) local x/y of a piece of length 1 starting at the origin
    heading +x; a piece of length L scales it by L.
    """

    def __init__(self) -> None:
        self._index: dict[float, int] = {}
        self._tables: list[np.ndarray] = []
        self.tables = np.zeros((0, TABLE_POINTS, 2))
        self.table_id(0.0)

    def table_id(self, angle: float) -> int:
        key = round(angle, 6)
        if key not in self._index:
            u = np.linspace(0.0, 1.0, 2049)
            heading = key * (u - np.sin(2 * np.pi * u) / (2 * np.pi))
            du = u[1] - u[0]
            cx = np.concatenate([[0.0], np.cumsum((np.cos(heading[1:]) + np.cos(heading[:-1])) * du / 2)])
            cy = np.concatenate([[0.0], np.cumsum((np.sin(heading[1:]) + np.sin(heading[:-1])) * du / 2)])
            pick = np.linspace(0, 2048, TABLE_POINTS).astype(int)
            self._tables.append(np.stack([cx[pick], cy[pick]], axis=1))
            self._index[key] = len(self._tables) - 1
            self.tables = np.stack(self._tables)
        return self._index[key]

    def end_offset(self, angle: float) -> tuple[float, float]:
        """Local (x, y) of the end of a unit-length piece turning by `angle`."""
        tid = self.table_id(angle)
        x, y = self.tables[tid, -1]
        return float(x), float(y)


@dataclass
class Piece:
    """One road piece of a vehicle's route: a straight or a smooth curve.

    `s0` is the route coordinate (m) where the piece starts. A straight that ends at a junction
    carries the junction's type, its signal timing and the route coordinate of its stop line.
    """

    s0: float
    x0: float
    y0: float
    h0: float
    length: float
    angle: float
    table: int
    road: str
    limit_mps: float
    lanes: int
    junction: int = J_NONE
    stop_line_s: float = math.inf
    signal_offset_s: float = 0.0
    signal_cycle_s: float = 0.0

    @property
    def s1(self) -> float:
        return self.s0 + self.length


@dataclass
class Hold:
    """A place on the route where the vehicle stops and waits `dwell_s` (inf: until released).

    `on_arrive(t_ms)` / `on_release(t_ms)` let tasks and incidents react to the stop.
    """

    pos: float
    dwell_s: float
    on_arrive: object = None
    on_release: object = None
    arrived_ms: int | None = None


@dataclass
class Park:
    name: str
    city: str
    nodes: list[tuple[int, int]]
    depot: tuple[int, int]


@dataclass
class City:
    name: str
    lat0: float
    lon0: float
    utc_offset_h: float
    map: CityMap
    parks: list[Park]
    hub: Park
    weather: list[int]  # WEATHER_* per simulated hour


class CityMap:
    """A square street grid with two parks, a tunnel and an elevated road.

    Nodes are junctions (ix, iy); edges join neighbours. Road class of an edge: park inside a park,
    tunnel / elevated on their lines, urban elsewhere. Interior nodes of the tunnel and the
    elevated road are no junctions (straight on only).
    """

    def __init__(self, params: dict, roads: dict, rng: np.random.Generator, bank: CurveBank) -> None:
        self.n = int(params["grid_nodes"])
        self.block = float(params["block_m"])
        self.roads = roads
        self.bank = bank
        self.turn_offset = params["turn_offset_m"]
        self.stop_back = float(params["stop_line_before_node_m"])
        n = self.n
        self.park_regions = [{(ix, iy) for ix in range(3) for iy in range(3)},
                             {(ix, iy) for ix in range(n - 3, n) for iy in range(n - 3, n)}]
        mid = n // 2
        self.tunnel_edges = {frozenset({(mid, iy), (mid, iy + 1)}) for iy in range(2, 5)}
        self.elevated_edges = {frozenset({(ix, n - 2), (ix + 1, n - 2)}) for ix in range(1, 5)}
        none_nodes = {(mid, 3), (mid, 4)} | {(ix, n - 2) for ix in range(2, 5)}
        self.junction: dict[tuple[int, int], int] = {}
        self.signal: dict[tuple[int, int], tuple[float, float]] = {}
        cycles = params["signal_cycles_s"]
        for ix in range(n):
            for iy in range(n):
                node = (ix, iy)
                if node in none_nodes:
                    self.junction[node] = J_NONE
                elif any(node in region for region in self.park_regions):
                    self.junction[node] = J_YIELD
                elif rng.random() < params["signalized_share"]:
                    cycle = float(cycles[int(rng.integers(len(cycles)))])
                    self.junction[node] = J_SIGNAL
                    self.signal[node] = (cycle, float(rng.uniform(0, cycle)))
                else:
                    self.junction[node] = J_YIELD
        self.junction_nodes = [node for node, j in sorted(self.junction.items()) if j != J_NONE]

    def xy(self, node: tuple[int, int]) -> tuple[float, float]:
        return node[0] * self.block, node[1] * self.block

    def road_of(self, a: tuple[int, int], b: tuple[int, int]) -> str:
        edge = frozenset({a, b})
        if edge in self.tunnel_edges:
            return "tunnel"
        if edge in self.elevated_edges:
            return "elevated"
        if any(a in region and b in region for region in self.park_regions):
            return "park"
        return "urban"

    def inside(self, node: tuple[int, int]) -> bool:
        return 0 <= node[0] < self.n and 0 <= node[1] < self.n

    def options(self, node: tuple[int, int], heading_dir: int) -> list[int]:
        """Directions a vehicle arriving at `node` heading `heading_dir` may leave in (no U-turns)."""
        if self.junction[node] == J_NONE:
            dirs = [heading_dir]
        else:
            dirs = [heading_dir, (heading_dir + 1) % 4, (heading_dir + 3) % 4]
        return [d for d in dirs if self.inside((node[0] + DIRS[d][0], node[1] + DIRS[d][1]))]


def straight_piece(s0: float, x0: float, y0: float, h0: float, length: float, road: str,
                   roads: dict) -> Piece:
    spec = roads[road]
    return Piece(s0=s0, x0=x0, y0=y0, h0=h0, length=length, angle=0.0, table=0, road=road,
                 limit_mps=float(spec["limit_mps"]), lanes=int(spec["lanes"]))


def curve_piece(s0: float, x0: float, y0: float, h0: float, length: float, angle: float, road: str,
                roads: dict, bank: CurveBank, lat_accel_mps2: float) -> Piece:
    """A smooth curve; its limit is the road's or the speed at which the tightest point reaches
    `lat_accel_mps2` lateral acceleration (kappa_max = 2 |angle| / length)."""
    spec = roads[road]
    kappa_max = 2.0 * abs(angle) / length
    limit = min(float(spec["limit_mps"]), math.sqrt(lat_accel_mps2 / kappa_max))
    return Piece(s0=s0, x0=x0, y0=y0, h0=h0, length=length, angle=angle, table=bank.table_id(angle),
                 road=road, limit_mps=limit, lanes=1 if abs(angle) > 0.5 else int(spec["lanes"]))


def piece_end(piece: Piece, bank: CurveBank) -> tuple[float, float, float]:
    """World (x, y, heading) at the end of a piece."""
    ux, uy = bank.end_offset(piece.angle)
    c, s = math.cos(piece.h0), math.sin(piece.h0)
    return (piece.x0 + piece.length * (c * ux - s * uy), piece.y0 + piece.length * (s * ux + c * uy),
            piece.h0 + piece.angle)


def highway_leg(rng: np.random.Generator, params: dict) -> list[tuple[str, float, float]]:
    """A trunk leg as (road, length_m, turn_angle_rad) sections: urban access, highway straights and
    gentle curves with a tunnel and an elevated stretch, urban access at the far hub."""
    total = float(rng.uniform(*params["highway_leg_m"]))
    access = float(params["highway_access_m"])
    sections: list[tuple[str, float, float]] = [("urban", access, 0.0)]
    done = 0.0
    special = {int(rng.integers(2, 6)): "tunnel", int(rng.integers(7, 12)): "elevated"}
    k = 0
    while done < total - 2 * access:
        if k % 2 == 0:
            length = float(rng.uniform(1500, 3500))
            sections.append((special.get(k // 2, "highway"), length, 0.0))
        else:
            length = float(rng.uniform(400, 800))
            sections.append(("highway", length, float(rng.uniform(0.1, 0.3)) * (1 if rng.random() < 0.5 else -1)))
        done += length
        k += 1
    sections.append(("urban", access, 0.0))
    return sections


def build_sections(start: tuple[float, float, float], sections: list[tuple[str, float, float]], s0: float,
                   roads: dict, bank: CurveBank, lat_accel_mps2: float) -> list[Piece]:
    """Pieces laid end to end from `start` = (x, y, heading)."""
    pieces = []
    x, y, h = start
    s = s0
    for road, length, angle in sections:
        if angle == 0.0:
            p = straight_piece(s, x, y, h, length, road, roads)
        else:
            p = curve_piece(s, x, y, h, length, angle, road, roads, bank, lat_accel_mps2)
        pieces.append(p)
        x, y, h = piece_end(p, bank)
        s += length
    return pieces


def reversed_sections(sections: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The same road driven the other way (the curvature profile is symmetric)."""
    return [(road, length, -angle) for road, length, angle in reversed(sections)]


def light_of(local_hour: float) -> int:
    """Daylight from the local time of day (June at ~30 deg N: sunrise ~05:00, sunset ~19:00)."""
    if 5.5 <= local_hour < 18.5:
        return common_pb2.LIGHT_DAY
    if 4.75 <= local_hour < 5.5 or 18.5 <= local_hour < 19.5:
        return common_pb2.LIGHT_DUSK
    return common_pb2.LIGHT_NIGHT


_WEATHERS = (common_pb2.WEATHER_CLEAR, common_pb2.WEATHER_CLOUDY, common_pb2.WEATHER_RAIN,
             common_pb2.WEATHER_FOG)
# Hourly Markov chain (rows: from clear, cloudy, rain, fog): weather persists for hours and rain
# comes through clouds, as in a June plum-rain season.
_WEATHER_CHAIN = np.array([[0.75, 0.22, 0.02, 0.01],
                           [0.25, 0.50, 0.22, 0.03],
                           [0.05, 0.40, 0.55, 0.00],
                           [0.30, 0.50, 0.00, 0.20]])


def weather_hours(rng: np.random.Generator, hours: int) -> list[int]:
    """Weather per hour from a seeded Markov chain."""
    state = int(rng.choice(4, p=[0.5, 0.3, 0.15, 0.05]))
    out = []
    for _ in range(hours):
        out.append(_WEATHERS[state])
        state = int(rng.choice(4, p=_WEATHER_CHAIN[state]))
    return out


def latlon(x: np.ndarray, y: np.ndarray, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    """Equirectangular projection of local metres around (lat0, lon0)."""
    k = 180.0 / math.pi / EARTH_RADIUS_M
    return lat0 + y * k, lon0 + x * k / np.cos(np.radians(lat0))
