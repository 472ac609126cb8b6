"""Ground truth of a simulation: injected incidents, cloud-visible mileage, the vehicles."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Incident:
    """One injected incident.

    `start_ms`/`end_ms` (epoch ms, event time) bound the incident's signal shape; every trigger named in
    `expected_triggers` should fire exactly once for `vehicle_id` inside that window. Park-level rows
    (park_blockage, error_burst) have `vehicle_id == ""` and no expected vehicle trigger: their member
    vehicles have their own rows, listed in `detail["members"]`.
    """

    incident_id: str
    kind: str
    vehicle_id: str
    start_ms: int
    end_ms: int
    expected_triggers: tuple[str, ...]
    park: str
    city: str
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MileageRow:
    """What the cloud can see of one vehicle-day-context: distance (m) from emitted pose samples
    (speed x 0.1 s), operating seconds (heartbeats with task RUNNING/PAUSED) and the autonomous
    share of them, grouped by the heartbeat's context and the UTC day of the second."""

    vehicle_id: str
    day: str
    park: str
    city: str
    route: str
    road_type: int
    software_version: str
    distance_m: float
    operating_s: int
    autonomous_s: int


@dataclass(frozen=True)
class VehicleInfo:
    vehicle_id: str
    park: str
    city: str
    kind: str
    software_version: str


@dataclass
class GroundTruth:
    incidents: list[Incident] = field(default_factory=list)
    mileage: list[MileageRow] = field(default_factory=list)
    vehicles: list[VehicleInfo] = field(default_factory=list)

    def write_jsonl(self, path: str | Path) -> None:
        """One JSON object per line: {"type": "vehicle"|"incident"|"mileage", ...fields}."""
        with open(path, "w", encoding="utf-8") as f:
            for kind, rows in (("vehicle", self.vehicles), ("incident", self.incidents),
                               ("mileage", self.mileage)):
                for row in rows:
                    f.write(json.dumps({"type": kind, **asdict(row)}, sort_keys=True) + "\n")

    @classmethod
    def read_jsonl(cls, path: str | Path) -> GroundTruth:
        gt = cls()
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                kind = row.pop("type")
                if kind == "vehicle":
                    gt.vehicles.append(VehicleInfo(**row))
                elif kind == "incident":
                    row["expected_triggers"] = tuple(row["expected_triggers"])
                    gt.incidents.append(Incident(**row))
                elif kind == "mileage":
                    gt.mileage.append(MileageRow(**row))
                else:
                    raise ValueError(f"unknown ground-truth row type {kind!r}")
        return gt
