"""The case-assembler policy (`policy.yaml`): merge gap, cooldowns, tier rules, priority, budget,
lifecycle. `load_policy()` is the only function here that reads a file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fleetloop.v1 import triggers_pb2

DEFAULT_PATH = Path(__file__).with_name("policy.yaml")
CATEGORIES = {"MPS": triggers_pb2.TRIGGER_CATEGORY_MPS, "MPD": triggers_pb2.TRIGGER_CATEGORY_MPD,
              "MPI": triggers_pb2.TRIGGER_CATEGORY_MPI, "INFO": triggers_pb2.TRIGGER_CATEGORY_INFO}


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
    def from_mapping(cls, raw: Mapping[str, Any]) -> Policy:
        """Validate a parsed policy; raises ValueError on unknown tiers or categories."""
        tiers = tuple(TierSpec(name, bool(body["heavy"]), float(body["estimate_bytes_per_s"]))
                      for name, body in raw["tiers"].items())
        names = {t.name for t in tiers}
        rules = []
        for body in raw["rules"]:
            when = body.get("when", {})
            if body["tier"] not in names:
                raise ValueError(f"rule asks for unknown tier {body['tier']!r}")
            unknown = set(when.get("categories", [])) - set(CATEGORIES)
            if unknown:
                raise ValueError(f"rule names unknown categories {sorted(unknown)}")
            rules.append(TierRule(frozenset(when.get("triggers", [])),
                                  frozenset(CATEGORIES[c] for c in when.get("categories", [])),
                                  float(when.get("min_severity", 0.0)), body["tier"], bool(body.get("replay", False))))
        families = raw["cooldown"]["families"]
        case, prio, budget, life = raw["case"], raw["priority"], raw["budget"], raw["lifecycle"]
        return cls(
            version=str(raw["version"]), merge_gap_s=float(case["merge_gap_s"]), settle_s=float(case["settle_s"]),
            default_pre_s=float(case["default_pre_s"]), default_post_s=float(case["default_post_s"]),
            family_of={trigger: family for family, members in families.items() for trigger in members},
            cooldown_s={family: float(s) for family, s in raw["cooldown"]["seconds"].items()},
            tiers=tiers, rules=tuple(rules),
            severity_weight=float(prio["severity_weight"]), uncertainty_weight=float(prio["uncertainty_weight"]),
            uncertainty_triggers=frozenset(prio["uncertainty_triggers"]),
            category_bonus={CATEGORIES[c]: float(v) for c, v in prio["category_bonus"].items()},
            cellular_bytes_per_day=int(budget["cellular_bytes_per_day"]),
            total_bytes_per_day=int(budget["total_bytes_per_day"]), max_in_flight=int(budget["max_in_flight"]),
            answer_timeout_s=float(life["answer_timeout_s"]), max_attempts=int(life["max_attempts"]),
            pending_expire_s=float(life["pending_expire_s"]), offline_after_s=float(life["offline_after_s"]),
        )


def load_policy(path: Path = DEFAULT_PATH, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Policy:
    """Read the policy file; `overrides` replace keys inside its sections (e.g. {"budget": {...}})."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    for section, values in (overrides or {}).items():
        raw[section] = {**raw[section], **values}
    return Policy.from_mapping(raw)
