"""Trigger configuration: the defaults in `triggers.yaml`, deep-merged with overrides.

`load_config()` is the only function here that reads a file; everything else takes the parsed
mapping, so services and tests pass configuration in.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).with_name("triggers.yaml")


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger's configuration: enabled, metric weight, case window (s), thresholds, and an
    optional category override (MPS / MPD / MPI / INFO) for triggers whose metric is a policy choice."""

    name: str
    enabled: bool
    weight: float
    window_pre_s: float
    window_post_s: float
    params: Mapping[str, Any]
    category: str | None = None


@dataclass(frozen=True)
class TriggerConfig:
    """The effective trigger configuration.

    `sections` holds the shared sections (runner, sanity, ego_path, hard_decel) as mappings;
    `triggers` the per-trigger specs in file order; `version` is the file's version plus a hash of
    the effective content, so any threshold change yields a new version.
    """

    version: str
    sections: Mapping[str, Mapping[str, Any]]
    triggers: Mapping[str, TriggerSpec]

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> TriggerConfig:
        """Validate a parsed configuration. Raises ValueError on a missing or malformed section."""
        for key in ("version", "runner", "sanity", "ego_path", "hard_decel", "triggers"):
            if key not in raw:
                raise ValueError(f"trigger config lacks section {key!r}")
        specs = {}
        for name, body in raw["triggers"].items():
            unknown = set(body) - {"enabled", "weight", "window_pre_s", "window_post_s", "params", "category"}
            if unknown:
                raise ValueError(f"trigger {name!r}: unknown keys {sorted(unknown)}")
            specs[name] = TriggerSpec(
                name=name,
                enabled=bool(body.get("enabled", True)),
                weight=float(body.get("weight", 1.0)),
                window_pre_s=float(body.get("window_pre_s", 10.0)),
                window_post_s=float(body.get("window_post_s", 5.0)),
                params=dict(body.get("params") or {}),
                category=body.get("category"),
            )
        digest = hashlib.sha1(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:8]
        sections = {k: dict(v) for k, v in raw.items() if k not in ("version", "triggers")}
        return cls(version=f"{raw['version']}+{digest}", sections=sections, triggers=specs)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections[name]


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` into a copy of `base` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> TriggerConfig:
    """Read the YAML at `path` (default: the packaged triggers.yaml) and apply `overrides`.

    Example: ``load_config(overrides={"triggers": {"weaving": {"enabled": False}}})``.
    """
    raw = yaml.safe_load((path or DEFAULT_PATH).read_text())
    return TriggerConfig.from_mapping(merge(raw, overrides or {}))
