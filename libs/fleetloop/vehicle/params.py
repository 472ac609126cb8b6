"""Vehicle runtime parameters: `vehicle.yaml` next to this module, read by `load_vehicle_params`.

`vehicle.yaml`'s `raw.bytes_per_minute` is the one statement of the fleet's raw sensor volume (about
4 GB per vehicle-minute): the uploader declares it in raw manifests and the case-assembler's policy
reserves it for the raw tier (`services/case_assembler/policy.py`). Its `charging_sites` and
`replay_queue` sections configure the vehicle's replay queue (`fleetloop.vehicle.replay_queue`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from fleetloop.config import ConfigModel, load_yaml

DEFAULT_PATH = Path(__file__).with_name("vehicle.yaml")
EARTH_RADIUS_M = 6_371_000.0  # mean radius (IUGG); the simulator projects with the same


class RingBufferParams(ConfigModel):
    capacity_s: float = Field(gt=0)


class RawParams(ConfigModel):
    bytes_per_minute: float = Field(gt=0)


class ChargingSite(ConfigModel):
    """A depot or home location with a charger: centre (WGS84 degrees) and radius (m)."""

    site_id: str = Field(min_length=1)
    lat_deg: float = Field(ge=-90, le=90)
    lon_deg: float = Field(ge=-180, le=180)
    radius_m: float = Field(gt=0)

    def distance_m(self, lat_deg: float, lon_deg: float) -> float:
        """Great-circle (haversine) distance in metres from the site's centre to (lat_deg, lon_deg)."""
        p1, p2 = math.radians(self.lat_deg), math.radians(lat_deg)
        dp, dl = p2 - p1, math.radians(lon_deg - self.lon_deg)
        h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def site_at(sites: Iterable[ChargingSite], lat_deg: float, lon_deg: float) -> ChargingSite | None:
    """The nearest of `sites` whose radius contains (lat_deg, lon_deg), or None when none does."""
    inside = [(s.distance_m(lat_deg, lon_deg), s) for s in sites]
    inside = [(d, s) for d, s in inside if d <= s.radius_m]
    return min(inside, key=lambda ds: ds[0])[1] if inside else None


class ActivationParams(ConfigModel):
    """When the replay queue may work, besides gear P and charging at a known site."""

    min_state_of_charge: float = Field(ge=0, le=1)
    max_compute_temp_c: float


class ReplayQueueParams(ConfigModel):
    """The `replay_queue:` section of vehicle.yaml (see the comments there for each number)."""

    activation: ActivationParams
    night_start_local_h: float = Field(ge=0, lt=24)
    nightly_budget_s: float = Field(ge=0)
    slice_iterations: int = Field(ge=1)
    max_items: int = Field(ge=1)
    max_bytes: int = Field(ge=1)
    uncertainty_gap: float = Field(gt=0)
    planning_triggers: tuple[str, ...]
    perception_triggers: tuple[str, ...]
    policy: str = Field(min_length=1)
    seed: int = Field(ge=0)
    search: dict[str, Any]

    @model_validator(mode="after")
    def _no_trigger_in_both_lists(self) -> ReplayQueueParams:
        both = sorted(set(self.planning_triggers) & set(self.perception_triggers))
        if both:
            raise ValueError(f"replay_queue: {both} are both planning and perception triggers")
        return self


class VehicleFile(ConfigModel):
    """The layout of vehicle.yaml."""

    ring_buffer: RingBufferParams
    raw: RawParams
    charging_sites: tuple[ChargingSite, ...]
    replay_queue: ReplayQueueParams


class VehicleParams(ConfigModel):
    """ring_capacity_s: seconds of event time kept per vehicle; raw_bytes_per_minute: declared raw volume;
    charging_sites: where the replay queue may work; replay_queue: its parameters."""

    ring_capacity_s: float = Field(gt=0)
    raw_bytes_per_minute: float = Field(gt=0)
    charging_sites: tuple[ChargingSite, ...]
    replay_queue: ReplayQueueParams

    @property
    def raw_bytes_per_s(self) -> float:
        return self.raw_bytes_per_minute / 60.0


def load_vehicle_params(path: Path = DEFAULT_PATH) -> VehicleParams:
    """Read the vehicle parameters file (the only file read of this package); raises ConfigError."""
    file = load_yaml(path, VehicleFile)
    return VehicleParams(ring_capacity_s=file.ring_buffer.capacity_s, raw_bytes_per_minute=file.raw.bytes_per_minute,
                         charging_sites=file.charging_sites, replay_queue=file.replay_queue)
