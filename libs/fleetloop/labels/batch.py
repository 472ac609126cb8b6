"""`label_seconds`: every tag family's labeler, vectorised over many seconds.

Labelling one second at a time (`label_second`, the reference in tests/oracles/labelers.py) spends
~0.5 ms per vehicle-second in numpy calls on arrays of ten samples and a handful of objects; a
50-vehicle fleet replayed at demo speed needs thousands of seconds per second. This module computes
the same labels for a whole batch at once: pose samples and perceived objects of all seconds are
concatenated with a segment index, and every per-second statistic is a segmented reduction. The
result is identical to `label_second` row by row (tests/unit/labels/test_batch.py checks every tag
bit and numeric value on simulator data and on the hand-built cases).

Means over pose samples are taken on (seconds, samples) matrices, one per sample count, so the
float64 summation order is numpy's own, exactly as in `label_second`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa

from fleetloop.codec import POSE_DTYPES
from fleetloop.labels import codes as L
from fleetloop.labels.row import LabelRow, label_columns
from fleetloop.labels.taxonomy import WORD_BITS, Taxonomy
from fleetloop.triggers import criticality, load_config
from fleetloop.v1 import common_pb2 as pb

_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class SecondParts:
    """One vehicle-second's inputs; any part may be None. `second_ms` is the start of the second."""

    vehicle_id: str
    second_ms: int
    heartbeat: pb.Heartbeat | None
    pose: pb.PoseBatch | None
    perception: pb.PerceptionSummary | None


@dataclass(frozen=True)
class LabelColumns:
    """Labels of n seconds, column-wise.

    t / k: (n, word_count) uint64 bitset words (TRUE / known). values: numeric name ->
    (n,) float32, NaN when unknown. ts_ms: (n,) int64 start of each second.
    """

    vehicle_id: list[str]
    ts_ms: np.ndarray
    park: list[str]
    city: list[str]
    taxonomy_version: int
    t: np.ndarray
    k: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.vehicle_id)

    def to_arrow(self, taxonomy: Taxonomy) -> pa.Table:
        """The batch as an Arrow table in the label table's column order."""
        n = len(self)
        data: dict[str, pa.Array] = {
            "vehicle_id": pa.array(self.vehicle_id, pa.string()),
            "ts": pa.array(self.ts_ms, _TS),
            "park": pa.array(self.park, pa.string()),
            "city": pa.array(self.city, pa.string()),
            "taxonomy_version": pa.array(np.full(n, self.taxonomy_version, np.uint16)),
        }
        for w in range(taxonomy.word_count):
            data[f"t{w}"] = pa.array(self.t[:, w])
        for w in range(taxonomy.word_count):
            data[f"k{w}"] = pa.array(self.k[:, w])
        for numeric in taxonomy.numeric:
            data[numeric.column] = pa.array(self.values[numeric.name])
        table = pa.table(data)
        assert tuple(table.column_names) == label_columns(taxonomy)
        return table

    def rows(self, taxonomy: Taxonomy) -> list[LabelRow]:
        """The batch as `LabelRow`s (tests compare them with `label_second`)."""
        out = []
        for i in range(len(self)):
            tags = known = 0
            for w in range(taxonomy.word_count):
                tags |= int(self.t[i, w]) << (w * WORD_BITS)
                known |= int(self.k[i, w]) << (w * WORD_BITS)
            values = {name: float(col[i]) for name, col in self.values.items() if not np.isnan(col[i])}
            out.append(LabelRow(self.vehicle_id[i], int(self.ts_ms[i]), tags, known, values,
                                self.taxonomy_version, self.park[i], self.city[i]))
        return out


class _Sink:
    """Collects (known, value) per tag and float64 values per numeric name for n seconds."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tags: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.values: dict[str, np.ndarray] = {}

    def tag(self, name: str, known: np.ndarray, value: np.ndarray) -> None:
        old_known, old_value = self.tags.get(name, (np.zeros(self.n, bool), np.zeros(self.n, bool)))
        self.tags[name] = (old_known | known, np.where(known, value, old_value))

    def one_hot(self, names: Mapping[int, str], codes: np.ndarray, present: np.ndarray) -> None:
        known = present & np.isin(codes, list(names))
        for code, name in names.items():
            self.tag(name, known, codes == code)

    def value(self, name: str, known: np.ndarray, value: np.ndarray) -> None:
        old = self.values.get(name, np.full(self.n, np.nan))
        self.values[name] = np.where(known, value, old)


def _seg_any(mask: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(seg[mask], minlength=n) > 0


def _seg_count(mask: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(seg[mask], minlength=n)


@dataclass
class _Objects:
    seg: np.ndarray
    cls: np.ndarray
    gap: np.ndarray  # bumper gap ahead (m): rel_x_m read by the summary's position reference
    y: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    conf: np.ndarray
    occl: np.ndarray
    ax: np.ndarray  # the object's own acceleration along ego x (m/s², 0: none)


def _objects(perceptions: Sequence[pb.PerceptionSummary | None]) -> _Objects:
    seg, cls, x, y, vx, vy, conf, occl, ax = [], [], [], [], [], [], [], [], []
    length, ego_length, bumper = [], [], []
    default_ego_l = _default_ego_length_m()
    for i, p in enumerate(perceptions):
        if p is None:
            continue
        ego_l = p.ego_length_m if p.HasField("ego_length_m") and p.ego_length_m > 0 else default_ego_l
        is_gap = p.position_reference != pb.POSITION_REFERENCE_BOX_CENTRE
        for o in p.objects:
            length.append(o.length_m)
            ego_length.append(ego_l)
            bumper.append(is_gap)
            seg.append(i)
            cls.append(o.object_class)
            x.append(o.rel_x_m)
            y.append(o.rel_y_m)
            vx.append(o.rel_vx_mps)
            vy.append(o.rel_vy_mps)
            conf.append(o.confidence)
            occl.append(o.emerged_from_occlusion)
            ax.append(o.accel_x_mps2)
    x_arr = np.asarray(x, np.float64)
    # the one conversion (near_miss's): bumper gaps stay as sent, box centres lose the half lengths
    gap = criticality.box_offsets(x_arr, np.asarray(length, np.float64), np.asarray(ego_length, np.float64),
                                  np.asarray(bumper, bool), to_gap=True)
    return _Objects(np.asarray(seg, np.int64), np.asarray(cls, np.int32), gap,
                    np.asarray(y, np.float64), np.asarray(vx, np.float64), np.asarray(vy, np.float64),
                    np.asarray(conf, np.float64), np.asarray(occl, bool), np.asarray(ax, np.float64))


@lru_cache(maxsize=1)
def _default_ego_length_m() -> float:
    """The ego's length where a summary does not send it: triggers.yaml criticality.ego_length_m."""
    return float(load_config().criticality.ego_length_m)


@dataclass
class _Pose:
    """Per-second pose statistics; entries of seconds without pose are 0 / False."""

    present: np.ndarray
    mean_speed: np.ndarray
    mean_v: np.ndarray
    max_speed: np.ndarray
    mean_yaw: np.ndarray
    max_abs_yaw: np.ndarray
    max_abs_lat: np.ndarray
    mean_accel: np.ndarray
    min_accel: np.ndarray
    reversing: np.ndarray
    mode_changed: np.ndarray
    last_mode: np.ndarray


def _pose_stats(poses: Sequence[pb.PoseBatch | None], th: Mapping[str, float]) -> _Pose:
    n = len(poses)
    out = _Pose(np.zeros(n, bool), *(np.zeros(n) for _ in range(8)), np.zeros(n, bool), np.zeros(n, bool),
                np.zeros(n, np.int64))
    by_count: dict[int, list[int]] = {}
    for i, p in enumerate(poses):
        if p is not None and p.sample_count > 0:
            by_count.setdefault(p.sample_count, []).append(i)
    names = ("speed_mps", "accel_lon_mps2", "accel_lat_mps2", "yaw_rate_rps", "gear", "mode")
    for count, idx in by_count.items():
        cols = {name: np.frombuffer(b"".join(getattr(poses[i], name) for i in idx), POSE_DTYPES[name])
                .reshape(len(idx), count) for name in names}
        v = cols["speed_mps"].astype(np.float64)
        a_lon = cols["accel_lon_mps2"].astype(np.float64)
        a_lat = cols["accel_lat_mps2"].astype(np.float64)
        yaw = cols["yaw_rate_rps"].astype(np.float64)
        modes = cols["mode"]
        ix = np.asarray(idx)
        out.present[ix] = True
        out.mean_speed[ix] = np.mean(cols["speed_mps"], axis=1, dtype=np.float64)
        out.mean_v[ix] = v.mean(axis=1)
        out.max_speed[ix] = v.max(axis=1)
        out.mean_yaw[ix] = yaw.mean(axis=1)
        out.max_abs_yaw[ix] = np.abs(yaw).max(axis=1)
        out.max_abs_lat[ix] = np.abs(a_lat).max(axis=1)
        out.mean_accel[ix] = a_lon.mean(axis=1)
        out.min_accel[ix] = a_lon.min(axis=1)
        out.reversing[ix] = np.any((cols["gear"] == -1) & (v > th["reversing_min_speed_mps"]), axis=1)
        out.mode_changed[ix] = np.any(modes != modes[:, :1], axis=1)
        out.last_mode[ix] = modes[:, -1]
    return out


def label_seconds(seconds: Sequence[SecondParts], taxonomy: Taxonomy) -> LabelColumns:
    """Label many vehicle-seconds at once; row i equals `label_second` of `seconds[i]`.

    Pose batches must already be validated (`codec.pose_arrays`): a malformed one raises
    ValueError here rather than `Rejected`.
    """
    n = len(seconds)
    th = taxonomy.thresholds
    sink = _Sink(n)
    hbs = [s.heartbeat for s in seconds]
    pcs = [s.perception for s in seconds]
    has_hb = np.array([h is not None for h in hbs], bool)
    has_pc = np.array([p is not None for p in pcs], bool)
    pose = _pose_stats([s.pose for s in seconds], th)

    def hb_field(name: str, dtype: type) -> np.ndarray:
        return np.array([getattr(h, name) if h is not None else 0 for h in hbs], dtype)

    def pc_field(name: str, dtype: type) -> np.ndarray:
        return np.array([getattr(p, name) if p is not None else 0 for p in pcs], dtype)

    # environment
    sink.one_hot(L.WEATHER_TAGS, pc_field("weather", np.int64), has_pc)
    sink.one_hot(L.LIGHT_TAGS, pc_field("light", np.int64), has_pc)

    # road
    road = np.where(has_hb, hb_field("road_type", np.int64), pb.ROAD_TYPE_UNSPECIFIED)
    road = np.where((road == pb.ROAD_TYPE_UNSPECIFIED) & has_pc, pc_field("road_type", np.int64), road)
    sink.one_hot(L.ROAD_TAGS, road, np.ones(n, bool))
    junction = pc_field("junction_type", np.int64)
    none = has_pc & (junction == pb.JUNCTION_TYPE_NONE)
    for name in L.JUNCTION_TAGS.values():
        sink.tag(name, none, np.zeros(n, bool))
    sink.one_hot(L.JUNCTION_TAGS, junction, has_pc & ~none)
    sink.tag("junction.any", has_pc & (junction != pb.JUNCTION_TYPE_UNSPECIFIED), junction != pb.JUNCTION_TYPE_NONE)
    sink.tag("crosswalk", has_pc, pc_field("crosswalk", bool))
    sink.tag("turn.unprotected", has_pc, pc_field("unprotected_turn", bool))
    lanes, lane_index = pc_field("lane_count", np.int64), pc_field("lane_index", np.int64)
    has_lanes = has_pc & (lanes > 0)
    sink.value("road.lane_count", has_lanes, lanes.astype(np.float64))
    sink.tag("lanes.single", has_lanes, lanes == 1)
    sink.tag("lanes.multi", has_lanes, lanes > 1)
    sink.tag("lane.rightmost", has_lanes, lane_index == 0)
    sink.tag("lane.leftmost", has_lanes, lane_index == lanes - 1)
    limit_kph = pc_field("speed_limit_mps", np.float64) * L.MPS_TO_KPH
    has_limit = has_pc & (limit_kph > 0)
    sink.value("road.speed_limit_kph", has_limit, limit_kph)
    sink.tag("speed_limit.low", has_limit, limit_kph <= th["low_speed_limit_kph"])

    # ego speed: mean pose speed, else the heartbeat's
    has_speed = pose.present | has_hb
    speed = np.where(pose.present, pose.mean_speed, hb_field("speed_mps", np.float64))

    # agents and perception quality
    o = _objects(pcs)
    seg = o.seg
    for code, name in L.CLASS_TAGS.items():
        sink.tag(name, has_pc, _seg_any(o.cls == code, seg, n))
    is_vehicle = np.isin(o.cls, L.VEHICLE_CLASSES)
    is_ped = o.cls == pb.OBJECT_CLASS_PEDESTRIAN
    # Every object label reads the bumper gap, whichever reading the summary sent (legacy: rel_x_m as sent).
    dist = np.hypot(o.gap, o.y)
    count = np.bincount(seg, minlength=n)
    sink.value("agent.count", has_pc, count.astype(np.float64))
    sink.value("agent.vehicle_count", has_pc, _seg_count(is_vehicle, seg, n).astype(np.float64))
    sink.value("agent.pedestrian_count", has_pc, _seg_count(is_ped, seg, n).astype(np.float64))
    sink.value("agent.cyclist_count", has_pc, _seg_count(o.cls == pb.OBJECT_CLASS_CYCLIST, seg, n).astype(float))
    sink.value("agent.tricycle_count", has_pc, _seg_count(o.cls == pb.OBJECT_CLASS_TRICYCLE, seg, n).astype(float))
    min_dist = np.full(n, np.inf)
    np.minimum.at(min_dist, seg, dist)
    sink.value("agent.min_distance_m", has_pc & (count > 0), min_dist)
    sink.tag("agent.pedestrian_from_occlusion", has_pc, _seg_any(is_ped & o.occl, seg, n))

    # The lead: the nearest vehicle in the corridor by bumper gap.
    in_corridor = is_vehicle & (o.gap > 0) & (o.gap < th["lead_max_distance_m"]) \
        & (np.abs(o.y) < th["lead_corridor_half_width_m"])
    has_lead = _seg_any(in_corridor, seg, n)
    sink.tag("agent.lead_vehicle", has_pc, has_lead)
    cand = np.flatnonzero(in_corridor)
    order = cand[np.lexsort((cand, o.gap[cand], seg[cand]))]
    first = order[np.r_[True, seg[order][1:] != seg[order][:-1]]] if order.size else order
    gap, closing, accel = np.zeros(n), np.zeros(n), np.zeros(n)
    gap[seg[first]] = o.gap[first]
    closing[seg[first]] = -o.vx[first]
    accel[seg[first]] = o.ax[first]
    sink.value("agent.lead_distance_m", has_pc & has_lead, gap)
    # The lead's TTC by the fleet's one definition, along the lane (no horizon, no minimum closing: a
    # band, not a trigger); with the lead's acceleration when perception estimates one.
    ttc = criticality.longitudinal_ttc(gap, closing, 0.0, accel)
    has_ttc = has_pc & has_lead & np.isfinite(ttc)
    sink.value("agent.lead_ttc_s", has_ttc, ttc)
    lead_close = has_lead & ((gap < th["lead_close_distance_m"]) | (has_ttc & (ttc < th["lead_close_ttc_s"])))
    sink.tag("agent.lead_close", has_pc, lead_close)

    abs_y = np.abs(o.y)
    sink.tag("agent.cut_in", has_pc, _seg_any(
        is_vehicle & (o.gap > 0) & (o.gap < th["cut_in_max_distance_m"]) & (abs_y > th["cut_in_min_abs_y_m"])
        & (abs_y < th["cut_in_max_abs_y_m"]) & (o.vy * np.sign(o.y) < -th["cut_in_min_lateral_speed_mps"]), seg, n))
    sink.tag("agent.oncoming", has_pc & has_speed, _seg_any(
        is_vehicle & (o.gap > 0) & (o.vx + speed[seg] < -th["oncoming_min_speed_mps"]), seg, n))
    near_peds = _seg_count(is_ped & (dist < th["crowd_radius_m"]), seg, n)
    sink.tag("agent.crowd", has_pc, near_peds >= th["crowd_min_pedestrians"])
    is_vru = np.isin(o.cls, L.VRU_CLASSES)
    sink.tag("agent.vru_close", has_pc, _seg_any(is_vru & (dist < th["vru_close_distance_m"]), seg, n))
    moving_across = (np.abs(o.vy) > th["crossing_min_lateral_speed_mps"]) \
        & ((o.vy * o.y < 0) | (abs_y < th["lead_corridor_half_width_m"]))
    sink.tag("agent.crossing", has_pc, _seg_any(
        is_vru & (o.gap > 0) & (o.gap < th["crossing_max_distance_m"]) & moving_across, seg, n))

    near = dist < th["low_confidence_radius_m"]
    sink.tag("perception.low_confidence", has_pc, _seg_any(near & (o.conf < th["low_confidence_threshold"]), seg, n))
    sink.tag("perception.rare_object", has_pc, _seg_any(np.isin(o.cls, L.RARE_CLASSES), seg, n))
    sink.tag("perception.many_objects", has_pc, count >= th["many_objects_min"])
    min_conf = np.full(n, np.inf)
    np.minimum.at(min_conf, seg, o.conf)
    sink.value("perception.min_confidence", has_pc & (count > 0), min_conf)
    gaps = np.full(n, np.nan)
    for i, p in enumerate(pcs):
        if p is not None and len(p.planner_top_costs) >= 2:
            costs = np.sort(np.asarray(p.planner_top_costs, np.float64))
            gaps[i] = float((costs[1] - costs[0]) / max(abs(costs[0]), 1e-9))
    has_gap = ~np.isnan(gaps)
    sink.value("planner.top_cost_gap", has_gap, gaps)
    sink.tag("planner.uncertain", has_gap, gaps < th["planner_tie_relative_gap"])

    # ego motion
    speed_kph = speed * L.MPS_TO_KPH
    sink.value("ego.speed_kph", has_speed, speed_kph)
    bounds = (th["speed_band_low_kph"], th["speed_band_medium_kph"], th["speed_band_high_kph"],
              th["speed_band_very_high_kph"])
    band = np.searchsorted(bounds, speed_kph, side="right")
    for b, name in enumerate(L.SPEED_BANDS):
        sink.tag(name, has_speed, band == b)
    maneuver = [p.maneuver if p is not None else "" for p in pcs]
    sink.tag("ego.u_turn", has_pc, np.array([m == "u_turn" for m in maneuver], bool))
    sink.tag("ego.lane_change", has_pc, np.array([m.startswith("lane_change") for m in maneuver], bool))
    man_left = np.array([m == "turn_left" for m in maneuver], bool)
    man_right = np.array([m == "turn_right" for m in maneuver], bool)
    has_man = np.array([bool(m) for m in maneuver], bool)
    no_pose = ~pose.present
    stopped = np.where(pose.present, pose.max_speed < th["stopped_max_speed_mps"],
                       speed < th["stopped_max_speed_mps"])
    sink.tag("ego.stopped", has_speed, stopped)
    turning = pose.mean_v > th["turn_min_speed_mps"]
    turn_left = (turning & (pose.mean_yaw > th["turn_min_abs_yaw_rate_rps"])) | man_left
    turn_right = (turning & (pose.mean_yaw < -th["turn_min_abs_yaw_rate_rps"])) | man_right
    sink.tag("ego.turn_left", pose.present | (no_pose & has_man), turn_left)
    sink.tag("ego.turn_right", pose.present | (no_pose & has_man), turn_right)
    p = pose.present
    sink.tag("ego.reversing", p, pose.reversing)
    sink.value("ego.max_abs_yaw_rate_rps", p, pose.max_abs_yaw)
    sink.value("ego.max_abs_accel_lat_mps2", p, pose.max_abs_lat)
    sink.tag("ego.high_lateral_accel", p, pose.max_abs_lat > th["high_lateral_accel_mps2"])
    sink.value("ego.accel_lon_mps2", p, pose.mean_accel)
    sink.value("ego.min_accel_lon_mps2", p, pose.min_accel)
    sink.tag("ego.accelerate", p, pose.mean_accel > th["accelerate_min_accel_mps2"])
    sink.tag("ego.brake", p, pose.mean_accel < th["brake_max_accel_mps2"])
    sink.tag("ego.hard_brake", p, pose.min_accel < th["hard_brake_max_accel_mps2"])
    sink.tag("ego.cruise", p, ~stopped & (np.abs(pose.mean_accel) < th["cruise_max_abs_accel_mps2"])
             & ~turn_left & ~turn_right)

    # mode and task state
    sink.tag("mode.changed", p, pose.mode_changed)
    mode = np.where(p, pose.last_mode, np.where(has_hb, hb_field("mode", np.int64), pb.DRIVING_MODE_UNSPECIFIED))
    sink.one_hot(L.MODE_TAGS, mode, np.ones(n, bool))
    sink.one_hot(L.TASK_TAGS, hb_field("task_state", np.int64), has_hb)
    sink.one_hot(L.CONNECTIVITY_TAGS, hb_field("connectivity", np.int64), has_hb)
    sink.tag("vehicle.parked", has_hb, hb_field("parked", bool))
    sink.tag("vehicle.charging", has_hb, hb_field("charging", bool))
    sink.value("vehicle.state_of_charge", has_hb, hb_field("state_of_charge", np.float64))
    sink.value("vehicle.compute_temp_c", has_hb, hb_field("compute_temp_c", np.float64))

    # which inputs the second had
    always = np.ones(n, bool)
    sink.tag("data.no_heartbeat", always, ~has_hb)
    sink.tag("data.no_pose", always, ~p)
    sink.tag("data.no_perception", always, ~has_pc)

    t = np.zeros((n, taxonomy.word_count), np.uint64)
    k = np.zeros((n, taxonomy.word_count), np.uint64)
    for name, (known, value) in sink.tags.items():
        tag = taxonomy.tag(name)
        bit = np.uint64(tag.bit % WORD_BITS)
        k[:, tag.word] |= known.astype(np.uint64) << bit
        t[:, tag.word] |= (known & value).astype(np.uint64) << bit
    values = {}
    for numeric in taxonomy.numeric:
        raw = sink.values.get(numeric.name, np.full(n, np.nan))
        with np.errstate(over="ignore"):
            values[numeric.name] = np.where(np.isfinite(raw), raw, np.nan).astype(np.float32)
    return LabelColumns(
        vehicle_id=[s.vehicle_id for s in seconds],
        ts_ms=np.array([s.second_ms - s.second_ms % 1000 for s in seconds], np.int64),
        park=[h.park if h is not None else "" for h in hbs],
        city=[h.city if h is not None else "" for h in hbs],
        taxonomy_version=taxonomy.version, t=t, k=k, values=values)
