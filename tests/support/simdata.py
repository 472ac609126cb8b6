"""Decode a simulator run into per-vehicle columns, for the simulator tests."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from fleetloop import topics
from fleetloop.codec import pose_columns
from fleetloop.sim import FleetSimulator, SimConfig
from fleetloop.v1 import common_pb2


@dataclass
class VehicleTrace:
    """Everything one vehicle emitted, in time order."""

    pose_t: list[int] = field(default_factory=list)
    pose: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    heartbeats: list[tuple[int, common_pb2.Heartbeat]] = field(default_factory=list)
    perception: list[tuple[int, common_pb2.PerceptionSummary]] = field(default_factory=list)
    events: list[tuple[int, common_pb2.VehicleEvent]] = field(default_factory=list)

    def columns(self) -> dict[str, np.ndarray]:
        out = {name: np.asarray(values) for name, values in self.pose.items()}
        out["t"] = np.asarray(self.pose_t)
        return out


POSE_FIELDS = ("speed_mps", "accel_lon_mps2", "yaw_rate_rps", "x_m", "y_m")


def run(config: SimConfig) -> tuple[FleetSimulator, dict[str, VehicleTrace], list]:
    """Simulate `config`; returns the simulator, the decoded traces by vehicle id and all messages."""
    sim = FleetSimulator(config)
    traces: dict[str, VehicleTrace] = defaultdict(VehicleTrace)
    messages = []
    for sec in sim.seconds():
        messages.extend(sec.messages)
        for topic, env in sec.messages:
            tr = traces[env.vehicle_id]
            if topic == topics.POSE:
                cols = pose_columns(env.pose)
                tr.pose_t.extend(cols["t_ms"].tolist())
                for name in POSE_FIELDS:
                    tr.pose[name].extend(cols[name].tolist())
            elif topic == topics.HEARTBEAT:
                tr.heartbeats.append((env.event_time_ms, env.heartbeat))
            elif topic == topics.PERCEPTION:
                tr.perception.append((env.event_time_ms, env.perception))
            else:
                tr.events.append((env.event_time_ms, env.event))
    return sim, traces, messages


def window(cols: dict[str, np.ndarray], start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
    keep = (cols["t"] >= start_ms) & (cols["t"] < end_ms)
    return {k: v[keep] for k, v in cols.items()}
