"""Trigger configuration: the defaults in `triggers.yaml`, deep-merged with overrides, as typed models.

`load_config()` is the only function here that reads a file; everything else takes the parsed
configuration, so services and tests pass it in. The shared sections (runner, sanity, ego_path,
criticality, hard_decel) are typed here; each trigger class declares its own `Params` model, checked against its
`params` mapping when the trigger is built (`fleetloop.triggers.base.Trigger`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from fleetloop.codec.limits import LIMITS, Limits
from fleetloop.config import ConfigError, ConfigModel, VersionedConfig, safe_load

DEFAULT_PATH = Path(__file__).with_name("triggers.yaml")

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=1)]


class EpisodeGaps(ConfigModel):
    """How samples chain into one episode (`fleetloop.triggers.episodes`): active samples at most
    `merge_gap_s` apart merge; a data gap longer than `bridge_gap_s` ends the episode (seconds)."""

    merge_gap_s: NonNegative
    bridge_gap_s: NonNegative


class RunnerParams(ConfigModel):
    """Seconds of event time the runner waits for one vehicle's late messages."""

    allowed_lateness_s: NonNegative


class SanityLimits(ConfigModel):
    """Bounds beyond which a pose sample is masked before any trigger sees it (SI units); the maxima of
    speed, acceleration and step speed are limits.yaml's `motion` bounds (`load_config` adds them)."""

    max_speed_mps: Positive
    min_speed_mps: Annotated[float, Field(le=0)]
    max_abs_accel_mps2: Positive
    max_abs_yaw_rate_rps: Positive
    max_step_speed_mps: Positive


class EgoPath(ConfigModel):
    """The corridor ahead of the ego that hard_brake / phantom_stop / near_miss look into (m)."""

    half_width_m: Positive
    lookahead_m: Positive


class CriticalityParams(ConfigModel):
    """The shared criticality settings (`fleetloop.triggers.criticality`): TTC horizon (s), the ego box
    used when a summary does not carry it (m), the lateral margin of "in the path" (m), the lookahead
    time (s, × speed, floored by `ego_path.lookahead_m`) and the least speed for a headway (m/s)."""

    horizon_s: Positive
    ego_length_m: Positive
    ego_width_m: Positive
    path_margin_m: NonNegative
    lookahead_s: Positive
    min_headway_speed_mps: NonNegative


class HardDecelParams(EpisodeGaps):
    """One hard-deceleration episode: deceleration ≥ `decel_mps2` (m/s²) for ≥ `min_duration_s`;
    severity reaches 1 at `severe_decel_mps2`."""

    decel_mps2: Positive
    min_duration_s: NonNegative
    severe_decel_mps2: Positive

    @model_validator(mode="after")
    def _severe_beyond_threshold(self) -> HardDecelParams:
        if self.severe_decel_mps2 <= self.decel_mps2:
            raise ValueError("severe_decel_mps2 must exceed decel_mps2 (severity scales between them)")
        return self


class TriggerSpec(ConfigModel):
    """One trigger's configuration: enabled, metric weight, case window (s), its `params` (checked by
    the trigger class's own model), and an optional category override (MPS / MPD / MPI / INFO) for
    triggers whose metric is a policy choice."""

    enabled: bool = True
    weight: NonNegative = 1.0
    window_pre_s: NonNegative = 10.0
    window_post_s: NonNegative = 5.0
    params: dict[str, Any] = Field(default_factory=dict)
    category: Literal["MPS", "MPD", "MPI", "INFO"] | None = None


class TriggerConfig(VersionedConfig):
    """The effective trigger configuration.

    `triggers` holds the per-trigger specs in file order; `version` is the file's version plus a hash
    of the effective content, so any threshold change yields a new version. `source` names where it
    came from in error messages.
    """

    version: str
    runner: RunnerParams
    sanity: SanityLimits
    ego_path: EgoPath
    criticality: CriticalityParams
    hard_decel: HardDecelParams
    triggers: dict[str, TriggerSpec]
    DEFAULT_SOURCE = "trigger config"

    def section(self, name: str) -> dict[str, Any]:
        """A shared section as a plain mapping (for callers outside the triggers, e.g. the replay's frames)."""
        return getattr(self, name).model_dump()


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` into a copy of `base` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None,
                limits: Limits = LIMITS) -> TriggerConfig:
    """Read the YAML at `path` (default: the packaged triggers.yaml), add the plausibility bounds of
    `limits` (limits.yaml) to its `sanity` section, and apply `overrides`.

    Example: ``load_config(overrides={"triggers": {"weaving": {"enabled": False}}})``.
    Raises ConfigError naming the file and key path of a bad value, or of a bound limits.yaml states.
    """
    path = path or DEFAULT_PATH
    raw = safe_load(path.read_text(encoding="utf-8"), source=str(path)) or {}
    shared = motion_bounds(limits)
    restated = sorted(set(shared) & set(raw.get("sanity") or {}))
    if restated:
        raise ConfigError(f"{path}: sanity.{restated[0]}: stated in limits.yaml (motion), not here")
    raw = merge(raw, {"sanity": shared})
    return TriggerConfig.from_mapping(merge(raw, overrides or {}), source=str(path))


def motion_bounds(limits: Limits) -> dict[str, float]:
    """The sanity bounds the triggers share with the codec, from limits.yaml's `motion` section."""
    return {"max_speed_mps": limits.motion.max_speed_mps, "max_abs_accel_mps2": limits.motion.max_accel_mps2,
            "max_step_speed_mps": limits.motion.max_step_speed_mps}
