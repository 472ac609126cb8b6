"""Monitor thresholds: typed, validated, loaded from `monitors.yaml` (rationale lives there).

`MonitorConfig.from_mapping` is pure; `load_monitor_config` is the one I/O edge that reads the
YAML shipped with the package (or a file the caller names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetloop.v1 import alerts_pb2

DEFAULT_CONFIG_PATH = Path(__file__).with_name("monitors.yaml")

_SEVERITIES = {
    "INFO": alerts_pb2.ALERT_SEVERITY_INFO,
    "WARNING": alerts_pb2.ALERT_SEVERITY_WARNING,
    "CRITICAL": alerts_pb2.ALERT_SEVERITY_CRITICAL,
}


class MonitorConfigError(ValueError):
    """The monitor configuration is missing a value or holds an impossible one."""


@dataclass(frozen=True)
class ClockConfig:
    """Watermark settings. Milliseconds."""

    allowed_lateness_ms: int
    max_future_skew_ms: int


@dataclass(frozen=True)
class OfflineConfig:
    """OFFLINE after `missed_heartbeats` expected periods without a heartbeat."""

    missed_heartbeats: int
    default_rate_hz: float
    suppress_when_parked: bool

    def timeout_ms(self, rate_hz: float) -> int:
        """Silence (ms) after which a vehicle heartbeating at `rate_hz` is offline."""
        if not rate_hz > 0:
            raise MonitorConfigError(f"heartbeat rate must be > 0 Hz, got {rate_hz}")
        return round(self.missed_heartbeats * 1000.0 / rate_hz)


@dataclass(frozen=True)
class StopLevel:
    """One escalation step of a stop episode: reached after `after_ms` stopped."""

    after_ms: int
    severity: int  # alerts_pb2.AlertSeverity


@dataclass(frozen=True)
class StopConfig:
    """Stop-and-not-go: task RUNNING, speed < `speed_max_mps`, within `radius_m` of the stop point."""

    speed_max_mps: float
    radius_m: float
    levels: tuple[StopLevel, ...]


@dataclass(frozen=True)
class ParkStallConfig:
    """Park-level stall: enough vehicles of one park stalled with starts inside one window."""

    vehicle_stall_ms: int
    window_ms: int
    min_vehicles: int
    min_fraction: float
    min_vehicles_floor: int
    resolve_below: int
    stale_after_ms: int


@dataclass(frozen=True)
class ErrorBurstConfig:
    """Error burst: one code's count in a window over both a floor and a multiple of its baseline."""

    window_ms: int
    min_events: int
    baseline_factor: float
    baseline_tau_ms: int
    min_history_ms: int
    resolve_fraction: float


@dataclass(frozen=True)
class MonitorConfig:
    """Every threshold the fleet monitors use."""

    clock: ClockConfig
    offline: OfflineConfig
    stop: StopConfig
    park_stall: ParkStallConfig
    error_burst: ErrorBurstConfig

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> MonitorConfig:
        """Build and validate from the parsed YAML structure; raises MonitorConfigError."""
        clock = _section(raw, "clock")
        offline = _section(raw, "offline")
        stop = _section(raw, "stop_not_go")
        park = _section(raw, "park_stall")
        burst = _section(raw, "error_burst")
        levels = []
        for i, level in enumerate(stop.get("levels") or []):
            severity = str(level.get("severity", "")).upper()
            if severity not in _SEVERITIES:
                raise MonitorConfigError(f"stop_not_go.levels[{i}].severity must be one of {sorted(_SEVERITIES)}")
            levels.append(StopLevel(after_ms=_ms(level, "after_s", f"stop_not_go.levels[{i}]"),
                                    severity=_SEVERITIES[severity]))
        if not levels or any(b.after_ms <= a.after_ms for a, b in zip(levels, levels[1:], strict=False)):
            raise MonitorConfigError("stop_not_go.levels must be non-empty with strictly increasing after_s")
        config = cls(
            clock=ClockConfig(
                allowed_lateness_ms=_ms(clock, "allowed_lateness_s", "clock"),
                max_future_skew_ms=_ms(clock, "max_future_skew_s", "clock"),
            ),
            offline=OfflineConfig(
                missed_heartbeats=int(_num(offline, "missed_heartbeats", "offline")),
                default_rate_hz=_num(offline, "default_rate_hz", "offline"),
                suppress_when_parked=bool(offline.get("suppress_when_parked", True)),
            ),
            stop=StopConfig(
                speed_max_mps=_num(stop, "speed_max_mps", "stop_not_go"),
                radius_m=_num(stop, "radius_m", "stop_not_go"),
                levels=tuple(levels),
            ),
            park_stall=ParkStallConfig(
                vehicle_stall_ms=_ms(park, "vehicle_stall_s", "park_stall"),
                window_ms=_ms(park, "window_s", "park_stall"),
                min_vehicles=int(_num(park, "min_vehicles", "park_stall")),
                min_fraction=_num(park, "min_fraction", "park_stall"),
                min_vehicles_floor=int(_num(park, "min_vehicles_floor", "park_stall")),
                resolve_below=int(_num(park, "resolve_below", "park_stall")),
                stale_after_ms=_ms(park, "stale_after_s", "park_stall"),
            ),
            error_burst=ErrorBurstConfig(
                window_ms=_ms(burst, "window_s", "error_burst"),
                min_events=int(_num(burst, "min_events", "error_burst")),
                baseline_factor=_num(burst, "baseline_factor", "error_burst"),
                baseline_tau_ms=_ms(burst, "baseline_tau_s", "error_burst"),
                min_history_ms=_ms(burst, "min_history_s", "error_burst"),
                resolve_fraction=_num(burst, "resolve_fraction", "error_burst"),
            ),
        )
        _validate(config)
        return config


def load_monitor_config(path: Path | None = None) -> MonitorConfig:
    """Read and validate a monitors YAML file (default: the one shipped beside this module)."""
    with open(path or DEFAULT_CONFIG_PATH, encoding="utf-8") as f:
        return MonitorConfig.from_mapping(yaml.safe_load(f))


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = raw.get(name)
    if not isinstance(section, Mapping):
        raise MonitorConfigError(f"monitor config needs a '{name}' section")
    return section


def _num(section: Mapping[str, Any], key: str, where: str) -> float:
    if key not in section:
        raise MonitorConfigError(f"{where}.{key} is missing")
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise MonitorConfigError(f"{where}.{key} must be a non-negative number, got {value!r}")
    return float(value)


def _ms(section: Mapping[str, Any], key: str, where: str) -> int:
    return round(_num(section, key, where) * 1000.0)


def _validate(c: MonitorConfig) -> None:
    checks = [
        (c.offline.missed_heartbeats >= 1, "offline.missed_heartbeats must be >= 1"),
        (c.offline.default_rate_hz > 0, "offline.default_rate_hz must be > 0"),
        (c.stop.speed_max_mps > 0 and c.stop.radius_m > 0, "stop_not_go speed_max_mps and radius_m must be > 0"),
        (c.park_stall.min_vehicles >= c.park_stall.min_vehicles_floor >= 2,
         "park_stall needs min_vehicles >= min_vehicles_floor >= 2"),
        (0 < c.park_stall.min_fraction <= 1, "park_stall.min_fraction must be in (0, 1]"),
        (1 <= c.park_stall.resolve_below <= c.park_stall.min_vehicles_floor,
         "park_stall.resolve_below must be in [1, min_vehicles_floor]"),
        (c.park_stall.window_ms > 0 and c.park_stall.stale_after_ms > 0, "park_stall windows must be > 0"),
        (c.error_burst.window_ms > 0 and c.error_burst.baseline_tau_ms > 0 and c.error_burst.min_history_ms > 0,
         "error_burst window_s, baseline_tau_s and min_history_s must be > 0"),
        (c.error_burst.min_events >= 2, "error_burst.min_events must be >= 2"),
        (c.error_burst.baseline_factor >= 1, "error_burst.baseline_factor must be >= 1"),
        (0 < c.error_burst.resolve_fraction <= 1, "error_burst.resolve_fraction must be in (0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise MonitorConfigError(message)
