"""The case-assembler policy (`policy.yaml`): merge gap, cooldowns, tier rules, priority, budget,
lifecycle. `load_policy()` is the only function here that reads a file.

`PolicyFile` is the file's layout, validated by the one loader (`fleetloop.config`): a bad value is a
ConfigError naming policy.yaml and its key path. `Policy` is what the assembly logic reads, flattened
from it. A tier without `estimate_bytes_per_s` (raw) reserves the vehicle's declared raw volume,
`vehicle.yaml`'s `raw.bytes_per_minute` (the one place that figure is written).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fleetloop.config import ConfigModel, safe_load, validate
from fleetloop.v1 import triggers_pb2
from fleetloop.vehicle.params import VehicleParams, load_vehicle_params
from pydantic import Field, model_validator

DEFAULT_PATH = Path(__file__).with_name("policy.yaml")
CATEGORIES = {"MPS": triggers_pb2.TRIGGER_CATEGORY_MPS, "MPD": triggers_pb2.TRIGGER_CATEGORY_MPD,
              "MPI": triggers_pb2.TRIGGER_CATEGORY_MPI, "INFO": triggers_pb2.TRIGGER_CATEGORY_INFO}

CategoryName = Literal["MPS", "MPD", "MPI", "INFO"]
Seconds = Annotated[float, Field(ge=0)]
Weight = Annotated[float, Field(ge=0)]


@dataclass(frozen=True)
class TierSpec:
    name: str
    heavy: bool                 # waits for Wi-Fi or charging
    estimate_bytes_per_s: float


@dataclass(frozen=True)
class TierRule:
    triggers: frozenset[str]    # empty: any trigger
    categories: frozenset[int]  # empty: any category
    min_severity: float
    tier: str
    replay: bool

    def matches(self, trigger: triggers_pb2.TriggerEvent) -> bool:
        return ((not self.triggers or trigger.trigger in self.triggers)
                and (not self.categories or trigger.category in self.categories)
                and trigger.severity >= self.min_severity)


class CaseSection(ConfigModel):
    merge_gap_s: Seconds
    settle_s: Seconds
    default_pre_s: Seconds
    default_post_s: Seconds


class CooldownSection(ConfigModel):
    families: dict[str, tuple[str, ...]]
    seconds: dict[str, Seconds]

    @model_validator(mode="after")
    def _every_family_has_seconds(self) -> CooldownSection:
        if set(self.families) != set(self.seconds):
            raise ValueError(f"families and seconds must name the same families, got {sorted(self.families)} "
                             f"and {sorted(self.seconds)}")
        return self


class TierSection(ConfigModel):
    heavy: bool
    estimate_bytes_per_s: float | None = Field(None, gt=0)  # None: the vehicle's declared raw volume


class RuleWhen(ConfigModel):
    triggers: tuple[str, ...] = ()
    categories: tuple[CategoryName, ...] = ()
    min_severity: float = Field(0.0, ge=0, le=1)


class RuleSection(ConfigModel):
    when: RuleWhen = RuleWhen()
    tier: str
    replay: bool = False
    why: str  # the rationale travels with the rule


class PrioritySection(ConfigModel):
    severity_weight: Weight
    uncertainty_weight: Weight
    uncertainty_triggers: tuple[str, ...]
    category_bonus: dict[CategoryName, Weight]


class BudgetSection(ConfigModel):
    cellular_bytes_per_day: int = Field(gt=0)
    total_bytes_per_day: int = Field(gt=0)
    max_in_flight: int = Field(ge=1)


class LifecycleSection(ConfigModel):
    answer_timeout_s: float = Field(gt=0)
    max_attempts: int = Field(ge=1)
    pending_expire_s: float = Field(gt=0)
    offline_after_s: float = Field(gt=0)


class PolicyFile(ConfigModel):
    """policy.yaml as written: sections in the file's words, tiers in increasing size."""

    version: str
    case: CaseSection
    cooldown: CooldownSection
    tiers: dict[str, TierSection] = Field(min_length=1)
    rules: tuple[RuleSection, ...]
    priority: PrioritySection
    budget: BudgetSection
    lifecycle: LifecycleSection

    @model_validator(mode="after")
    def _rules_ask_for_known_tiers(self) -> PolicyFile:
        for rule in self.rules:
            if rule.tier not in self.tiers:
                raise ValueError(f"rule asks for unknown tier {rule.tier!r}")
        return self


@dataclass(frozen=True)
class Policy:
    """The parsed policy. Durations in seconds, sizes in bytes; `tiers` in increasing size."""

    version: str
    merge_gap_s: float
    settle_s: float
    default_pre_s: float
    default_post_s: float
    family_of: Mapping[str, str]
    cooldown_s: Mapping[str, float]
    tiers: tuple[TierSpec, ...]
    rules: tuple[TierRule, ...]
    severity_weight: float
    uncertainty_weight: float
    uncertainty_triggers: frozenset[str]
    category_bonus: Mapping[int, float]
    cellular_bytes_per_day: int
    total_bytes_per_day: int
    max_in_flight: int
    answer_timeout_s: float
    max_attempts: int
    pending_expire_s: float
    offline_after_s: float

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)

    def tier(self, name: str) -> TierSpec:
        for spec in self.tiers:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown tier {name!r}")

    @classmethod
    def from_file(cls, file: PolicyFile, vehicle: VehicleParams) -> Policy:
        """Flatten a validated policy file; tiers without an estimate reserve `vehicle`'s raw volume."""
        case, prio, budget, life = file.case, file.priority, file.budget, file.lifecycle
        return cls(
            version=file.version, merge_gap_s=case.merge_gap_s, settle_s=case.settle_s,
            default_pre_s=case.default_pre_s, default_post_s=case.default_post_s,
            family_of={trigger: family for family, members in file.cooldown.families.items() for trigger in members},
            cooldown_s=dict(file.cooldown.seconds),
            tiers=tuple(TierSpec(name, body.heavy, body.estimate_bytes_per_s or vehicle.raw_bytes_per_s)
                        for name, body in file.tiers.items()),
            rules=tuple(TierRule(frozenset(rule.when.triggers), frozenset(CATEGORIES[c] for c in rule.when.categories),
                                 rule.when.min_severity, rule.tier, rule.replay) for rule in file.rules),
            severity_weight=prio.severity_weight, uncertainty_weight=prio.uncertainty_weight,
            uncertainty_triggers=frozenset(prio.uncertainty_triggers),
            category_bonus={CATEGORIES[c]: v for c, v in prio.category_bonus.items()},
            cellular_bytes_per_day=budget.cellular_bytes_per_day, total_bytes_per_day=budget.total_bytes_per_day,
            max_in_flight=budget.max_in_flight, answer_timeout_s=life.answer_timeout_s, max_attempts=life.max_attempts,
            pending_expire_s=life.pending_expire_s, offline_after_s=life.offline_after_s,
        )


def load_policy(path: Path = DEFAULT_PATH, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                vehicle: VehicleParams | None = None) -> Policy:
    """Read the policy file; `overrides` replace keys inside its sections (e.g. {"budget": {...}});
    `vehicle` (default: the packaged vehicle.yaml) supplies the raw volume. Raises ConfigError."""
    raw = safe_load(path.read_text(encoding="utf-8"), source=str(path)) or {}
    for section, values in (overrides or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return Policy.from_file(validate(raw, PolicyFile, source=str(path)), vehicle or load_vehicle_params())
