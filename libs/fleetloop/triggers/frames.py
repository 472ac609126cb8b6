"""From one vehicle's protobuf messages to numpy columns (struct-of-arrays) with validity masks.

A `Frames` batch covers consecutive evaluated seconds of one vehicle and has four tables:

- samples (n,)  — the 10 Hz pose samples, time-ordered, each pointing at its second `row`;
- seconds (m,)  — one row per second that carried any message (sorted, gaps simply absent);
- objects (k,)  — every perceived object of the batch, flattened, each pointing at its second `row`;
- events  (e,)  — vehicle events, time-ordered.

NaN/inf and implausible values (limits in the `sanity` config section) are masked, never dropped
silently: each masked value is counted in `Frames.masked`. What must carry from one batch to the
next (last sample, last task state, last planner maneuver) travels in `FrameCarry`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fleetloop.codec import POSE_DTYPES
from fleetloop.v1 import common_pb2

RUNNING = common_pb2.TASK_STATE_RUNNING
# The PoseBatch columns the triggers read (packed little-endian arrays, fleetloop.codec.POSE_DTYPES).
POSE_COLUMNS = ("t_ms", "x_m", "y_m", "speed_mps", "accel_lon_mps2", "yaw_rate_rps")
UNKNOWN_MANEUVER = 0


@dataclass
class FrameCarry:
    """State one batch hands to the next: the last pose sample, task state and maneuver code."""

    last_sample_ms: int = -1
    last_x_m: float = float("nan")
    last_y_m: float = float("nan")
    task_state: int = common_pb2.TASK_STATE_UNSPECIFIED
    maneuver: int = UNKNOWN_MANEUVER

    def snapshot(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def restore(cls, d: Mapping[str, Any]) -> FrameCarry:
        return cls(**d)


@dataclass
class Frames:
    """Columns of one vehicle's batch of consecutive seconds.

    samples (n,): `t_ms` int64 epoch ms; `speed_mps`, `accel_lon_mps2` (+ forward), `yaw_rate_rps`
    (+ counter-clockwise), `x_m`, `y_m` float64 (0 where invalid) with masks `speed_valid`,
    `accel_valid`, `yaw_valid`, `pos_valid`; `step_m` distance (m) to the previous sample (0 when
    either position is unknown); `row` int64 index into the seconds table.

    seconds (m,): `sec_ms` int64 start of the second; `task_running` bool (heartbeat task state,
    carried forward); `has_perception` bool; `perception_ms` int64; `planner_gap_ratio` float64
    ((c2 - c1) / |c1| of the planner's two best costs, NaN when unknown); `maneuver` int64 code
    (0 unknown); `unprotected_turn` bool; `ego_speed_mps` mean valid speed (0 when none);
    `max_decel_mps2` largest valid deceleration (-inf none).

    objects (k,): `row`, `object_class` int64; `rel_x_m` (+ ahead), `rel_y_m` (+ left), `rel_vx_mps`,
    `rel_vy_mps`, `confidence` float64; `emerged` bool; `valid` bool (all finite). The fields of the
    criticality contract (common.proto) default when a producer leaves them out: `length_m`,
    `width_m` (0: a point), `accel_x_mps2`, `accel_y_mps2` (0: constant velocity), `min_ttc_s`,
    `min_distance_m` (in-second minima, inf when unset).

    seconds, criticality: `bumper_gap` bool (rel_x_m is a bumper gap: BUMPER_GAP or the legacy
    UNSPECIFIED; False for BOX_CENTRE), `ego_length_m`, `ego_width_m` (NaN: not sent),
    `window_min_ttc_s`, `window_min_distance_m` (inf: unset), `ego_accel_mps2` mean valid
    longitudinal acceleration (0 when none).

    events (e,): `t_ms` int64, `kind`, `to_mode` int64, `value` float64; `module`, `code`, `text`,
    `source` lists of str.
    """

    t_ms: np.ndarray
    speed_mps: np.ndarray
    accel_lon_mps2: np.ndarray
    yaw_rate_rps: np.ndarray
    x_m: np.ndarray
    y_m: np.ndarray
    speed_valid: np.ndarray
    accel_valid: np.ndarray
    yaw_valid: np.ndarray
    pos_valid: np.ndarray
    step_m: np.ndarray
    row: np.ndarray
    sec_ms: np.ndarray
    task_running: np.ndarray
    has_perception: np.ndarray
    perception_ms: np.ndarray
    planner_gap_ratio: np.ndarray
    maneuver: np.ndarray
    unprotected_turn: np.ndarray
    ego_speed_mps: np.ndarray
    max_decel_mps2: np.ndarray
    obj_row: np.ndarray
    obj_class: np.ndarray
    obj_rel_x_m: np.ndarray
    obj_rel_y_m: np.ndarray
    obj_rel_vx_mps: np.ndarray
    obj_rel_vy_mps: np.ndarray
    obj_confidence: np.ndarray
    obj_emerged: np.ndarray
    obj_valid: np.ndarray
    ev_t_ms: np.ndarray
    ev_kind: np.ndarray
    ev_to_mode: np.ndarray
    ev_value: np.ndarray
    ev_module: list[str]
    ev_code: list[str]
    ev_text: list[str]
    ev_source: list[str]
    masked: int = 0
    malformed: int = 0
    obj_length_m: np.ndarray | None = None
    obj_width_m: np.ndarray | None = None
    obj_accel_x_mps2: np.ndarray | None = None
    obj_accel_y_mps2: np.ndarray | None = None
    obj_min_ttc_s: np.ndarray | None = None
    obj_min_distance_m: np.ndarray | None = None
    bumper_gap: np.ndarray | None = None
    ego_length_m: np.ndarray | None = None
    ego_width_m: np.ndarray | None = None
    window_min_ttc_s: np.ndarray | None = None
    window_min_distance_m: np.ndarray | None = None
    ego_accel_mps2: np.ndarray | None = None
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Producers of Frames other than build_frames (the replay's rollouts) may leave the criticality
        # columns out: they take the contract's defaults.
        k, m = self.obj_row.size, self.sec_ms.size
        for name, size, value in (("obj_length_m", k, 0.0), ("obj_width_m", k, 0.0), ("obj_accel_x_mps2", k, 0.0),
                                  ("obj_accel_y_mps2", k, 0.0), ("obj_min_ttc_s", k, np.inf),
                                  ("obj_min_distance_m", k, np.inf), ("ego_length_m", m, np.nan),
                                  ("ego_width_m", m, np.nan), ("window_min_ttc_s", m, np.inf),
                                  ("window_min_distance_m", m, np.inf), ("ego_accel_mps2", m, 0.0)):
            if getattr(self, name) is None:
                setattr(self, name, np.full(size, value))
        if self.bumper_gap is None:
            self.bumper_gap = np.ones(m, dtype=bool)

    @property
    def n_samples(self) -> int:
        return int(self.t_ms.size)

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """A value derived from this batch, computed once for all triggers that need it
        (e.g. the nearest in-path object per second for hard_brake, phantom_stop and near_miss)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


def maneuver_code(maneuver: str) -> int:
    """A stable integer for a planner maneuver name (only equality matters); 0 for none."""
    return zlib.crc32(maneuver.encode()) + 1 if maneuver else UNKNOWN_MANEUVER


def sanity_mask(values: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Implausible (outside [lo, hi], bounds from the `sanity` section) or non-finite values become 0
    with a False mask: (values, valid)."""
    valid = np.isfinite(values) & (values >= lo) & (values <= hi)
    return np.where(valid, values, 0.0), valid


def build_frames(envelopes: Sequence[common_pb2.Envelope], carry: FrameCarry,
                 sanity: Mapping[str, float]) -> tuple[Frames, FrameCarry]:
    """Convert one vehicle's messages of consecutive seconds into `Frames`.

    `envelopes` may arrive in any order; samples at or before `carry.last_sample_ms` (already
    evaluated) and repeated sample times are dropped. Returns the frames and the carry for the
    next batch. Pure: no I/O, no clock.
    """
    poses: list[common_pb2.PoseBatch] = []
    perc: dict[int, tuple[int, common_pb2.PerceptionSummary]] = {}
    beats: dict[int, tuple[int, int]] = {}
    events: list[tuple[int, int, common_pb2.VehicleEvent]] = []
    secs: set[int] = set()
    for order, env in enumerate(envelopes):
        which = env.WhichOneof("payload")
        sec = env.event_time_ms // 1000
        if which == "pose":
            poses.append(env.pose)
        elif which == "perception":
            if sec not in perc or env.event_time_ms < perc[sec][0]:
                perc[sec] = (env.event_time_ms, env.perception)
            secs.add(sec)
        elif which == "heartbeat":
            if sec not in beats or env.event_time_ms >= beats[sec][0]:
                beats[sec] = (env.event_time_ms, env.heartbeat.task_state)
            secs.add(sec)
        elif which == "event":
            events.append((env.event_time_ms, order, env.event))
            secs.add(sec)

    # A batch whose columns do not hold `sample_count` values cannot be trusted at all: dropped, counted.
    # Fast path: when every column's total length matches, every batch does (columns are joined anyway).
    raw = {c: [getattr(p, c) for p in poses] for c in POSE_COLUMNS}
    total = sum(p.sample_count for p in poses)
    malformed = 0
    if any(sum(map(len, raw[c])) != total * POSE_DTYPES[c].itemsize for c in POSE_COLUMNS):
        ok = [all(len(raw[c][i]) == p.sample_count * POSE_DTYPES[c].itemsize for c in POSE_COLUMNS)
              for i, p in enumerate(poses)]
        malformed = ok.count(False)
        raw = {c: [b for b, good in zip(raw[c], ok, strict=True) if good] for c in POSE_COLUMNS}

    def cat(name: str, dtype: type) -> np.ndarray:  # one frombuffer per column for the whole batch
        return np.frombuffer(b"".join(raw[name]), POSE_DTYPES[name]).astype(dtype)

    t_ms = cat("t_ms", np.int64)
    order_idx = np.argsort(t_ms, kind="stable")
    t_ms = t_ms[order_idx]
    keep = t_ms > carry.last_sample_ms
    keep[1:] &= t_ms[1:] != t_ms[:-1]
    sel = order_idx[keep]
    t_ms = t_ms[keep]
    masked = 0

    def col(name: str) -> np.ndarray:
        return cat(name, np.float64)[sel]

    speed, speed_valid = sanity_mask(col("speed_mps"), sanity["min_speed_mps"], sanity["max_speed_mps"])
    accel, accel_valid = sanity_mask(col("accel_lon_mps2"), -sanity["max_abs_accel_mps2"], sanity["max_abs_accel_mps2"])
    yaw, yaw_valid = sanity_mask(col("yaw_rate_rps"), -sanity["max_abs_yaw_rate_rps"], sanity["max_abs_yaw_rate_rps"])
    raw_x, raw_y = col("x_m"), col("y_m")
    pos_valid = np.isfinite(raw_x) & np.isfinite(raw_y)
    # Steps compare raw positions, so a lone 1 km spike masks the spike and the sample after it.
    prev_x = np.concatenate(([carry.last_x_m], raw_x[:-1]))
    prev_y = np.concatenate(([carry.last_y_m], raw_y[:-1]))
    prev_t = np.concatenate(([carry.last_sample_ms], t_ms[:-1]))
    step_m = np.hypot(raw_x - prev_x, raw_y - prev_y)
    dt_s = np.maximum(t_ms - prev_t, 1) / 1000.0
    jump = np.isfinite(step_m) & (step_m > sanity["max_step_speed_mps"] * dt_s)
    pos_valid &= ~jump
    masked += int((~speed_valid).sum() + (~accel_valid).sum() + (~yaw_valid).sum() + (~pos_valid).sum())
    xs = np.where(pos_valid, raw_x, 0.0)
    ys = np.where(pos_valid, raw_y, 0.0)
    step_m = np.where(pos_valid & np.isfinite(step_m), step_m, 0.0)

    sample_sec = t_ms // 1000
    sec_ms = np.unique(np.concatenate((sample_sec, np.fromiter(secs, np.int64, len(secs))))) * 1000
    m = sec_ms.size
    row = np.searchsorted(sec_ms, sample_sec * 1000)

    task = np.full(m, -1, dtype=np.int64)
    beat_secs = np.fromiter(beats, np.int64, len(beats))
    task[np.searchsorted(sec_ms, beat_secs * 1000)] = [state for _, state in beats.values()]
    have = task >= 0
    last = np.maximum.accumulate(np.where(have, np.arange(m), -1)) if m else np.zeros(0, np.int64)
    task = np.where(last >= 0, task[np.maximum(last, 0)], carry.task_state)

    perc = dict(sorted(perc.items()))  # objects then come in row order
    summaries = [summary for _, summary in perc.values()]
    p_rows = np.searchsorted(sec_ms, np.fromiter(perc, np.int64, len(perc)) * 1000)
    has_perception = np.zeros(m, dtype=bool)
    has_perception[p_rows] = True
    perception_ms = np.zeros(m, dtype=np.int64)
    perception_ms[p_rows] = [pt for pt, _ in perc.values()]
    gap_ratio = np.full(m, np.nan)
    gap_ratio[p_rows] = [(c[1] - c[0]) / max(abs(c[0]), 1e-6) if len(c) >= 2 else np.nan
                         for c in (summary.planner_top_costs for summary in summaries)]
    maneuver = np.zeros(m, dtype=np.int64)
    maneuver[p_rows] = [maneuver_code(summary.maneuver) for summary in summaries]
    unprotected = np.zeros(m, dtype=bool)
    unprotected[p_rows] = [summary.unprotected_turn for summary in summaries]
    flat = [o for summary in summaries for o in summary.objects]
    o_row = np.repeat(p_rows, [len(summary.objects) for summary in summaries])
    o_cls = [o.object_class for o in flat]
    o_em = [o.emerged_from_occlusion for o in flat]
    # One pass over the objects: (k, 11) rows, the in-second minima inf where unset.
    table = np.array([(o.rel_x_m, o.rel_y_m, o.rel_vx_mps, o.rel_vy_mps, o.confidence, o.length_m, o.width_m,
                       o.accel_x_mps2, o.accel_y_mps2,
                       o.min_ttc_s if o.HasField("min_ttc_s") else np.inf,
                       o.min_distance_m if o.HasField("min_distance_m") else np.inf) for o in flat],
                     dtype=np.float64).reshape(len(flat), 11)
    obj = list(table[:, :9].T)
    obj_min = list(table[:, 9:].T)

    def summary_field(name: str, unset: float) -> np.ndarray:
        out = np.full(m, unset)
        out[p_rows] = [getattr(s, name) if s.HasField(name) else unset for s in summaries]
        return out

    bumper_gap = np.ones(m, dtype=bool)
    bumper_gap[p_rows] = [s.position_reference != common_pb2.POSITION_REFERENCE_BOX_CENTRE for s in summaries]
    # Seconds without a summary keep the last known maneuver so a gap is not a command flip.
    known = maneuver != UNKNOWN_MANEUVER
    last_m = np.maximum.accumulate(np.where(known, np.arange(m), -1)) if m else np.zeros(0, np.int64)
    maneuver = np.where(last_m >= 0, maneuver[np.maximum(last_m, 0)], carry.maneuver)

    obj_valid = np.logical_and.reduce([np.isfinite(c) for c in obj]) if flat else np.zeros(0, bool)
    obj_valid &= ~np.isnan(obj_min[0]) & ~np.isnan(obj_min[1]) & (obj[5] >= 0) & (obj[6] >= 0)
    masked += int((~obj_valid).sum())
    obj = [np.where(obj_valid, c, 0.0) for c in obj]
    obj_min = [np.where(obj_valid, c, np.inf) for c in obj_min]
    ego_size = [summary_field(name, np.nan) for name in ("ego_length_m", "ego_width_m")]
    ego_size = [np.where(np.isfinite(c) & (c > 0), c, np.nan) for c in ego_size]
    window = [summary_field(name, np.inf) for name in ("window_min_ttc_s", "window_min_distance_m")]
    window = [np.where(np.isnan(c), np.inf, c) for c in window]

    ev_speed = np.bincount(row[speed_valid], weights=speed[speed_valid], minlength=m)
    ev_count = np.bincount(row[speed_valid], minlength=m)
    ego_speed = ev_speed / np.maximum(ev_count, 1)
    max_decel = np.full(m, -np.inf)
    np.maximum.at(max_decel, row[accel_valid], -accel[accel_valid])
    ego_accel = np.bincount(row[accel_valid], weights=accel[accel_valid], minlength=m) \
        / np.maximum(np.bincount(row[accel_valid], minlength=m), 1)

    events.sort(key=lambda e: (e[0], e[1]))
    ev = [e[2] for e in events]

    frames = Frames(
        t_ms=t_ms, speed_mps=speed, accel_lon_mps2=accel, yaw_rate_rps=yaw, x_m=xs, y_m=ys,
        speed_valid=speed_valid, accel_valid=accel_valid, yaw_valid=yaw_valid, pos_valid=pos_valid,
        step_m=step_m, row=row, sec_ms=sec_ms, task_running=task == RUNNING,
        has_perception=has_perception, perception_ms=perception_ms, planner_gap_ratio=gap_ratio,
        maneuver=maneuver, unprotected_turn=unprotected, ego_speed_mps=ego_speed, max_decel_mps2=max_decel,
        obj_row=o_row.astype(np.int64), obj_class=np.asarray(o_cls, dtype=np.int64),
        obj_rel_x_m=obj[0], obj_rel_y_m=obj[1], obj_rel_vx_mps=obj[2], obj_rel_vy_mps=obj[3],
        obj_confidence=obj[4], obj_emerged=np.asarray(o_em, dtype=bool), obj_valid=obj_valid,
        ev_t_ms=np.asarray([e[0] for e in events], dtype=np.int64),
        ev_kind=np.asarray([e.kind for e in ev], dtype=np.int64),
        ev_to_mode=np.asarray([e.to_mode for e in ev], dtype=np.int64),
        ev_value=np.asarray([e.value for e in ev], dtype=np.float64),
        ev_module=[e.module for e in ev], ev_code=[e.code for e in ev], ev_text=[e.text for e in ev],
        ev_source=[e.source for e in ev], masked=masked, malformed=malformed,
        obj_length_m=obj[5], obj_width_m=obj[6], obj_accel_x_mps2=obj[7], obj_accel_y_mps2=obj[8],
        obj_min_ttc_s=obj_min[0], obj_min_distance_m=obj_min[1], bumper_gap=bumper_gap,
        ego_length_m=ego_size[0], ego_width_m=ego_size[1], window_min_ttc_s=window[0],
        window_min_distance_m=window[1], ego_accel_mps2=ego_accel,
    )
    new_carry = FrameCarry(
        last_sample_ms=int(t_ms[-1]) if t_ms.size else carry.last_sample_ms,
        last_x_m=float(raw_x[-1]) if t_ms.size else carry.last_x_m,
        last_y_m=float(raw_y[-1]) if t_ms.size else carry.last_y_m,
        task_state=int(task[-1]) if m else carry.task_state,
        maneuver=int(maneuver[-1]) if m else carry.maneuver,
    )
    return frames, new_carry
