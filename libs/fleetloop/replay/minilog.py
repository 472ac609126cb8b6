"""Scenarios from the fleet: a case's minilog MCAP as vehicles upload it, and the simulator's ground
truth of the same moment, as `ScenarioBatch`es in the same ego-centred frame.

A minilog (vehicle/logs.py) holds 10 Hz ego poses (`PoseBatch`, packed columns, the map frame), 1 Hz
`PerceptionSummary`s whose objects are in the ego frame of their second (x ahead, y left; velocity
relative to the ego), heartbeats (city) and the `fleetloop.upload` metadata (case, vehicle, window).
`from_minilog` puts the ego on the scenario's 10 Hz grid, moves every detection into the map frame
with the ego pose of its time, associates detections by `track_id`, interpolates linearly between
detections of a track up to `fill_gap_s` apart (those steps are `filled`) and reads weather, light
and road type from the perception of the current step. Positions become box centres on reading: a
summary's `rel_x_m` is read by its `position_reference` (unset or BUMPER_GAP: the bumper gap, what
the simulator sends; BOX_CENTRE: the centre distance) through `criticality.box_offsets`, the
conversion near_miss and the labels use, with the summary's ego length or else the scenario's. The
minilog carries the planner's candidate costs, not its path: `planner_xy` stays empty and the
costs' gap becomes the tag `planner_gap:<g>`.

`TruthRecorder` runs beside the simulator and keeps, per second, the objects the simulator placed
around a vehicle (in float64, before serialisation; bumper gaps, like its perception, turned into
box centres the same way) and its ego pose; `from_ground_truth` turns them into the same layout,
each object moving at its own velocity between seconds (the simulator's model of its agents)
instead of being interpolated. `perception_error` compares the two by track id.

Vehicle events inside the window become tags `event:<kind>` (`event:contact`, `event:takeover`, ...).
Track ids travel in the tag `tracks:<id of slot 0>,<id of slot 1>,...` (-1 for the ego and empty
slots): `track_ids(meta)` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from fleetloop import topics
from fleetloop.codec import pose_columns
from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.generator import Window
from fleetloop.replay.maps import MapLayout, MapProvider, pad_map
from fleetloop.replay.scenario import AgentClass, AgentModel, ScenarioBatch, ScenarioError, ScenarioMeta
from fleetloop.sim.fleet import FleetSimulator, SimSecond
from fleetloop.triggers import criticality
from fleetloop.v1 import common_pb2
from fleetloop.vehicle.logs import CHANNELS, read_mcap

TRACKS_TAG = "tracks:"
FILL_GAP_S = 2.0  # interpolate across at most one missed 1 Hz detection; a longer silence is no track
# Ego box (length, width m): the fleet's delivery van (the simulator's car size); trucks pass their own.
VAN_SIZE_M = (4.6, 1.9)
TRUCK_SIZE_M = (9.0, 2.5)  # the simulator's truck objects


@dataclass
class EgoLog:
    """10 Hz ego samples in the map frame: t_ms int64 `[N]`, x, y (m), heading (rad), speed (m/s) float64."""

    t_ms: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    speed: np.ndarray

    @classmethod
    def from_samples(cls, poses: dict[int, tuple[float, float, float, float]]) -> EgoLog:
        """From samples t_ms -> (x, y, heading, speed), in time order, heading unwrapped."""
        t = np.array(sorted(poses), dtype=np.int64)
        x, y, h, v = (np.array([poses[k][j] for k in t]) for j in range(4))
        return cls(t, x, y, np.unwrap(h), v)


def _pose_samples(pose: common_pb2.PoseBatch) -> dict[int, tuple[float, float, float, float]]:
    """A pose batch's samples: t_ms -> (x m, y m, heading rad, speed m/s), map frame."""
    cols = pose_columns(pose)
    return {int(cols["t_ms"][k]): (float(cols["x_m"][k]), float(cols["y_m"][k]), float(cols["heading_rad"][k]),
                                   float(cols["speed_mps"][k])) for k in range(pose.sample_count)}


@dataclass
class Detections:
    """Objects of 1 Hz summaries, one row each, in the ego frame of `t_ms`: track_id, object_class
    (int64), rel_x/rel_y (m, x ahead, y left) of the object box's centre from the ego box's centre
    (rel_x: the summary's `rel_x_m` through `criticality.box_offsets`, whichever position reference
    the summary used), rel_vx/rel_vy (m/s, relative to the ego), length/width (m), emerged (bool: from
    occlusion)."""

    t_ms: np.ndarray
    track_id: np.ndarray
    object_class: np.ndarray
    rel_x: np.ndarray
    rel_y: np.ndarray
    rel_vx: np.ndarray
    rel_vy: np.ndarray
    length: np.ndarray
    width: np.ndarray
    emerged: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> Detections:
        cols = list(zip(*rows, strict=True)) if rows else [()] * 10
        kinds = (np.int64, np.int64, np.int64) + (np.float64,) * 6 + (bool,)
        return cls(*(np.asarray(c, dtype=k) for c, k in zip(cols, kinds, strict=True)))


@dataclass
class Context:
    """What the log says about the moment besides the tracks."""

    case_id: str = ""
    vehicle_id: str = ""
    city: str = ""
    summaries: list[tuple[int, common_pb2.PerceptionSummary]] = field(default_factory=list)
    events: list[tuple[int, int]] = field(default_factory=list)  # (t_ms, EventKind) of vehicle events


def track_ids(meta: ScenarioMeta) -> list[int]:
    """Track id per agent slot (-1: the ego or an empty slot), from the `tracks:` tag."""
    for tag in meta.tags:
        if tag.startswith(TRACKS_TAG):
            return [int(v) for v in tag[len(TRACKS_TAG):].split(",")]
    raise ScenarioError(f"scenario {meta.scenario_id}: no {TRACKS_TAG} tag (not built from a log)")


def _detection_row(t_ms: int, o: common_pb2.PerceivedObject) -> tuple:
    """One `Detections` row as the object says it (`rel_x_m` in its summary's reading)."""
    return (t_ms, o.track_id, o.object_class, o.rel_x_m, o.rel_y_m, o.rel_vx_mps, o.rel_vy_mps, o.length_m,
            o.width_m, o.emerged_from_occlusion)


def position_reading(summary: common_pb2.PerceptionSummary, ego_length_m: float) -> tuple[float, bool]:
    """How a summary's `rel_x_m` reads: (the ego's length, m: its own when it sends one, else
    `ego_length_m`; bumper gap: True for UNSPECIFIED and BUMPER_GAP, False for BOX_CENTRE)."""
    ego_l = summary.ego_length_m if summary.HasField("ego_length_m") and summary.ego_length_m > 0 else ego_length_m
    return ego_l, summary.position_reference != common_pb2.POSITION_REFERENCE_BOX_CENTRE


def _to_centres(det: Detections, ego_length_m: np.ndarray | float, bumper_gap: np.ndarray | bool) -> Detections:
    """`det` with `rel_x` turned into box centre distances (`criticality.box_offsets`)."""
    return replace(det, rel_x=criticality.box_offsets(det.rel_x, det.length, ego_length_m, bumper_gap))


def read_minilog(mcap_bytes: bytes, ego_length_m: float = VAN_SIZE_M[0]) -> tuple[EgoLog, Detections, Context]:
    """The ego samples, the detections and the context of a minilog MCAP (`vehicle/logs.read_mcap`);
    the detections' positions are box centres (`position_reading`; `ego_length_m`: the ego's length
    where a summary does not send it). Raises ScenarioError when the file has no ego pose or an empty
    window."""
    metadata, messages = read_mcap(mcap_bytes)
    case = metadata.get("case_id", "")
    name = f"minilog {case or '?'}"
    start, end = int(metadata.get("window_start_ms", 0) or 0), int(metadata.get("window_end_ms", 0) or 0)
    if metadata and end <= start:
        raise ScenarioError(f"{name}: empty window ({start}..{end} ms)")
    ctx = Context(case_id=case, vehicle_id=metadata.get("vehicle_id", ""))
    poses: dict[int, tuple] = {}
    rows: list[tuple] = []
    readings: list[tuple[float, bool]] = []
    for channel, _, env in messages:
        if channel == CHANNELS[topics.POSE]:
            poses.update(_pose_samples(env.pose))
        elif channel == CHANNELS[topics.PERCEPTION]:
            ctx.summaries.append((env.event_time_ms, env.perception))
            rows += [_detection_row(env.event_time_ms, o) for o in env.perception.objects]
            readings += [position_reading(env.perception, ego_length_m)] * len(env.perception.objects)
        elif channel == CHANNELS[topics.HEARTBEAT] and not ctx.city:
            ctx.city = env.heartbeat.city
        elif channel == CHANNELS[topics.EVENTS]:
            ctx.events.append((env.event_time_ms, env.event.kind))
        ctx.vehicle_id = ctx.vehicle_id or env.vehicle_id
    if not poses:
        raise ScenarioError(f"{name}: no ego pose in the file ({len(messages)} messages)")
    ego_l = np.array([r[0] for r in readings], dtype=np.float64)
    bumper = np.array([r[1] for r in readings], dtype=bool)
    return EgoLog.from_samples(poses), _to_centres(Detections.from_rows(rows), ego_l, bumper), ctx


def from_minilog(mcap_bytes: bytes, map_provider: MapProvider, config: ReplayConfig, at_ms: int | None = None,
                 device: torch.device | str = "cpu", ego_size_m: tuple[float, float] = VAN_SIZE_M) -> ScenarioBatch:
    """One scenario from a minilog: the counterfactual starts at `at_ms` (default: the latest time whose
    horizon the log still covers, which for the fleet's 10 s + 5 s case window is 3 s before the
    trigger); the ego box is `ego_size_m` (length, width; the log does not say), whose length also
    reads the summaries' `rel_x_m` unless a summary sends its own `ego_length_m`. Raises ScenarioError
    for a file without ego pose, an empty window, an `at_ms` the log does not cover, or a detection
    without size."""
    ego, det, ctx = read_minilog(mcap_bytes, ego_size_m[0])
    return _scenario(ego, det, ctx, at_ms, map_provider, config, "minilog", device, ego_size_m)


def _grid_times(ego: EgoLog, window: Window, at_ms: int | None, name: str) -> np.ndarray:
    dt_ms = round(window.dt_s * 1000)
    if at_ms is None:
        at_ms = int(ego.t_ms[-1]) - (window.n_steps - 1 - window.current_step) * dt_ms
        at_ms = max(at_ms, int(ego.t_ms[0]) + window.current_step * dt_ms)
    if not ego.t_ms[0] <= at_ms <= ego.t_ms[-1]:
        raise ScenarioError(f"{name}: empty window: the ego is logged {int(ego.t_ms[0])}..{int(ego.t_ms[-1])} ms, "
                            f"not at {at_ms}")
    return at_ms + (np.arange(window.n_steps) - window.current_step) * dt_ms


def _ego_on_grid(ego: EgoLog, grid: np.ndarray, dt_ms: int) -> tuple[np.ndarray, ...]:
    """Ego x, y, heading, speed on the grid (linear between samples) and validity: a logged sample
    within half a step (a gap in the log stays a gap, nothing is invented beyond its ends)."""
    j = np.clip(np.searchsorted(ego.t_ms, grid), 0, len(ego.t_ms) - 1)
    nearest = np.minimum(np.abs(ego.t_ms[j] - grid), np.abs(ego.t_ms[np.maximum(j - 1, 0)] - grid))
    valid = nearest <= dt_ms // 2
    out = [np.interp(grid, ego.t_ms, getattr(ego, n)) for n in ("x", "y", "heading", "speed")]
    return (*out, valid)


def _to_map(det: Detections, ego: EgoLog) -> tuple[np.ndarray, ...]:
    """Detections into the map frame with the ego pose of their time: x, y (m), vx, vy (m/s, absolute:
    the ego's velocity plus the relative one, both in the ego frame of that second)."""
    ex, ey = np.interp(det.t_ms, ego.t_ms, ego.x), np.interp(det.t_ms, ego.t_ms, ego.y)
    eh, ev = np.interp(det.t_ms, ego.t_ms, ego.heading), np.interp(det.t_ms, ego.t_ms, ego.speed)
    c, s = np.cos(eh), np.sin(eh)
    vx_e, vy_e = ev + det.rel_vx, det.rel_vy
    return (ex + c * det.rel_x - s * det.rel_y, ey + s * det.rel_x + c * det.rel_y, c * vx_e - s * vy_e,
            s * vx_e + c * vy_e)


def _track_on_grid(t_det: np.ndarray, values: Sequence[np.ndarray], grid: np.ndarray, propagate: bool,
                   gap_ms: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One track's x, y, vx, vy on the grid. Interpolated (perception): linear between detections at
    most `gap_ms` apart, exact at detection steps, `filled` elsewhere. Propagated (truth): each
    second's state moved at its own velocity until the next one (valid, never filled)."""
    x, y, vx, vy = values
    order = np.argsort(t_det)
    t_det, x, y, vx, vy = t_det[order], x[order], y[order], vx[order], vy[order]
    if propagate:
        k = np.searchsorted(t_det, grid, side="right") - 1
        ok = k >= 0
        ok &= (grid - t_det[np.maximum(k, 0)]) < 1000  # a snapshot holds for its second only
        kk = np.maximum(k, 0)
        tau = (grid - t_det[kk]) / 1000.0
        out = [x[kk] + vx[kk] * tau, y[kk] + vy[kk] * tau, vx[kk], vy[kk]]
        return out, ok, np.zeros(len(grid), dtype=bool)
    exact = np.isin(grid, t_det)
    k = np.searchsorted(t_det, grid, side="right") - 1
    inside = (k >= 0) & (k < len(t_det) - 1)
    kk, k1 = np.clip(k, 0, len(t_det) - 1), np.clip(k + 1, 0, len(t_det) - 1)
    span = (t_det[k1] - t_det[kk]).astype(np.float64)
    bridge = inside & (span <= gap_ms) & (span > 0)
    w = np.where(bridge, (grid - t_det[kk]) / np.where(span > 0, span, 1.0), 0.0)
    out = [a[kk] + (a[k1] - a[kk]) * w for a in (x, y, vx, vy)]
    valid = exact | bridge
    filled = bridge & ~exact
    return out, valid, filled


def _scenario(ego: EgoLog, det: Detections, ctx: Context, at_ms: int | None, map_provider: MapProvider,
              config: ReplayConfig, source: str, device: torch.device | str, ego_size_m: tuple[float, float],
              propagate: bool = False) -> ScenarioBatch:
    sc = config.section("scenario")
    window = Window.from_config(config)
    name = f"{source} {ctx.case_id or ctx.vehicle_id or '?'}"
    dt_ms = round(window.dt_s * 1000)
    grid = _grid_times(ego, window, at_ms, name)
    k0 = window.current_step
    ex, ey, eh, ev, e_valid = _ego_on_grid(ego, grid, dt_ms)
    if not e_valid[k0]:
        raise ScenarioError(f"{name}: empty window: no ego pose within {dt_ms} ms of {int(grid[k0])}")
    ox, oy, oh = float(ex[k0]), float(ey[k0]), float(eh[k0])
    zero = (det.length <= 0) | (det.width <= 0) | ~np.isfinite(det.length) | ~np.isfinite(det.width)
    if zero.any():
        j = int(np.argmax(zero))
        raise ScenarioError(f"{name}: track {int(det.track_id[j])} at {int(det.t_ms[j])} ms has zero or unknown size "
                            f"({det.length[j]} × {det.width[j]} m)")
    mx, my, mvx, mvy = _to_map(det, ego) if len(det.t_ms) else (np.zeros(0),) * 4
    in_window = (det.t_ms >= grid[0] - 1000) & (det.t_ms <= grid[-1] + 1000)
    tracks = []
    for tid in np.unique(det.track_id[in_window]):
        rows = np.flatnonzero(in_window & (det.track_id == tid))
        vals, valid, filled = _track_on_grid(det.t_ms[rows], [mx[rows], my[rows], mvx[rows], mvy[rows]], grid,
                                             propagate, FILL_GAP_S * 1000)
        if not valid.any():
            continue
        dist = float(np.min(np.hypot(vals[0][valid] - ox, vals[1][valid] - oy)))
        last = rows[np.argmax(det.t_ms[rows])]
        tracks.append((dist, int(tid), vals, valid, filled, last))
    max_agents = int(sc["max_agents"])
    tracks = sorted(tracks, key=lambda r: (r[0], r[1]))[:max_agents - 1]  # the nearest ones fit the slots
    a_n, t_n = max_agents, window.n_steps
    arrays = {n: np.zeros((1, a_n, t_n)) for n in ("x", "y", "heading", "speed", "vx", "vy")}
    valid = np.zeros((1, a_n, t_n), dtype=bool)
    filled = np.zeros((1, a_n, t_n), dtype=bool)
    length, width = np.zeros((1, a_n)), np.zeros((1, a_n))
    cls = np.zeros((1, a_n), dtype=np.int64)
    ids = [-1] * a_n
    c, s = math.cos(oh), math.sin(oh)

    def put(slot: int, x, y, heading, vx, vy, speed, ok):
        arrays["x"][0, slot] = np.where(ok, c * (x - ox) + s * (y - oy), 0.0)
        arrays["y"][0, slot] = np.where(ok, -s * (x - ox) + c * (y - oy), 0.0)
        arrays["heading"][0, slot] = np.where(ok, np.mod(heading - oh + np.pi, 2 * np.pi) - np.pi, 0.0)
        arrays["vx"][0, slot] = np.where(ok, c * vx + s * vy, 0.0)
        arrays["vy"][0, slot] = np.where(ok, -s * vx + c * vy, 0.0)
        arrays["speed"][0, slot] = np.where(ok, speed, 0.0)
        valid[0, slot] = ok

    put(0, ex, ey, eh, ev * np.cos(eh), ev * np.sin(eh), ev, e_valid)
    (length[0, 0], width[0, 0]), cls[0, 0] = ego_size_m, int(AgentClass.EGO)
    for slot, (_, tid, (x, y, vx, vy), ok, fill, last) in enumerate(tracks, start=1):
        speed = np.hypot(vx, vy)
        # perception reports no heading: the direction of motion, or the ego's where the object is still
        heading = np.where(speed > 0.5, np.arctan2(vy, vx), np.interp(grid, ego.t_ms, ego.heading))
        put(slot, x, y, heading, speed * np.cos(heading), speed * np.sin(heading), speed, ok)
        filled[0, slot] = fill & ok
        length[0, slot], width[0, slot] = det.length[last], det.width[last]
        cls[0, slot] = int(det.object_class[last]) or int(AgentClass.UNKNOWN)
        ids[slot] = tid
    layout = MapLayout.from_config(sc)
    crop = map_provider.crop(ctx.city, ox, oy, oh, layout.radius_m)
    map_xy, map_valid, map_kind, map_limit = pad_map([crop], [(ox, oy, oh)], layout, device)
    summary = _summary_at(ctx.summaries, int(grid[k0]))
    tags = [TRACKS_TAG + ",".join(str(i) for i in ids)]
    road_type = weather = light = 0
    if summary is not None:
        road_type, weather, light = summary.road_type, summary.weather, summary.light
        if summary.maneuver:
            tags.append(f"maneuver:{summary.maneuver}")
        tags += [t for t, on in (("unprotected_turn", summary.unprotected_turn), ("crosswalk", summary.crosswalk))
                 if on]
        costs = list(summary.planner_top_costs)
        if len(costs) >= 2 and costs[0] > 0:
            tags.append(f"planner_gap:{(costs[1] - costs[0]) / costs[0]:.3f}")
    # what the vehicle itself reported in the window (a contact, a takeover, ...), once per kind
    kinds = sorted({k for t, k in ctx.events if grid[0] <= t <= grid[-1]})
    tags += [f"event:{common_pb2.EventKind.Name(k).removeprefix('EVENT_KIND_').lower()}" for k in kinds]
    meta = ScenarioMeta(
        scenario_id=f"{ctx.case_id or ctx.vehicle_id}@{int(grid[k0])}", case_id=ctx.case_id,
        vehicle_id=ctx.vehicle_id, t0_ms=int(grid[0]), origin_x_m=ox, origin_y_m=oy, origin_heading_rad=oh,
        city=ctx.city, road_type=road_type, weather=weather, light=light, tags=tuple(tags),
        agent_model=AgentModel.IDM, source=source)
    f32 = {k: torch.from_numpy(v.astype(np.float32)).to(device) for k, v in arrays.items()}
    batch = ScenarioBatch(
        **f32, valid=torch.from_numpy(valid).to(device), filled=torch.from_numpy(filled).to(device),
        length=torch.from_numpy(length.astype(np.float32)).to(device),
        width=torch.from_numpy(width.astype(np.float32)).to(device), agent_class=torch.from_numpy(cls).to(device),
        map_xy=map_xy, map_valid=map_valid, map_kind=map_kind, map_speed_limit_mps=map_limit, dt_s=window.dt_s,
        current_step=k0, meta=[meta])
    batch.validate()
    return batch


def _summary_at(summaries: Sequence[tuple[int, common_pb2.PerceptionSummary]], t_ms: int
                ) -> common_pb2.PerceptionSummary | None:
    """The latest summary at or before `t_ms` (else the first after it)."""
    if not summaries:
        return None
    before = [s for s in summaries if s[0] <= t_ms]
    return max(before, key=lambda s: s[0])[1] if before else min(summaries, key=lambda s: s[0])[1]


# ---------------------------------------------------------------------------------------------- ground truth


@dataclass
class TruthLog:
    """What the simulator knew about one vehicle: its 10 Hz ego samples and, per second, the objects it
    placed around it (float64, ego frame of that second, as `Detections`), with the city and its box."""

    vehicle_id: str
    city: str
    ego: EgoLog
    objects: Detections
    ego_size_m: tuple[float, float] = VAN_SIZE_M
    incidents: list[tuple[int, int, str, str]] = field(default_factory=list)  # (start_ms, end_ms, kind, id)


class TruthRecorder:
    """Runs a simulator and keeps the ground truth of `vehicle_ids` beside its messages.

    Iterate `seconds()` instead of `sim.seconds()`; afterwards `truth(vehicle_id)` holds the record.
    The simulator's objects are its lead (unless the second's perception replaces it: an incident's
    own object stands in for it) and its agent slots, plus the objects incidents placed that second.
    """

    def __init__(self, sim: FleetSimulator, vehicle_ids: Sequence[str]) -> None:
        self.sim = sim
        self.index = {v.vehicle_id: v.index for v in sim.vehicles if v.vehicle_id in set(vehicle_ids)}
        missing = sorted(set(vehicle_ids) - set(self.index))
        if missing:
            raise KeyError(f"vehicles {missing} are not in the simulated fleet")
        self._poses: dict[str, dict[int, tuple]] = {v: {} for v in self.index}
        self._rows: dict[str, list[tuple]] = {v: [] for v in self.index}

    def seconds(self) -> Iterator[SimSecond]:
        for second in self.sim.seconds():
            self._snapshot(second)
            yield second

    def _snapshot(self, second: SimSecond) -> None:
        st, hooks, t_ms = self.sim.state, self.sim.hooks, second.t_ms
        for topic, env in second.messages:
            if topic == topics.POSE and env.vehicle_id in self.index:
                self._poses[env.vehicle_id].update(_pose_samples(env.pose))
        for vid, i in self.index.items():
            if not st.online[i]:
                continue
            rows = self._rows[vid]
            if st.lead_present[i] and i not in hooks.no_lead:
                # the lead's box as perception.Perception.summaries sizes it
                truck = st.lead_class[i] == common_pb2.OBJECT_CLASS_TRUCK
                rows.append((t_ms, int(st.lead_track_id[i]), int(st.lead_class[i]), float(st.lead_gap_m[i]), 0.0,
                             float(st.lead_rel_speed_mps[i]), 0.0, 9.0 if truck else 4.6, 1.9, False))
            for k in np.flatnonzero(st.agent_on[i]).tolist():
                rows.append((t_ms, int(st.agent_track_id[i, k]), int(st.agent_class[i, k]), float(st.agent_x_m[i, k]),
                             float(st.agent_y_m[i, k]), float(st.agent_rel_vx_mps[i, k]), 0.0,
                             float(st.agent_length_m[i, k]), float(st.agent_width_m[i, k]), False))
            rows += [_detection_row(t_ms, o) for o in hooks.objects.get(i, [])]

    def truth(self, vehicle_id: str) -> TruthLog:
        """The record of one vehicle so far (incidents: those the simulator has recorded, all of them
        once `seconds()` is exhausted)."""
        poses = self._poses[vehicle_id]
        if not poses:
            raise ScenarioError(f"ground truth {vehicle_id}: no ego pose recorded")
        veh = self.sim.vehicles[self.index[vehicle_id]]
        size = TRUCK_SIZE_M if veh.kind == "truck" else VAN_SIZE_M
        incidents = [(i.start_ms, i.end_ms, i.kind, i.incident_id) for i in self.sim.ground_truth.incidents
                     if i.vehicle_id == vehicle_id]
        # the simulator's positions are bumper gaps (as its perception sends them)
        objects = _to_centres(Detections.from_rows(self._rows[vehicle_id]), size[0], True)
        return TruthLog(vehicle_id, veh.city.name, EgoLog.from_samples(poses), objects, size, incidents)


def from_ground_truth(truth: TruthLog, at_ms: int, map_provider: MapProvider, config: ReplayConfig,
                      case_id: str = "", device: torch.device | str = "cpu") -> ScenarioBatch:
    """The simulator's truth of the moment `at_ms` (the current step) in the layout and frame of
    `from_minilog` for the same vehicle and time: every object on every step of its seconds, moving
    at its own velocity, nothing filled; `source` "ground_truth"; the injected incidents overlapping
    the window as tags `incident:<kind>:<incident id>` (what really happened)."""
    ctx = Context(case_id=case_id, vehicle_id=truth.vehicle_id, city=truth.city)
    scen = _scenario(truth.ego, truth.objects, ctx, at_ms, map_provider, config, "ground_truth", device,
                     truth.ego_size_m, propagate=True)
    meta = scen.meta[0]
    end_ms = meta.t0_ms + round(scen.dt_s * 1000) * (scen.n_steps - 1)
    happened = [f"incident:{kind}:{iid}" for start, end, kind, iid in truth.incidents
                if start <= end_ms and end >= meta.t0_ms]
    scen.meta[0] = replace(meta, tags=meta.tags + tuple(happened))
    return scen


@dataclass
class PerceptionError:
    """Perceived against true, per scenario. Matched tracks (by id): `position_error_m` /
    `velocity_error_mps` mean over the steps both know, `position_error_max_m`; the same mean split
    into steps perception observed and steps it `filled`; `missed` (true tracks perception never
    reported in the window) and `phantom` (reported tracks truth does not have)."""

    scenario_id: str
    track_ids: list[int]
    position_error_m: list[float]
    position_error_max_m: list[float]
    velocity_error_mps: list[float]
    observed_position_error_m: float
    filled_position_error_m: float
    missed: list[int]
    phantom: list[int]


def perception_error(perceived: ScenarioBatch, truth: ScenarioBatch) -> list[PerceptionError]:
    """Compare scenarios built for the same moments (same frames and steps). Raises ScenarioError when
    the batches do not describe the same moments."""
    if perceived.n_scenarios != truth.n_scenarios or perceived.n_steps != truth.n_steps:
        raise ScenarioError(f"perceived {tuple(perceived.x.shape)} and truth {tuple(truth.x.shape)} differ in "
                            "scenarios or steps")
    out = []
    for i, (pm, tm) in enumerate(zip(perceived.meta, truth.meta, strict=True)):
        if pm.t0_ms != tm.t0_ms or math.hypot(pm.origin_x_m - tm.origin_x_m, pm.origin_y_m - tm.origin_y_m) > 1e-3:
            raise ScenarioError(f"scenario {pm.scenario_id}: perceived and true scenarios are not the same moment")
        p_ids, t_ids = track_ids(pm), track_ids(tm)
        p_slot = {tid: k for k, tid in enumerate(p_ids) if tid >= 0}
        t_slot = {tid: k for k, tid in enumerate(t_ids) if tid >= 0}
        matched = sorted(set(p_slot) & set(t_slot))
        pos, pos_max, vel = [], [], []
        obs_err, fill_err = [], []
        for tid in matched:
            a, b = p_slot[tid], t_slot[tid]
            both = perceived.valid[i, a] & truth.valid[i, b]
            d = torch.hypot(perceived.x[i, a] - truth.x[i, b], perceived.y[i, a] - truth.y[i, b])[both]
            dv = torch.hypot(perceived.vx[i, a] - truth.vx[i, b], perceived.vy[i, a] - truth.vy[i, b])[both]
            pos.append(float(d.mean()) if d.numel() else math.nan)
            pos_max.append(float(d.max()) if d.numel() else math.nan)
            vel.append(float(dv.mean()) if dv.numel() else math.nan)
            fill = perceived.filled[i, a][both]
            obs_err += d[~fill].tolist()
            fill_err += d[fill].tolist()
        out.append(PerceptionError(
            scenario_id=pm.scenario_id, track_ids=matched, position_error_m=pos, position_error_max_m=pos_max,
            velocity_error_mps=vel, observed_position_error_m=float(np.mean(obs_err)) if obs_err else math.nan,
            filled_position_error_m=float(np.mean(fill_err)) if fill_err else math.nan,
            missed=sorted(set(t_slot) - set(p_slot)), phantom=sorted(set(p_slot) - set(t_slot))))
    return out
