"""Decoding and validating fleet messages: bytes in, an Envelope out, or a `Rejected` with a
machine-readable reason for the dead-letter topic (ARCHITECTURE §5).

The limits below are physical plausibility bounds, not driving-quality thresholds: anything
beyond them is a sensor or transport fault, never a real manoeuvre.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from google.protobuf.message import DecodeError

from fleetloop.v1 import common_pb2

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

# 2015-01-01 .. 2100-01-01: anything outside is a broken clock, not fleet data.
MIN_EVENT_MS = 1_420_070_400_000
MAX_EVENT_MS = 4_102_444_800_000
# Relative to the consumer's watermark (max event time seen on the partition).
MAX_AHEAD_OF_WATERMARK_MS = 3_600_000          # 1 h: clocks of healthy vehicles are NTP-synced
MAX_BEHIND_WATERMARK_MS = 7 * 86_400_000       # 7 d: vehicles buffer at most a week offline
MAX_SPEED_MPS = 70.0                           # 252 km/h: far above any fleet vehicle's top speed
MAX_ACCEL_MPS2 = 30.0                          # ~3 g: beyond tyre grip; a crash shows as contact
MAX_STEP_SPEED_MPS = 100.0                     # position jump between samples (1 km in 100 ms is 10 km/s)
MAX_SAMPLES_PER_BATCH = 50                     # one vehicle-second at up to 50 Hz

PAYLOADS = ("heartbeat", "pose", "event", "perception")


class Rejected(Exception):
    """A message that must go to the dead-letter topic; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(envelope: common_pb2.Envelope) -> bytes:
    return envelope.SerializeToString()


def decode_envelope(value: bytes, key: bytes | None, expected_payload: str) -> common_pb2.Envelope:
    """Parse and check the envelope: schema version, vehicle id vs key, payload kind, time range."""
    envelope = common_pb2.Envelope()
    try:
        envelope.ParseFromString(value)
    except DecodeError as exc:
        raise Rejected("decode_error", str(exc) or "not a fleetloop Envelope") from None
    if envelope.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise Rejected("unknown_schema_version", f"schema_version={envelope.schema_version}")
    if not envelope.vehicle_id:
        raise Rejected("missing_vehicle_id", "envelope has no vehicle_id")
    if key is not None and key != envelope.vehicle_id.encode():
        raise Rejected("key_mismatch", f"key {key!r} != vehicle_id {envelope.vehicle_id!r}")
    if not envelope.message_id:
        raise Rejected("missing_message_id", "envelope has no message_id")
    kind = envelope.WhichOneof("payload")
    if kind != expected_payload:
        raise Rejected("wrong_payload", f"expected {expected_payload}, got {kind}")
    if not MIN_EVENT_MS <= envelope.event_time_ms < MAX_EVENT_MS:
        raise Rejected("bad_timestamp", f"event_time_ms={envelope.event_time_ms} outside 2015..2100")
    return envelope


def check_watermark(event_time_ms: int, watermark_ms: int) -> None:
    """Reject event times far ahead of or behind the partition's watermark (0 = none yet)."""
    if watermark_ms <= 0:
        return
    if event_time_ms > watermark_ms + MAX_AHEAD_OF_WATERMARK_MS:
        raise Rejected("future_timestamp", f"{(event_time_ms - watermark_ms) / 1000:.0f} s ahead of watermark")
    if event_time_ms < watermark_ms - MAX_BEHIND_WATERMARK_MS:
        raise Rejected("stale_timestamp", f"{(watermark_ms - event_time_ms) / 1000:.0f} s behind watermark")


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise Rejected("non_finite", f"{name}={value}")


def check_heartbeat(hb: common_pb2.Heartbeat) -> None:
    """Plausibility of a heartbeat; raises Rejected."""
    for name in ("speed_mps", "lat_deg", "lon_deg", "x_m", "y_m", "state_of_charge", "odometer_m"):
        _finite(name, getattr(hb, name))
    if not 0.0 <= hb.speed_mps <= MAX_SPEED_MPS:
        raise Rejected("absurd_value", f"speed_mps={hb.speed_mps}")
    if not (-90.0 <= hb.lat_deg <= 90.0 and -180.0 <= hb.lon_deg <= 180.0):
        raise Rejected("absurd_value", f"lat/lon=({hb.lat_deg}, {hb.lon_deg})")
    if hb.odometer_m < 0:
        raise Rejected("absurd_value", f"odometer_m={hb.odometer_m}")


# PoseBatch columns and their wire dtypes (little-endian), in proto field order.
POSE_DTYPES: dict[str, np.dtype] = {
    "t_ms": np.dtype("<i8"),
    "x_m": np.dtype("<f8"), "y_m": np.dtype("<f8"), "lat_deg": np.dtype("<f8"), "lon_deg": np.dtype("<f8"),
    "speed_mps": np.dtype("<f4"), "accel_lon_mps2": np.dtype("<f4"), "accel_lat_mps2": np.dtype("<f4"),
    "heading_rad": np.dtype("<f4"), "yaw_rate_rps": np.dtype("<f4"), "steering_rad": np.dtype("<f4"),
    "throttle": np.dtype("<f4"), "brake": np.dtype("<f4"),
    "gear": np.dtype("i1"), "mode": np.dtype("u1"),
}


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
    """Decode a PoseBatch into read-only numpy columns (no checks beyond shape)."""
    n = pose.sample_count
    cols = {}
    for name, dtype in POSE_DTYPES.items():
        raw = getattr(pose, name)
        if len(raw) != n * dtype.itemsize:
            raise Rejected("bad_shape", f"column {name} holds {len(raw)} bytes, {n} samples need {n * dtype.itemsize}")
        cols[name] = np.frombuffer(raw, dtype)
    return cols


def pose_arrays(pose: common_pb2.PoseBatch) -> dict[str, np.ndarray]:
    """The batch's columns, checked for shape, finiteness and plausibility; raises Rejected."""
    n = pose.sample_count
    if not 0 < n <= MAX_SAMPLES_PER_BATCH:
        raise Rejected("bad_shape", f"{n} samples in one pose batch")
    cols = pose_columns(pose)
    for name, col in cols.items():
        if col.dtype.kind == "f" and not np.isfinite(col).all():
            raise Rejected("non_finite", f"{name} holds NaN or inf")
    t = cols["t_ms"]
    if n > 1 and not (np.diff(t) > 0).all():
        raise Rejected("bad_shape", "sample times are not strictly increasing")
    if not (MIN_EVENT_MS <= t[0] and t[-1] < MAX_EVENT_MS):
        raise Rejected("bad_timestamp", f"sample times {t[0]}..{t[-1]} outside 2015..2100")
    speed = cols["speed_mps"]
    if (speed < 0).any() or (speed > MAX_SPEED_MPS).any():
        raise Rejected("absurd_value", f"speed_mps range {speed.min():.1f}..{speed.max():.1f}")
    if (np.abs(cols["accel_lon_mps2"]) > MAX_ACCEL_MPS2).any() or (
            np.abs(cols["accel_lat_mps2"]) > MAX_ACCEL_MPS2).any():
        raise Rejected("absurd_value", "acceleration beyond 30 m/s²")
    if n > 1:
        step_m = np.hypot(np.diff(cols["x_m"]), np.diff(cols["y_m"]))
        step_speed = step_m / (np.diff(t) / 1000.0)
        if (step_speed > MAX_STEP_SPEED_MPS).any():
            worst = int(np.argmax(step_speed))
            raise Rejected("position_jump",
                           f"{step_m[worst]:.0f} m in {int(np.diff(t)[worst])} ms at sample {worst + 1}")
    return cols


def check_event(event: common_pb2.VehicleEvent) -> None:
    _finite("value", event.value)
    if event.kind == common_pb2.EVENT_KIND_UNSPECIFIED:
        raise Rejected("absurd_value", "event kind unspecified")


def check_perception(summary: common_pb2.PerceptionSummary) -> None:
    _finite("speed_limit_mps", summary.speed_limit_mps)
    for obj in summary.objects:
        for name in ("rel_x_m", "rel_y_m", "rel_vx_mps", "rel_vy_mps", "length_m", "width_m", "confidence"):
            _finite(f"object[{obj.track_id}].{name}", getattr(obj, name))
