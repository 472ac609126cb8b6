"""Vehicle runtime parameters: `vehicle.yaml` next to this module, with overrides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).with_name("vehicle.yaml")


@dataclass(frozen=True)
class VehicleParams:
    """ring_capacity_s: seconds of event time kept per vehicle; raw_bytes_per_s: declared raw volume."""

    ring_capacity_s: float = 900.0
    raw_bytes_per_s: float = 4e9 / 60

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> VehicleParams:
        return cls(ring_capacity_s=float(raw["ring_buffer"]["capacity_s"]),
                   raw_bytes_per_s=float(raw["raw"]["bytes_per_minute"]) / 60.0)


def load_params(path: Path = DEFAULT_PATH) -> VehicleParams:
    """Read the parameters file (the only file read of this package)."""
    with open(path, encoding="utf-8") as f:
        return VehicleParams.from_mapping(yaml.safe_load(f))
