"""The codec's limits, typed: `libs/fleetloop/limits.yaml` loaded once into `Limits` (the rationale of
each number is in that file, next to it)."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

LIMITS_PATH = Path(__file__).resolve().parent.parent / "limits.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimeLimits(_Section):
    """Event-time bounds, epoch milliseconds UTC (max exclusive)."""

    min_event_ms: int
    max_event_ms: int
    max_ahead_of_watermark_ms: PositiveInt
    max_behind_watermark_ms: PositiveInt
    silent_after_ms: PositiveInt
    max_tracked_vehicles: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> TimeLimits:
        if self.min_event_ms >= self.max_event_ms:
            raise ValueError("min_event_ms must be before max_event_ms")
        return self


class MotionLimits(_Section):
    """Plausibility of vehicle motion (SI units)."""

    max_speed_mps: PositiveFloat
    max_accel_mps2: PositiveFloat
    max_step_speed_mps: PositiveFloat
    max_samples_per_batch: PositiveInt


class PerceptionLimits(_Section):
    max_lane_count: int = Field(gt=0, le=255)  # lane_count and lane_index land in UInt8 columns
    max_objects: int = Field(gt=0, le=65535)   # object_count lands in a UInt16 column
    max_planner_costs: PositiveInt


class TriggerLimits(_Section):
    max_window_s: PositiveFloat
    max_episode_ms: PositiveInt
    max_measurements: PositiveInt


class StringLimits(_Section):
    """Characters per string field: `max_chars` by "Message.field", else `default_max_chars`."""

    vehicle_id_pattern: str
    default_max_chars: PositiveInt
    max_chars: dict[str, PositiveInt] = {}

    @cached_property
    def vehicle_id(self) -> re.Pattern[str]:
        return re.compile(self.vehicle_id_pattern)

    def chars(self, message: str, field: str) -> int:
        """The most characters `message.field` may hold."""
        return self.max_chars.get(f"{message}.{field}", self.default_max_chars)


class MessageLimits(_Section):
    """Serialized bytes of one Kafka value: `max_bytes` by topic, else `default_max_bytes`."""

    default_max_bytes: PositiveInt
    max_bytes: dict[str, PositiveInt] = {}

    def bytes_for(self, topic: str) -> int:
        return self.max_bytes.get(topic, self.default_max_bytes)


class Limits(_Section):
    """Every limit the codec applies (limits.yaml)."""

    time: TimeLimits
    motion: MotionLimits
    perception: PerceptionLimits
    trigger: TriggerLimits
    strings: StringLimits
    messages: MessageLimits


def load_limits(path: Path = LIMITS_PATH) -> Limits:
    """Read and check a limits file; raises pydantic.ValidationError on a missing, unknown or bad key."""
    return Limits.model_validate(yaml.safe_load(path.read_text()))


LIMITS = load_limits()
