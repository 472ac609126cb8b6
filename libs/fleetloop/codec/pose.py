"""fleet.pose.v1: PoseBatch columns (packed little-endian arrays) and their rules, stated once as
vectorised rules over samples. `pose_screen` applies them to many batches at once and flags the
batches that break one; `pose_arrays` applies the same rules to one batch and raises the first."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fleetloop.codec.limits import LIMITS
from fleetloop.codec.rejected import Rejected
from fleetloop.v1 import common_pb2

# PoseBatch columns and their wire dtypes (little-endian), in proto field order.
POSE_DTYPES: dict[str, np.dtype] = {
    "t_ms": np.dtype("<i8"),
    "x_m": np.dtype("<f8"), "y_m": np.dtype("<f8"), "lat_deg": np.dtype("<f8"), "lon_deg": np.dtype("<f8"),
    "speed_mps": np.dtype("<f4"), "accel_lon_mps2": np.dtype("<f4"), "accel_lat_mps2": np.dtype("<f4"),
    "heading_rad": np.dtype("<f4"), "yaw_rate_rps": np.dtype("<f4"), "steering_rad": np.dtype("<f4"),
    "throttle": np.dtype("<f4"), "brake": np.dtype("<f4"),
    "gear": np.dtype("i1"), "mode": np.dtype("u1"),
}
GEARS = (-1, 0, 1)  # reverse, neutral/park, drive
MODES = tuple(common_pb2.DrivingMode.values())
# Lookup tables over the 256 byte values of a column (u1 mode; i1 gear read as u1, so -1 is 255):
# one gather instead of a set test per sample.
_MODE_DECLARED = np.isin(np.arange(256), MODES)
_GEAR_DECLARED = np.isin(np.arange(256).astype(np.uint8).view(np.int8), GEARS)

_F8 = tuple(name for name, dtype in POSE_DTYPES.items() if dtype == np.dtype("<f8"))
_F4 = tuple(name for name, dtype in POSE_DTYPES.items() if dtype == np.dtype("<f4"))

# A rule: sample columns and `same`, a mask "sample i follows sample i-1 in the same batch"
# (length n-1; None when all samples are one batch) -> a bool mask over samples that break it.
SampleRule = Callable[[Mapping[str, np.ndarray], np.ndarray | None], np.ndarray]


def _step(column: np.ndarray) -> np.ndarray:
    """Differences of consecutive samples (np.diff without its per-call overhead)."""
    return column[1:] - column[:-1]


def _non_finite(cols, _same) -> np.ndarray:
    # One isfinite per dtype over the columns laid end to end: a call per column cost more than the rest.
    ok = True
    for names in (_F8, _F4):
        ok = ok & np.isfinite(np.concatenate([cols[name] for name in names])).reshape(len(names), -1).all(axis=0)
    return ~ok


def _after(same: np.ndarray | None, step_bad: np.ndarray) -> np.ndarray:
    """A per-step fault (between sample i-1 and i) as a mask over samples (sample i)."""
    bad = np.zeros(len(step_bad) + 1, bool)
    bad[1:] = step_bad if same is None else same & step_bad
    return bad


def _not_increasing(cols, same) -> np.ndarray:
    return _after(same, _step(cols["t_ms"]) <= 0)


def _bad_time(cols, _same) -> np.ndarray:
    t = cols["t_ms"]
    return (t < LIMITS.time.min_event_ms) | (t >= LIMITS.time.max_event_ms)


def _bad_speed(cols, _same) -> np.ndarray:
    speed = cols["speed_mps"]
    return ~((speed >= 0) & (speed <= LIMITS.motion.max_speed_mps))


def _bad_accel(cols, _same) -> np.ndarray:
    limit = LIMITS.motion.max_accel_mps2
    return ~((np.abs(cols["accel_lon_mps2"]) <= limit) & (np.abs(cols["accel_lat_mps2"]) <= limit))


def _position_jump(cols, same) -> np.ndarray:
    # step_m / dt_s <= max, compared as (1000 step_m)² <= (max dt_ms)²: no division (exact at the
    # boundary, no warnings where dt is 0 between batches; dt <= 0 is _not_increasing's fault).
    dx, dy = _step(cols["x_m"]), _step(cols["y_m"])
    reach = LIMITS.motion.max_step_speed_mps * _step(cols["t_ms"])
    return _after(same, ~((dx * dx + dy * dy) * 1e6 <= reach * reach))


def _bad_enum(cols, _same) -> np.ndarray:
    return ~(_MODE_DECLARED[cols["mode"]] & _GEAR_DECLARED[cols["gear"].view(np.uint8)])


# In the order a batch is judged: the first rule it breaks is its reason.
RULES: tuple[tuple[str, SampleRule], ...] = (
    ("non_finite", _non_finite),
    ("bad_shape", _not_increasing),
    ("bad_timestamp", _bad_time),
    ("absurd_value", _bad_speed),
    ("absurd_value", _bad_accel),
    ("position_jump", _position_jump),
    ("out_of_range", _bad_enum),
)


def pose_batch(columns: Mapping[str, np.ndarray]) -> common_pb2.PoseBatch:
    """Encode equal-length sample columns (names of POSE_DTYPES) into a PoseBatch."""
    n = len(columns["t_ms"])
    batch = common_pb2.PoseBatch(sample_count=n)
    for name, dtype in POSE_DTYPES.items():
        values = np.asarray(columns[name], dtype=dtype)
        if values.shape != (n,):
            raise ValueError(f"column {name} has shape {values.shape}, expected ({n},)")
        setattr(batch, name, values.tobytes())
    return batch


def pose_columns(pose: common_pb2.PoseBatch) -> dict[str, np.ndarray]:
    """Decode a PoseBatch into read-only numpy columns (no checks beyond shape; raises Rejected)."""
    n = pose.sample_count
    cols = {}
    for name, dtype in POSE_DTYPES.items():
        raw = getattr(pose, name)
        if len(raw) != n * dtype.itemsize:
            raise Rejected("bad_shape", f"column {name} holds {len(raw)} bytes, {n} samples need {n * dtype.itemsize}")
        cols[name] = np.frombuffer(raw, dtype)
    return cols


def check_sample_count(pose: common_pb2.PoseBatch) -> None:
    """1..max_samples_per_batch samples (limits.yaml motion); raises Rejected("bad_shape")."""
    if not 0 < pose.sample_count <= LIMITS.motion.max_samples_per_batch:
        raise Rejected("bad_shape", f"{pose.sample_count} samples in one pose batch")


def pose_screen(batches: Sequence[common_pb2.PoseBatch]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Concatenate pose batches column-wise and judge them all at once.

    Returns (columns over all samples, samples per batch, suspect-batch mask). A suspect is
    exactly a batch `pose_arrays` rejects (ask it for the reason and detail): the same RULES. When a column of
    some batch has the wrong length, samples cannot be aligned: ({}, counts, all suspects).
    """
    counts = np.fromiter((b.sample_count for b in batches), np.int64, len(batches))
    total = int(counts.sum())
    arrays = {}
    for name, dtype in POSE_DTYPES.items():
        raw = b"".join([getattr(b, name) for b in batches])
        if len(raw) != total * dtype.itemsize:
            return {}, counts, np.ones(len(batches), bool)
        arrays[name] = np.frombuffer(raw, dtype)
    bad_count = (counts == 0) | (counts > LIMITS.motion.max_samples_per_batch)
    if bad_count.any():
        # Column lengths agree in total only; judge the batches one by one.
        return arrays, counts, np.ones(len(batches), bool)
    owner = np.repeat(np.arange(len(batches)), counts)
    same = owner[1:] == owner[:-1]
    bad_sample = np.zeros(total, bool)
    for _, rule in RULES:
        bad_sample |= rule(arrays, same)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return arrays, counts, np.logical_or.reduceat(bad_sample, starts) if len(batches) else bad_sample[:0]


def pose_arrays(pose: common_pb2.PoseBatch) -> dict[str, np.ndarray]:
    """The batch's columns, checked for shape, finiteness, plausibility and declared gear/mode values;
    raises Rejected with the first rule of RULES it breaks."""
    check_sample_count(pose)
    cols = pose_columns(pose)
    for reason, rule in RULES:
        if rule(cols, None).any():
            raise Rejected(reason, _detail(rule, cols))
    return cols


def _detail(rule: SampleRule, cols: Mapping[str, np.ndarray]) -> str:
    """What a batch's broken rule found, for the dead letter."""
    at = int(np.argmax(rule(cols, None)))
    t = cols["t_ms"]
    if rule is _position_jump:
        step_m = float(np.hypot(cols["x_m"][at] - cols["x_m"][at - 1], cols["y_m"][at] - cols["y_m"][at - 1]))
        return f"{step_m:.0f} m in {int(t[at] - t[at - 1])} ms at sample {at}"
    if rule is _bad_time:
        return f"sample times {t[0]}..{t[-1]} outside 2015..2100"
    if rule is _not_increasing:
        return "sample times are not strictly increasing"
    values = {name: col[at].item() for name, col in cols.items() if name != "t_ms"}
    shown = {
        _non_finite: [k for k, v in values.items() if isinstance(v, float) and not np.isfinite(v)],
        _bad_speed: ["speed_mps"], _bad_accel: ["accel_lon_mps2", "accel_lat_mps2"], _bad_enum: ["mode", "gear"],
    }[rule]
    return f"sample {at}: " + ", ".join(f"{name}={values[name]}" for name in shown)
