"""Simulation configuration: what to simulate (SimConfig) and the tuned parameters (sim.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fleetloop.config import safe_load

START_MS_DEFAULT = 1_780_293_600_000  # 2026-06-01T06:00:00Z

INCIDENT_KINDS = ("hard_brake", "phantom_stop", "near_miss", "contact", "weaving", "stop_not_go", "takeover",
                  "call_for_help", "error_code", "operator_speech", "planner_uncertainty", "scene_complexity",
                  "offline", "park_blockage", "error_burst")
PARK_KINDS = ("park_blockage", "error_burst")
# Near-miss situation families (docs/INCIDENTS.md): scheduled only when
# SimConfig.near_miss_families_per_vehicle_hour > 0, so the default output never changes.
FAMILY_KINDS = ("cut_in", "sideswipe", "crossing_pedestrian", "lead_braking", "highway_closing", "short_encounter")


@dataclass(frozen=True)
class ScheduledIncident:
    """An incident to inject. `at_s` counts from the simulation start; the incident starts at the first
    second at or after it when the vehicle can show it (e.g. a hard brake needs speed and a straight
    road) and its previous incident ended >= 60 s before. For park_blockage / error_burst,
    `vehicle_index` names any vehicle of the park. `duration_s` overrides the drawn duration of kinds
    that have one (weaving, stop_not_go, takeover, call_for_help, offline, planner_uncertainty,
    park_blockage); `params` may set kind-specific choices (scene_complexity: {"variant":
    "unprotected_left"|"occluded_pedestrian"|"unknown_object"})."""

    kind: str
    vehicle_index: int
    at_s: float
    duration_s: float | None = None
    params: dict | None = None


@dataclass(frozen=True)
class SimConfig:
    """What to simulate.

    vehicles: fleet size (~25 % trucks). start_ms: epoch ms of the first second. duration_s: seconds
    to simulate. seed: everything random derives from it. incidents_per_vehicle_hour: density of the
    random incident schedule, used when `incidents` is None; an explicit list replaces it.
    near_miss_families_per_vehicle_hour: density of the near-miss situation families (`FAMILY_KINDS`,
    each with its 10 Hz truth), added to either schedule from their own random stream; 0 (default)
    adds none, so the default run stays byte-identical.
    """

    vehicles: int = 50
    start_ms: int = START_MS_DEFAULT
    duration_s: int = 3 * 3600
    seed: int = 7
    incidents_per_vehicle_hour: float = 0.8
    incidents: list[ScheduledIncident] | None = None
    near_miss_families_per_vehicle_hour: float = 0.0

    def validate(self) -> None:
        if self.vehicles < 1:
            raise ValueError("vehicles must be >= 1")
        if self.duration_s < 1:
            raise ValueError("duration_s must be >= 1")
        if self.near_miss_families_per_vehicle_hour < 0:
            raise ValueError("near_miss_families_per_vehicle_hour must be >= 0")
        if not 2**35 <= self.start_ms < 2**42 - 1000 * self.duration_s:
            raise ValueError("start_ms must be an epoch-ms time between 1971 and 2109")
        for inc in self.incidents or []:
            if inc.kind not in INCIDENT_KINDS + FAMILY_KINDS:
                raise ValueError(f"unknown incident kind {inc.kind!r}; known: "
                                 f"{', '.join(INCIDENT_KINDS + FAMILY_KINDS)}")
            if not 0 <= inc.vehicle_index < self.vehicles:
                raise ValueError(f"incident vehicle_index {inc.vehicle_index} outside the fleet")


@lru_cache(maxsize=1)
def load_sim_params() -> dict:
    """The simulator's tuned parameters: sim.yaml next to this module, as a nested dict.

    Read through the project's safe YAML reader (duplicate keys and alias bombs refused, errors name
    the file); not yet a typed model.
    """
    path = Path(__file__).with_name("sim.yaml")
    return safe_load(path.read_text(encoding="utf-8"), source=str(path))
