"""Monitor thresholds: typed, validated models of `monitors.yaml` (rationale lives there).

The file states durations in seconds; the monitors compare event times in milliseconds, so each
model offers its durations as `*_ms` too. `load_monitor_config` is the one I/O edge: it reads the
YAML shipped with the package (or a file the caller names) through `fleetloop.config.load_yaml`;
a missing or impossible value is a `ConfigError` naming the file and key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from fleetloop.config import ConfigError, ConfigModel, load_yaml, validate
from fleetloop.v1 import alerts_pb2

DEFAULT_CONFIG_PATH = Path(__file__).with_name("monitors.yaml")

_SEVERITIES = {
    "INFO": alerts_pb2.ALERT_SEVERITY_INFO,
    "WARNING": alerts_pb2.ALERT_SEVERITY_WARNING,
    "CRITICAL": alerts_pb2.ALERT_SEVERITY_CRITICAL,
}

Seconds = Annotated[float, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


def _ms(seconds: float) -> int:
    return round(seconds * 1000.0)


class ClockConfig(ConfigModel):
    """Watermark settings (seconds in the file)."""

    allowed_lateness_s: Seconds
    max_future_skew_s: Seconds

    @property
    def allowed_lateness_ms(self) -> int:
        return _ms(self.allowed_lateness_s)

    @property
    def max_future_skew_ms(self) -> int:
        return _ms(self.max_future_skew_s)


class OfflineConfig(ConfigModel):
    """OFFLINE after `missed_heartbeats` expected periods without a heartbeat."""

    missed_heartbeats: int = Field(ge=1)
    default_rate_hz: float = Field(gt=0)
    suppress_when_parked: bool = True

    def timeout_ms(self, rate_hz: float) -> int:
        """Silence (ms) after which a vehicle heartbeating at `rate_hz` is offline."""
        if not rate_hz > 0:
            raise ConfigError(f"heartbeat rate must be > 0 Hz, got {rate_hz}")
        return round(self.missed_heartbeats * 1000.0 / rate_hz)


class StopLevel(ConfigModel):
    """One escalation step of a stop episode: reached after `after_s` stopped; `severity` is the
    alert severity (alerts_pb2.AlertSeverity), written in the file as INFO / WARNING / CRITICAL."""

    after_s: Seconds
    severity: int

    @field_validator("severity", mode="before")
    @classmethod
    def _severity_by_name(cls, name: Any) -> int:
        key = str(name).upper()
        if key not in _SEVERITIES:
            raise ValueError(f"must be one of {sorted(_SEVERITIES)}")
        return _SEVERITIES[key]

    @property
    def after_ms(self) -> int:
        return _ms(self.after_s)


class StopConfig(ConfigModel):
    """Stop-and-not-go: task RUNNING, speed < `speed_max_mps`, within `radius_m` of the stop point."""

    speed_max_mps: float = Field(gt=0)
    radius_m: float = Field(gt=0)
    levels: tuple[StopLevel, ...]

    @model_validator(mode="after")
    def _levels_increase(self) -> StopConfig:
        steps = [level.after_s for level in self.levels]
        if not steps or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError("levels must be non-empty with strictly increasing after_s")
        return self


class ParkStallConfig(ConfigModel):
    """Park-level stall: enough vehicles of one park stalled with starts inside one window."""

    vehicle_stall_s: Seconds
    window_s: PositiveSeconds
    min_vehicles: int
    min_fraction: Fraction
    min_vehicles_floor: int = Field(ge=2)
    resolve_below: int = Field(ge=1)
    stale_after_s: PositiveSeconds

    @model_validator(mode="after")
    def _counts_ordered(self) -> ParkStallConfig:
        if self.min_vehicles < self.min_vehicles_floor:
            raise ValueError("needs min_vehicles >= min_vehicles_floor")
        if self.resolve_below > self.min_vehicles_floor:
            raise ValueError("resolve_below must be in [1, min_vehicles_floor]")
        return self

    @property
    def vehicle_stall_ms(self) -> int:
        return _ms(self.vehicle_stall_s)

    @property
    def window_ms(self) -> int:
        return _ms(self.window_s)

    @property
    def stale_after_ms(self) -> int:
        return _ms(self.stale_after_s)


class ErrorBurstConfig(ConfigModel):
    """Error burst: one code's count in a window over both a floor and a multiple of its baseline."""

    window_s: PositiveSeconds
    min_events: int = Field(ge=2)
    baseline_factor: float = Field(ge=1)
    baseline_tau_s: PositiveSeconds
    min_history_s: PositiveSeconds
    resolve_fraction: Fraction

    @property
    def window_ms(self) -> int:
        return _ms(self.window_s)

    @property
    def baseline_tau_ms(self) -> int:
        return _ms(self.baseline_tau_s)

    @property
    def min_history_ms(self) -> int:
        return _ms(self.min_history_s)


class MonitorConfig(ConfigModel):
    """Every threshold the fleet monitors use (`stop` is the file's `stop_not_go` section)."""

    clock: ClockConfig
    offline: OfflineConfig
    stop: StopConfig = Field(alias="stop_not_go")
    park_stall: ParkStallConfig
    error_burst: ErrorBurstConfig

    @classmethod
    def from_mapping(cls, raw: Any, *, source: str = "monitor config") -> MonitorConfig:
        """Validate the parsed YAML structure; raises ConfigError naming `source` and the key path."""
        return validate(raw, cls, source=source)


def load_monitor_config(path: Path | None = None) -> MonitorConfig:
    """Read and validate a monitors YAML file (default: the one shipped beside this module)."""
    return load_yaml(path or DEFAULT_CONFIG_PATH, MonitorConfig)
