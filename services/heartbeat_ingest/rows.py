"""Pure conversion of validated fleet messages into columnar Arrow batches for the ODS and
DWD tables. No I/O: the service decides when to write them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from fleetloop import codec
from fleetloop.v1 import common_pb2

_TS = pa.timestamp("ms", tz="UTC")
_SECOND = pa.timestamp("s", tz="UTC")


def _vehicle_column(ids: Sequence[str], counts: np.ndarray | None = None) -> pa.Array:
    """Vehicle ids as a dictionary array (cheap to build, LowCardinality on the ClickHouse side)."""
    uniq, inverse = np.unique(np.asarray(ids, dtype=object), return_inverse=True)
    indices = inverse.astype(np.int32) if counts is None else np.repeat(inverse.astype(np.int32), counts)
    return pa.DictionaryArray.from_arrays(pa.array(indices), pa.array(uniq.tolist(), pa.string()))


def heartbeat_tables(envs: Sequence[common_pb2.Envelope]) -> tuple[pa.Table, pa.Table]:
    """(ods_heartbeat rows, dwd_vehicle_second partial rows) for validated heartbeat envelopes."""
    hbs = [e.heartbeat for e in envs]
    ts = np.fromiter((e.event_time_ms for e in envs), np.int64, len(envs))
    ods = pa.table({
        "vehicle_id": _vehicle_column([e.vehicle_id for e in envs]),
        "ts": pa.array(ts, _TS),
        "message_id": [e.message_id for e in envs],
        "mode": pa.array([h.mode for h in hbs], pa.uint8()),
        "speed_mps": [h.speed_mps for h in hbs],
        "lat_deg": [h.lat_deg for h in hbs],
        "lon_deg": [h.lon_deg for h in hbs],
        "x_m": [h.x_m for h in hbs],
        "y_m": [h.y_m for h in hbs],
        "road_type": pa.array([h.road_type for h in hbs], pa.uint8()),
        "task_id": [h.task_id for h in hbs],
        "task_state": pa.array([h.task_state for h in hbs], pa.uint8()),
        "city": [h.city for h in hbs],
        "park": [h.park for h in hbs],
        "route": [h.route for h in hbs],
        "software_version": [h.software_version for h in hbs],
        "connectivity": pa.array([h.connectivity for h in hbs], pa.uint8()),
        "charging": pa.array([int(h.charging) for h in hbs], pa.uint8()),
        "state_of_charge": pa.array([h.state_of_charge for h in hbs], pa.float32()),
        "odometer_m": [h.odometer_m for h in hbs],
        "compute_temp_c": pa.array([h.compute_temp_c for h in hbs], pa.float32()),
        "parked": pa.array([int(h.parked) for h in hbs], pa.uint8()),
    })
    ones = pa.array(np.ones(len(envs), np.uint8))
    dwd = pa.table({
        "vehicle_id": ods["vehicle_id"],
        "ts": pa.array(ts // 1000, _SECOND),
        "has_heartbeat": ones,
        "mode": ods["mode"],
        "task_state": ods["task_state"],
        "road_type": ods["road_type"],
        "speed_mps": ods["speed_mps"],
        "city": ods["city"],
        "park": ods["park"],
        "route": ods["route"],
        "software_version": ods["software_version"],
    })
    return ods, dwd


def pose_tables(envs: Sequence[common_pb2.Envelope], arrays: dict[str, np.ndarray],
                counts: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """(ods_pose rows, dwd_vehicle_second partial rows) for good pose batches.

    A batch covers one vehicle-second, so its distance is the mean sample speed x 1 s.
    """
    ods = pa.table({
        "vehicle_id": _vehicle_column([e.vehicle_id for e in envs], counts),
        "ts": pa.array(arrays["t_ms"], _TS),
        **{name: arrays[name] for name in codec.POSE_DTYPES if name != "t_ms"},
    })
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    distance_m = np.add.reduceat(arrays["speed_mps"].astype(np.float64), starts) / counts
    seconds = np.fromiter((e.event_time_ms // 1000 for e in envs), np.int64, len(envs))
    dwd = pa.table({
        "vehicle_id": _vehicle_column([e.vehicle_id for e in envs]),
        "ts": pa.array(seconds, _SECOND),
        "has_pose": pa.array(np.ones(len(envs), np.uint8)),
        "distance_m": distance_m,
    })
    return ods, dwd


def event_table(envs: Sequence[common_pb2.Envelope]) -> pa.Table:
    evs = [e.event for e in envs]
    return pa.table({
        "vehicle_id": _vehicle_column([e.vehicle_id for e in envs]),
        "ts": pa.array([e.event_time_ms for e in envs], _TS),
        "message_id": [e.message_id for e in envs],
        "kind": pa.array([v.kind for v in evs], pa.uint8()),
        "from_mode": pa.array([v.from_mode for v in evs], pa.uint8()),
        "to_mode": pa.array([v.to_mode for v in evs], pa.uint8()),
        "module": [v.module for v in evs],
        "code": [v.code for v in evs],
        "text": [v.text for v in evs],
        "value": [v.value for v in evs],
        "source": [v.source for v in evs],
    })


def perception_table(envs: Sequence[common_pb2.Envelope]) -> pa.Table:
    ps = [e.perception for e in envs]
    f32 = pa.list_(pa.float32())
    return pa.table({
        "vehicle_id": _vehicle_column([e.vehicle_id for e in envs]),
        "ts": pa.array([e.event_time_ms for e in envs], _TS),
        "message_id": [e.message_id for e in envs],
        "weather": pa.array([p.weather for p in ps], pa.uint8()),
        "light": pa.array([p.light for p in ps], pa.uint8()),
        "road_type": pa.array([p.road_type for p in ps], pa.uint8()),
        "junction_type": pa.array([p.junction_type for p in ps], pa.uint8()),
        "speed_limit_mps": pa.array([p.speed_limit_mps for p in ps], pa.float32()),
        "lane_count": pa.array([p.lane_count for p in ps], pa.uint8()),
        "lane_index": pa.array([p.lane_index for p in ps], pa.uint8()),
        "crosswalk": pa.array([int(p.crosswalk) for p in ps], pa.uint8()),
        "maneuver": [p.maneuver for p in ps],
        "unprotected_turn": pa.array([int(p.unprotected_turn) for p in ps], pa.uint8()),
        "object_count": pa.array([len(p.objects) for p in ps], pa.uint16()),
        "obj_class": pa.array([[o.object_class for o in p.objects] for p in ps], pa.list_(pa.uint8())),
        "obj_rel_x_m": pa.array([[o.rel_x_m for o in p.objects] for p in ps], f32),
        "obj_rel_y_m": pa.array([[o.rel_y_m for o in p.objects] for p in ps], f32),
        "obj_rel_vx_mps": pa.array([[o.rel_vx_mps for o in p.objects] for p in ps], f32),
        "obj_rel_vy_mps": pa.array([[o.rel_vy_mps for o in p.objects] for p in ps], f32),
        "obj_confidence": pa.array([[o.confidence for o in p.objects] for p in ps], f32),
    })
