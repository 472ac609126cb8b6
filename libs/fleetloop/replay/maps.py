"""Map crops for scenarios: a small provider interface, two providers and the padding into tensors.

A `MapProvider` answers `crop(city, x_m, y_m, heading_rad, radius_m)` with `MapPolyline`s in its own
map frame (metres): lane centres (with their speed limit, vertices in the direction of travel), road
edges, crosswalk outlines and stop lines (`MapKind`). `SimWorldMap` stands in for the HD map the
fleet drives: the simulator's city street grids and the trucks' highway legs. `PolylineMap` holds
the roads the scenario generator lays out. `pad_map` moves crops into a scenario's ego-centred frame
and pads them to the fixed `[P, V, 2]` layout of `ScenarioBatch`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from fleetloop.replay.scenario import MapKind
from fleetloop.sim.world import (
    DIRS,
    J_NONE,
    J_SIGNAL,
    TABLE_POINTS,
    CurveBank,
    Piece,
    build_sections,
    curve_piece,
    piece_end,
    reversed_sections,
)

if TYPE_CHECKING:
    from fleetloop.sim.fleet import FleetSimulator
    from fleetloop.sim.world import City, CityMap


@dataclass(frozen=True)
class MapPolyline:
    """One map element: `xy` float64 `[N, 2]` (m, map frame), `speed_limit_mps` on lane centres (NaN
    elsewhere). Crosswalks are closed outlines (first vertex repeated last)."""

    kind: MapKind
    xy: np.ndarray
    speed_limit_mps: float = math.nan


class MapProvider(Protocol):
    """The polylines within `radius_m` of (x_m, y_m) in `city`'s map frame. `heading_rad` is the
    viewer's heading: a provider whose roads are driven differently by direction (the simulator's)
    uses it to pick the carriageway the viewer is on."""

    def crop(self, city: str, x_m: float, y_m: float, heading_rad: float, radius_m: float) -> list[MapPolyline]:
        ...


def densify(xy: np.ndarray, spacing_m: float) -> np.ndarray:
    """The polyline resampled at (at most) `spacing_m` along its length, keeping its end points."""
    seg = np.hypot(*np.diff(xy, axis=0).T)
    if len(xy) < 2 or seg.sum() == 0:
        return xy[:1].copy()
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / spacing_m)) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, xy[:, 0]), np.interp(t, s, xy[:, 1])], axis=1)


def clip_to_radius(line: MapPolyline, x_m: float, y_m: float, radius_m: float,
                   spacing_m: float) -> list[MapPolyline]:
    """The parts of a (densified) polyline within `radius_m`; a polyline that leaves and re-enters
    the circle becomes several."""
    xy = densify(line.xy, spacing_m)
    inside = np.hypot(xy[:, 0] - x_m, xy[:, 1] - y_m) <= radius_m
    out = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inside.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if stop - start >= 2:
            out.append(MapPolyline(line.kind, xy[start:stop], line.speed_limit_mps))
    return out


class PolylineMap:
    """A provider over fixed polylines (one map frame for every city): the generator's roads."""

    def __init__(self, polylines: Iterable[MapPolyline], spacing_m: float = 5.0) -> None:
        self.polylines = list(polylines)
        self.spacing_m = spacing_m

    def crop(self, city: str, x_m: float, y_m: float, heading_rad: float, radius_m: float) -> list[MapPolyline]:
        return [part for line in self.polylines for part in clip_to_radius(line, x_m, y_m, radius_m, self.spacing_m)]


def to_frame(xy: np.ndarray, origin_x_m: float, origin_y_m: float, origin_heading_rad: float) -> np.ndarray:
    """Map-frame points `[..., 2]` into the frame at (origin, heading): R(-heading) (p - origin)."""
    c, s = math.cos(origin_heading_rad), math.sin(origin_heading_rad)
    dx, dy = xy[..., 0] - origin_x_m, xy[..., 1] - origin_y_m
    return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)


@dataclass(frozen=True)
class MapLayout:
    """The padded size of a map crop: `n_polylines` P, `n_vertices` V, vertex spacing and radius (m)."""

    n_polylines: int
    n_vertices: int
    spacing_m: float
    radius_m: float

    @classmethod
    def from_config(cls, scenario_section: dict) -> MapLayout:
        return cls(int(scenario_section["map_polylines"]), int(scenario_section["map_vertices"]),
                   float(scenario_section["map_vertex_spacing_m"]), float(scenario_section["map_radius_m"]))


def _chunks(line: MapPolyline, n_vertices: int, spacing_m: float) -> list[MapPolyline]:
    """A polyline resampled at `spacing_m` and cut into pieces of at most `n_vertices` vertices that
    share their end points (a long lane becomes several polylines of the same kind and limit)."""
    xy = densify(line.xy, spacing_m) if line.kind != MapKind.CROSSWALK else line.xy
    if len(xy) <= n_vertices:
        return [MapPolyline(line.kind, xy, line.speed_limit_mps)]
    step = n_vertices - 1
    return [MapPolyline(line.kind, xy[i:i + n_vertices], line.speed_limit_mps)
            for i in range(0, len(xy) - 1, step) if len(xy[i:i + n_vertices]) >= 2]


def pad_map(crops: Sequence[Sequence[MapPolyline]], origins: Sequence[tuple[float, float, float]], layout: MapLayout,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map crops (map frame) -> `map_xy [S, P, V, 2]`, `map_valid [S, P, V]`, `map_kind [S, P]`,
    `map_speed_limit_mps [S, P]` in each scenario's ego frame (`origins[i]` = origin x, y, heading).

    Polylines are resampled at `layout.spacing_m` and cut to `V` vertices; when more than `P` remain,
    the ones nearest the ego are kept (what the first seconds of any candidate drive through).
    """
    s, p, v = len(crops), layout.n_polylines, layout.n_vertices
    xy = np.zeros((s, p, v, 2), dtype=np.float32)
    valid = np.zeros((s, p, v), dtype=bool)
    kind = np.zeros((s, p), dtype=np.int64)
    limit = np.full((s, p), np.nan, dtype=np.float32)
    for i, (crop, origin) in enumerate(zip(crops, origins, strict=True)):
        pieces = [c for line in crop for c in _chunks(line, v, layout.spacing_m)]
        local = [to_frame(c.xy, *origin) for c in pieces]
        near = [float(np.hypot(pts[:, 0], pts[:, 1]).min()) for pts in local]
        for j, k in enumerate(sorted(range(len(pieces)), key=lambda m: near[m])[:p]):
            n = len(local[k])
            xy[i, j, :n] = local[k]
            valid[i, j, :n] = True
            kind[i, j] = int(pieces[k].kind)
            limit[i, j] = pieces[k].speed_limit_mps
    return (torch.from_numpy(xy).to(device), torch.from_numpy(valid).to(device), torch.from_numpy(kind).to(device),
            torch.from_numpy(limit).to(device))


# ---------------------------------------------------------------------------------------------- simulator world


def piece_line(piece: Piece, bank: CurveBank, offset_m: float) -> np.ndarray:
    """World points `[TABLE_POINTS, 2]` of a route piece shifted `offset_m` to its left."""
    table = bank.tables[piece.table] * piece.length
    c, s = math.cos(piece.h0), math.sin(piece.h0)
    u = np.linspace(0.0, 1.0, TABLE_POINTS)
    heading = piece.h0 + piece.angle * (u - np.sin(2 * np.pi * u) / (2 * np.pi))
    x = piece.x0 + c * table[:, 0] - s * table[:, 1] - np.sin(heading) * offset_m
    y = piece.y0 + s * table[:, 0] + c * table[:, 1] + np.cos(heading) * offset_m
    return np.stack([x, y], axis=1)


class SimWorldMap:
    """The simulator's world as an HD map, in each city's local metric frame (x east, y north).

    The simulator drives every road on its reference line (the grid line, or a highway leg's centre)
    with the lane index counted from the right: lane k's centre lies `k × lane_width_m` left of the
    line, in the direction of travel, and a lane change moves one lane width left (sim.yaml
    `lane_change.lateral_m`). So a road seen in one direction has its lanes at 0, w, 2w, … to the
    left, its edges half a lane outside them, and a stop line `stop_line_before_node_m` before each
    junction that is not straight-on only (a crosswalk behind it at signalised ones). A crop picks,
    per road, the direction of travel nearest the viewer's heading (a cross street: the direction
    leaving the junction the viewer approaches), which is the carriageway the simulator drives.
    """

    def __init__(self, cities: Sequence[City], params: dict, bank: CurveBank,
                 legs: dict[str, list[list[Piece]]] | None = None, lane_width_m: float = 3.5) -> None:
        self.cities = {c.name: c for c in cities}
        self.params = params
        self.bank = bank
        self.legs = legs or {}
        self.lane_width_m = lane_width_m

    @classmethod
    def from_simulator(cls, sim: FleetSimulator) -> SimWorldMap:
        """The map of a simulator's cities, with every truck's highway leg (out and back) laid out as
        the simulator lays it: from the hub, a 12 m turning yard, the leg reversed."""
        legs: dict[str, list[list[Piece]]] = {}
        lat = sim.p["kinematics"]["lat_accel_turn_mps2"]
        for veh in sim.vehicles:
            if veh.kind != "truck":
                continue
            out = build_sections(veh.hub_xyh, veh.leg_sections, 0.0, sim.p["roads"], sim.bank, lat)
            end = piece_end(out[-1], sim.bank)
            _, uy = sim.bank.end_offset(math.pi)
            yard = curve_piece(out[-1].s1, *end, 12.0 / uy, math.pi, "urban", sim.p["roads"], sim.bank, lat)
            back = build_sections(piece_end(yard, sim.bank), reversed_sections(veh.leg_sections), yard.s1,
                                  sim.p["roads"], sim.bank, lat)
            legs.setdefault(veh.city.name, []).extend([out, back])
        return cls(sim.cities, sim.p, sim.bank, legs, float(sim.p["lane_change"]["lateral_m"]))

    def crop(self, city: str, x_m: float, y_m: float, heading_rad: float, radius_m: float) -> list[MapPolyline]:
        if city not in self.cities:
            raise KeyError(f"unknown city {city!r}; the map holds {', '.join(sorted(self.cities))}")
        lines = self._grid(self.cities[city], x_m, y_m, heading_rad, radius_m)
        for leg in self.legs.get(city, []):
            lines += self._leg(leg, x_m, y_m, heading_rad, radius_m)
        spacing = 2.0
        return [part for line in lines for part in clip_to_radius(line, x_m, y_m, radius_m, spacing)]

    def _road(self, start: np.ndarray, direction: np.ndarray, length: float, lanes: int, limit: float,
              trim_m: tuple[float, float]) -> list[MapPolyline]:
        """Lane centres over the whole length (through traffic crosses the junctions on them) and road
        edges that stop `trim_m` (start, end) short of a junction, where turns leave the straight."""
        w = self.lane_width_m
        left = np.array([-direction[1], direction[0]])
        out = []
        for k in range(lanes):
            a = start + left * k * w
            out.append(MapPolyline(MapKind.LANE_CENTRE, np.stack([a, a + direction * length]), limit))
        for off in (-w / 2, (lanes - 0.5) * w):
            a = start + left * off
            out.append(MapPolyline(MapKind.ROAD_EDGE, np.stack([a + direction * trim_m[0],
                                                                a + direction * (length - trim_m[1])])))
        return out

    def _grid(self, city: City, x_m: float, y_m: float, heading: float, radius: float) -> list[MapPolyline]:
        cmap = city.map
        roads = self.params["roads"]
        w = self.lane_width_m
        view = np.array([math.cos(heading), math.sin(heading)])
        out: list[MapPolyline] = []
        for ix in range(cmap.n):
            for iy in range(cmap.n):
                a = (ix, iy)
                for d in (0, 1):
                    b = (ix + DIRS[d][0], iy + DIRS[d][1])
                    if not cmap.inside(b):
                        continue
                    pa, pb = np.array(cmap.xy(a)), np.array(cmap.xy(b))
                    mid = (pa + pb) / 2
                    if np.hypot(*(mid - (x_m, y_m))) > radius + cmap.block:
                        continue
                    unit = (pb - pa) / cmap.block
                    if abs(unit @ view) < 0.5:  # a cross street: leave the junction the viewer approaches
                        rel = np.array([x_m, y_m]) - mid
                        cross = view[0] * rel[1] - view[1] * rel[0]
                        forward = (unit @ np.array([-view[1], view[0]])) * -cross >= 0
                    else:
                        forward = unit @ view >= 0
                    src, dst, unit = (pa, pb, unit) if forward else (pb, pa, -unit)
                    node_src, node_dst = (a, b) if forward else (b, a)
                    road = cmap.road_of(a, b)
                    lanes, limit = int(roads[road]["lanes"]), float(roads[road]["limit_mps"])
                    turn = float(cmap.turn_offset["park" if road == "park" else "urban"])
                    trim = tuple(turn if cmap.junction[nd] != J_NONE else 0.0 for nd in (node_src, node_dst))
                    out += self._road(src, unit, cmap.block, lanes, limit, trim)
                    left = np.array([-unit[1], unit[0]])
                    out += self._turns(cmap, node_dst, unit)
                    if cmap.junction[node_dst] != J_NONE:
                        node = node_dst
                        centre = np.array(cmap.xy(node))
                        stop = centre - unit * float(self.params["map"]["stop_line_before_node_m"])
                        across = np.stack([stop - left * w / 2, stop + left * (lanes - 0.5) * w])
                        out.append(MapPolyline(MapKind.STOP_LINE, across))
                        if cmap.junction[node] == J_SIGNAL:
                            near, far = stop + unit * 1.0, stop + unit * 4.0
                            lo, hi = -left * w / 2, left * (lanes - 0.5) * w
                            out.append(MapPolyline(MapKind.CROSSWALK, np.stack(
                                [near + lo, far + lo, far + hi, near + hi, near + lo])))
        return out

    def _turns(self, cmap: CityMap, node: tuple[int, int], unit: np.ndarray) -> list[MapPolyline]:
        """The turns the simulator drives at `node` arriving along `unit`: lane centres of the smooth
        90° curves from `turn_offset_m` before the junction centre into the lane of each side street
        (the curve's limit is the simulator's: the road's, capped by the lateral-acceleration bound)."""
        d_in = DIRS.index((int(round(unit[0])), int(round(unit[1]))))
        in_park = any(node in region for region in cmap.park_regions)
        r = float(cmap.turn_offset["park" if in_park else "urban"])
        lat = float(self.params["kinematics"]["lat_accel_turn_mps2"])
        out = []
        for d_out in cmap.options(node, d_in):
            if d_out == d_in:
                continue
            angle = math.pi / 2 if d_out == (d_in + 1) % 4 else -math.pi / 2
            ux, _ = self.bank.end_offset(angle)
            x0, y0 = cmap.xy(node)
            road = cmap.road_of(node, (node[0] + DIRS[d_out][0], node[1] + DIRS[d_out][1]))
            piece = curve_piece(0.0, x0 - DIRS[d_in][0] * r, y0 - DIRS[d_in][1] * r, d_in * math.pi / 2, r / ux, angle,
                                road, self.params["roads"], self.bank, lat)
            out.append(MapPolyline(MapKind.LANE_CENTRE, piece_line(piece, self.bank, 0.0), piece.limit_mps))
        return out

    def _leg(self, pieces: list[Piece], x_m: float, y_m: float, heading: float, radius: float) -> list[MapPolyline]:
        out = []
        w = self.lane_width_m
        for p in pieces:
            if math.hypot(p.x0 - x_m, p.y0 - y_m) > radius + p.length:
                continue
            for k in range(p.lanes):
                out.append(MapPolyline(MapKind.LANE_CENTRE, piece_line(p, self.bank, k * w), p.limit_mps))
            for off in (-w / 2, (p.lanes - 0.5) * w):
                out.append(MapPolyline(MapKind.ROAD_EDGE, piece_line(p, self.bank, off)))
        return out
