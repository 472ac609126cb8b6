"""Vehicle events of one second: the queue that incidents and normal driving emit into, and normal
driving's own events (occasional warning codes, benign operator speech)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fleetloop.sim.state import IDLE, FleetState
from fleetloop.v1 import common_pb2


class EventQueue:
    """The VehicleEvents of the current second as (vehicle index, event time ms, event); cleared
    every second. A vehicle that is offline emits nothing."""

    def __init__(self, state: FleetState) -> None:
        self.state = state
        self.items: list[tuple[int, int, common_pb2.VehicleEvent]] = []

    def emit(self, i: int, t_ms: int, event: common_pb2.VehicleEvent) -> None:
        """Queue a vehicle event at `t_ms` (inside the current second) if the vehicle is online."""
        if self.state.online[i]:
            self.items.append((i, t_ms, event))

    def clear(self) -> None:
        self.items.clear()


class NormalEvents:
    """Background events of normal driving: warning codes and benign speech, each at exponential
    gaps per vehicle (sim.yaml `normal_events`), never while an incident holds the vehicle.

    Draws the first times of every vehicle from `rng` when built, warnings then speech.
    """

    def __init__(self, state: FleetState, params: dict, rng: np.random.Generator, start_ms: int,
                 queue: EventQueue) -> None:
        self.state, self.p, self.rng, self.queue = state, params, rng, queue
        ne = params["normal_events"]
        n = state.n
        self.next_warning_ms = start_ms + (rng.exponential(3600e3 / ne["warning_per_vehicle_hour"], n)).astype(np.int64)
        self.next_speech_ms = start_ms + (rng.exponential(3600e3 / ne["speech_per_vehicle_hour"], n)).astype(np.int64)

    def emit_due(self, t_ms: int, is_free: Callable[[int, int], bool]) -> None:
        """Emit the events due in this second; `is_free(i, t_ms)`: no incident holds vehicle i."""
        ne = self.p["normal_events"]
        codes = self.p["incidents"]["warning_codes"]
        for i in np.flatnonzero(self.next_warning_ms <= t_ms).tolist():
            gap = max(ne["warning_min_gap_s"], self.rng.exponential(3600 / ne["warning_per_vehicle_hour"]))
            self.next_warning_ms[i] = t_ms + int(1000 * gap)
            if is_free(i, t_ms) and self.state.task_state[i] != IDLE:
                module, code = codes[int(self.rng.integers(len(codes)))]
                self.queue.emit(i, t_ms + int(self.rng.integers(1000)), common_pb2.VehicleEvent(
                    kind=common_pb2.EVENT_KIND_ERROR_CODE, module=module, code=code, source="system"))
        for i in np.flatnonzero(self.next_speech_ms <= t_ms).tolist():
            self.next_speech_ms[i] = t_ms + int(1000 * self.rng.exponential(3600 / ne["speech_per_vehicle_hour"]))
            if is_free(i, t_ms):
                text = ne["benign_speech"][int(self.rng.integers(len(ne["benign_speech"])))]
                self.queue.emit(i, t_ms + int(self.rng.integers(1000)), common_pb2.VehicleEvent(
                    kind=common_pb2.EVENT_KIND_OPERATOR_SPEECH, text=text, source="safety_driver"))
