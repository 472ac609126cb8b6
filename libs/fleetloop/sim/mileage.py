"""Mileage accounting: what the cloud can see of distance, operating and autonomous time, per
vehicle, UTC day and road class (`MileageRow`, the truth the metrics are checked against)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from fleetloop.sim.ground_truth import MileageRow
from fleetloop.sim.state import AUTO, PAUSED, ROAD_CODES, ROAD_NAMES, RUNNING, Vehicle


class MileageAccount:
    """Accumulates each emitted second; `rows()` gives the totals once the run is over."""

    def __init__(self, vehicles: list[Vehicle], dt_s: float) -> None:
        self.vehicles, self.dt = vehicles, dt_s
        self._totals: dict[tuple, list] = {}
        self._day: str | None = None
        self._flush()

    def add_second(self, t_ms: int, online: np.ndarray, mode0: np.ndarray, task0: np.ndarray,
                   road0: np.ndarray, speed32: np.ndarray) -> None:
        """Add this second's cloud-visible distance / operating / autonomous time per vehicle and road
        class (the other key fields are fixed per vehicle); a new UTC day starts a new accumulator.
        `speed32`: (n, 10) float32 pose speeds as sent (m/s); the others are the second's start state."""
        day = datetime.fromtimestamp(t_ms // 1000, tz=UTC).strftime("%Y-%m-%d")
        if day != self._day:
            self._flush()
            self._day = day
        rows = np.arange(len(self.vehicles))
        dist = (speed32.astype(np.float64) * self.dt).sum(axis=1)
        operating = online & ((task0 == RUNNING) | (task0 == PAUSED))
        self._seen[rows, road0] |= online
        self._dist[rows, road0] += np.where(online, dist, 0.0)
        self._oper[rows, road0] += operating
        self._auto[rows, road0] += operating & (mode0 == AUTO)

    def _flush(self) -> None:
        if self._day is not None:
            for i, r in zip(*self._seen.nonzero(), strict=True):
                veh = self.vehicles[i]
                key = (veh.vehicle_id, self._day, veh.park.name, veh.city.name, veh.route,
                       int(ROAD_CODES[r]), veh.software_version)
                self._totals[key] = [float(self._dist[i, r]), int(self._oper[i, r]), int(self._auto[i, r])]
        shape = (len(self.vehicles), len(ROAD_NAMES))
        self._seen = np.zeros(shape, dtype=bool)
        self._dist = np.zeros(shape)
        self._oper = np.zeros(shape, dtype=np.int64)
        self._auto = np.zeros(shape, dtype=np.int64)

    def rows(self) -> list[MileageRow]:
        """Close the current day; every (vehicle, day, context) row, sorted."""
        self._flush()
        return [MileageRow(vehicle_id=k[0], day=k[1], park=k[2], city=k[3], route=k[4], road_type=k[5],
                           software_version=k[6], distance_m=acc[0], operating_s=acc[1], autonomous_s=acc[2])
                for k, acc in sorted(self._totals.items())]
