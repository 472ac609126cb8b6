"""Hand-built fleet messages with exactly known content, for tests that need precise inputs."""

from __future__ import annotations

import numpy as np
from fleetloop import codec
from fleetloop.v1 import common_pb2

T0_MS = 1_780_293_600_000  # 2026-06-01T06:00:00Z


def heartbeat(vehicle_id: str, t_ms: int, *, speed: float = 10.0, mode: int = common_pb2.DRIVING_MODE_AUTONOMOUS,
              road_type: int = common_pb2.ROAD_TYPE_URBAN, park: str = "park-a", city: str = "city-a",
              task_state: int = common_pb2.TASK_STATE_RUNNING, software_version: str = "v1.0") -> common_pb2.Envelope:
    env = common_pb2.Envelope(schema_version=1, vehicle_id=vehicle_id, event_time_ms=t_ms,
                              message_id=f"{vehicle_id}/hb/{t_ms}")
    env.heartbeat.CopyFrom(common_pb2.Heartbeat(
        mode=mode, speed_mps=speed, lat_deg=31.3, lon_deg=120.6, road_type=road_type, task_id="task-1",
        task_state=task_state, city=city, park=park, route="r1", software_version=software_version,
        connectivity=common_pb2.CONNECTIVITY_CELLULAR, state_of_charge=0.8))
    return env


def pose_columns(t_ms: int, *, speed: float = 10.0, x0: float = 0.0) -> dict[str, np.ndarray]:
    """One vehicle-second of 10 Hz sample columns at constant `speed` along +x."""
    zeros = np.zeros(10)
    return {
        "t_ms": t_ms + 100 * np.arange(10), "x_m": x0 + speed * 0.1 * np.arange(10), "y_m": zeros,
        "lat_deg": np.full(10, 31.3), "lon_deg": np.full(10, 120.6), "speed_mps": np.full(10, speed),
        "accel_lon_mps2": zeros, "accel_lat_mps2": zeros, "heading_rad": zeros, "yaw_rate_rps": zeros,
        "steering_rad": zeros, "throttle": zeros, "brake": zeros, "gear": np.ones(10),
        "mode": np.full(10, common_pb2.DRIVING_MODE_AUTONOMOUS),
    }


def pose(vehicle_id: str, t_ms: int, *, speed: float = 10.0, x0: float = 0.0, **overrides) -> common_pb2.Envelope:
    """A pose-batch envelope; `overrides` replace whole columns (e.g. x_m with a jump)."""
    env = common_pb2.Envelope(schema_version=1, vehicle_id=vehicle_id, event_time_ms=t_ms,
                              message_id=f"{vehicle_id}/pose/{t_ms}")
    env.pose.CopyFrom(codec.pose_batch({**pose_columns(t_ms, speed=speed, x0=x0), **overrides}))
    return env


def drive(vehicle_id: str, seconds: int, start_ms: int = T0_MS, speed: float = 10.0,
          **heartbeat_fields) -> list[tuple[str, common_pb2.Envelope]]:
    """(topic, envelope) pairs for `seconds` of steady driving: a heartbeat and a pose batch per second."""
    out = []
    for s in range(seconds):
        t = start_ms + 1000 * s
        out.append(("fleet.heartbeat.v1", heartbeat(vehicle_id, t, speed=speed, **heartbeat_fields)))
        out.append(("fleet.pose.v1", pose(vehicle_id, t, speed=speed, x0=speed * s)))
    return out
