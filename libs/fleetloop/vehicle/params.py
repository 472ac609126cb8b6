"""Vehicle runtime parameters: `vehicle.yaml` next to this module, read by `load_vehicle_params`.

`vehicle.yaml`'s `raw.bytes_per_minute` is the one statement of the fleet's raw sensor volume (about
4 GB per vehicle-minute): the uploader declares it in raw manifests and the case-assembler's policy
reserves it for the raw tier (`services/case_assembler/policy.py`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from fleetloop.config import ConfigModel, load_yaml

DEFAULT_PATH = Path(__file__).with_name("vehicle.yaml")

class RingBufferParams(ConfigModel):
    capacity_s: float = Field(gt=0)


class RawParams(ConfigModel):
    bytes_per_minute: float = Field(gt=0)


class VehicleFile(ConfigModel):
    """The layout of vehicle.yaml."""

    ring_buffer: RingBufferParams
    raw: RawParams


class VehicleParams(ConfigModel):
    """ring_capacity_s: seconds of event time kept per vehicle; raw_bytes_per_minute: declared raw volume."""

    ring_capacity_s: float = Field(gt=0)
    raw_bytes_per_minute: float = Field(gt=0)

    @property
    def raw_bytes_per_s(self) -> float:
        return self.raw_bytes_per_minute / 60.0


def load_vehicle_params(path: Path = DEFAULT_PATH) -> VehicleParams:
    """Read the vehicle parameters file (the only file read of this package); raises ConfigError."""
    file = load_yaml(path, VehicleFile)
    return VehicleParams(ring_capacity_s=file.ring_buffer.capacity_s, raw_bytes_per_minute=file.raw.bytes_per_minute)

