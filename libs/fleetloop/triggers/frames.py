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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fleetloop.v1 import common_pb2

RUNNING = common_pb2.TASK_STATE_RUNNING
UNKNOWN_MANEUVER = 0


@dataclass
class FrameCarry:
    """State one batch hands to the next: the last pose sample, task state and maneuver code."""

    last_sample_ms: int = -1
    last_x_m: float = float("nan")
    last_y_m: float = float("nan")
    task_state: int = common_pb2.TASK_STATE_UNSPECIFIED
    maneuver: int = UNKNOWN_MANEUVER

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrameCarry:
        return cls(**d)


@dataclass
class Frames:
    """Columns of one vehicle's batch of consecutive seconds.

    samples (n,): `t_ms` int64 epoch ms; `speed_mps`, `accel_lon_mps2` (+ forward), `yaw_rate_rps`
    (+ counter-clockwise), `x_m`, `y_m` float64 (0 where invalid) with masks `speed_valid`,
    `accel_valid`, `yaw_valid`, `pos_valid`; `step_m` distance to the previous sample (NaN unknown);
    `row` int64 index into the seconds table.

    seconds (m,): `sec_ms` int64 start of the second; `task_running` bool (heartbeat task state,
    carried forward); `has_perception` bool; `perception_ms` int64; `planner_gap_ratio` float64
    ((c2 - c1) / |c1| of the planner's two best costs, NaN when unknown); `maneuver` int64 code
    (0 unknown); `unprotected_turn` bool; `ego_speed_mps` mean valid speed (NaN none);
    `max_decel_mps2` largest valid deceleration (-inf none).

    objects (k,): `row`, `object_class` int64; `rel_x_m` (+ ahead), `rel_y_m` (+ left), `rel_vx_mps`,
    `rel_vy_mps`, `confidence` float64; `emerged` bool; `valid` bool (all finite).

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

    @property
    def n_samples(self) -> int:
        return int(self.t_ms.size)


def maneuver_code(maneuver: str) -> int:
    """A stable integer for a planner maneuver name (only equality matters); 0 for none."""
    return zlib.crc32(maneuver.encode()) + 1 if maneuver else UNKNOWN_MANEUVER


def _mask(values: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    valid = np.isfinite(values) & (values >= lo) & (values <= hi)
    return np.where(valid, values, 0.0), valid


def build_frames(envelopes: Sequence[common_pb2.Envelope], carry: FrameCarry,
                 sanity: Mapping[str, float]) -> tuple[Frames, FrameCarry]:
    """Convert one vehicle's messages of consecutive seconds into `Frames`.

    `envelopes` may arrive in any order; samples at or before `carry.last_sample_ms` (already
    evaluated) and repeated sample times are dropped. Returns the frames and the carry for the
    next batch. Pure: no I/O, no clock.
    """
    t, x, y, v, a, w = [], [], [], [], [], []
    perc: dict[int, tuple[int, common_pb2.PerceptionSummary]] = {}
    beats: dict[int, tuple[int, int]] = {}
    events: list[tuple[int, int, common_pb2.VehicleEvent]] = []
    secs: set[int] = set()
    for order, env in enumerate(envelopes):
        which = env.WhichOneof("payload")
        sec = env.event_time_ms // 1000
        if which == "pose":
            p = env.pose
            t.extend(p.t_ms)
            x.extend(p.x_m)
            y.extend(p.y_m)
            v.extend(p.speed_mps)
            a.extend(p.accel_lon_mps2)
            w.extend(p.yaw_rate_rps)
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

    n = min(len(t), len(x), len(y), len(v), len(a), len(w))  # a malformed batch with ragged columns
    t_ms = np.asarray(t[:n], dtype=np.int64)
    order_idx = np.argsort(t_ms, kind="stable")
    t_ms = t_ms[order_idx]
    keep = t_ms > carry.last_sample_ms
    keep[1:] &= t_ms[1:] != t_ms[:-1]
    sel = order_idx[keep]
    t_ms = t_ms[keep]
    masked = 0

    def col(values: list[float]) -> np.ndarray:
        return np.asarray(values[:n], dtype=np.float64)[sel]

    speed, speed_valid = _mask(col(v), sanity["min_speed_mps"], sanity["max_speed_mps"])
    accel, accel_valid = _mask(col(a), -sanity["max_abs_accel_mps2"], sanity["max_abs_accel_mps2"])
    yaw, yaw_valid = _mask(col(w), -sanity["max_abs_yaw_rate_rps"], sanity["max_abs_yaw_rate_rps"])
    raw_x, raw_y = col(x), col(y)
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
    step_m = np.where(pos_valid, step_m, np.nan)

    sample_sec = t_ms // 1000
    sec_ms = np.unique(np.concatenate((sample_sec, np.fromiter(secs, np.int64, len(secs))))) * 1000
    m = sec_ms.size
    row = np.searchsorted(sec_ms, sample_sec * 1000)

    task = np.full(m, -1, dtype=np.int64)
    for sec, (_, state) in beats.items():
        task[np.searchsorted(sec_ms, sec * 1000)] = state
    have = task >= 0
    last = np.maximum.accumulate(np.where(have, np.arange(m), -1)) if m else np.zeros(0, np.int64)
    task = np.where(last >= 0, task[np.maximum(last, 0)], carry.task_state)

    has_perception = np.zeros(m, dtype=bool)
    perception_ms = np.zeros(m, dtype=np.int64)
    gap_ratio = np.full(m, np.nan)
    maneuver = np.zeros(m, dtype=np.int64)
    unprotected = np.zeros(m, dtype=bool)
    o_row, o_cls, o_x, o_y, o_vx, o_vy, o_conf, o_em = [], [], [], [], [], [], [], []
    for sec, (pt, summary) in perc.items():
        r = int(np.searchsorted(sec_ms, sec * 1000))
        has_perception[r] = True
        perception_ms[r] = pt
        costs = summary.planner_top_costs
        if len(costs) >= 2:
            gap_ratio[r] = (costs[1] - costs[0]) / max(abs(costs[0]), 1e-6)
        maneuver[r] = maneuver_code(summary.maneuver)
        unprotected[r] = summary.unprotected_turn
        for o in summary.objects:
            o_row.append(r)
            o_cls.append(o.object_class)
            o_x.append(o.rel_x_m)
            o_y.append(o.rel_y_m)
            o_vx.append(o.rel_vx_mps)
            o_vy.append(o.rel_vy_mps)
            o_conf.append(o.confidence)
            o_em.append(o.emerged_from_occlusion)
    # Seconds without a summary keep the last known maneuver so a gap is not a command flip.
    known = maneuver != UNKNOWN_MANEUVER
    last_m = np.maximum.accumulate(np.where(known, np.arange(m), -1)) if m else np.zeros(0, np.int64)
    maneuver = np.where(last_m >= 0, maneuver[np.maximum(last_m, 0)], carry.maneuver)

    obj = [np.asarray(c, dtype=np.float64) for c in (o_x, o_y, o_vx, o_vy, o_conf)]
    obj_valid = np.logical_and.reduce([np.isfinite(c) for c in obj]) if o_row else np.zeros(0, bool)
    masked += int((~obj_valid).sum())
    obj = [np.where(obj_valid, c, 0.0) for c in obj]

    ev_speed = np.bincount(row[speed_valid], weights=speed[speed_valid], minlength=m)
    ev_count = np.bincount(row[speed_valid], minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        ego_speed = np.where(ev_count > 0, ev_speed / np.maximum(ev_count, 1), np.nan)
    max_decel = np.full(m, -np.inf)
    np.maximum.at(max_decel, row[accel_valid], -accel[accel_valid])

    events.sort(key=lambda e: (e[0], e[1]))
    ev = [e[2] for e in events]

    frames = Frames(
        t_ms=t_ms, speed_mps=speed, accel_lon_mps2=accel, yaw_rate_rps=yaw, x_m=xs, y_m=ys,
        speed_valid=speed_valid, accel_valid=accel_valid, yaw_valid=yaw_valid, pos_valid=pos_valid,
        step_m=step_m, row=row, sec_ms=sec_ms, task_running=task == RUNNING,
        has_perception=has_perception, perception_ms=perception_ms, planner_gap_ratio=gap_ratio,
        maneuver=maneuver, unprotected_turn=unprotected, ego_speed_mps=ego_speed, max_decel_mps2=max_decel,
        obj_row=np.asarray(o_row, dtype=np.int64), obj_class=np.asarray(o_cls, dtype=np.int64),
        obj_rel_x_m=obj[0], obj_rel_y_m=obj[1], obj_rel_vx_mps=obj[2], obj_rel_vy_mps=obj[3],
        obj_confidence=obj[4], obj_emerged=np.asarray(o_em, dtype=bool), obj_valid=obj_valid,
        ev_t_ms=np.asarray([e[0] for e in events], dtype=np.int64),
        ev_kind=np.asarray([e.kind for e in ev], dtype=np.int64),
        ev_to_mode=np.asarray([e.to_mode for e in ev], dtype=np.int64),
        ev_value=np.asarray([e.value for e in ev], dtype=np.float64),
        ev_module=[e.module for e in ev], ev_code=[e.code for e in ev], ev_text=[e.text for e in ev],
        ev_source=[e.source for e in ev], masked=masked,
    )
    new_carry = FrameCarry(
        last_sample_ms=int(t_ms[-1]) if t_ms.size else carry.last_sample_ms,
        last_x_m=float(raw_x[-1]) if t_ms.size else carry.last_x_m,
        last_y_m=float(raw_y[-1]) if t_ms.size else carry.last_y_m,
        task_state=int(task[-1]) if m else carry.task_state,
        maneuver=int(maneuver[-1]) if m else carry.maneuver,
    )
    return frames, new_carry
