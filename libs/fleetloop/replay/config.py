"""Replay configuration: the defaults in `replay.yaml`, deep-merged with overrides.

`load_config()` is the only function here that reads a file; everything else takes the parsed
`ReplayConfig`, so services and tests pass configuration in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from fleetloop.triggers.config import merge

DEFAULT_PATH = Path(__file__).with_name("replay.yaml")
SECTIONS = ("version", "device", "scenario", "dynamics", "agents", "costs", "aggregate", "search", "pareto",
            "robustness", "codec", "policies")


@dataclass(frozen=True)
class ReplayConfig:
    """The effective replay configuration: one mapping per section of `replay.yaml`; `version` is the
    file's version plus a hash of the effective content."""

    version: str
    sections: Mapping[str, Any]

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ReplayConfig:
        """Validate a parsed configuration. Raises ValueError on a missing or unknown section."""
        missing = [k for k in SECTIONS if k not in raw]
        unknown = sorted(set(raw) - set(SECTIONS))
        if missing or unknown:
            raise ValueError(f"replay config: missing sections {missing}, unknown sections {unknown}")
        digest = hashlib.sha1(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return cls(version=f"{raw['version']}+{digest}", sections=dict(raw))

    def section(self, name: str) -> Any:
        return self.sections[name]

    def section_fields(self, name: str, names: Iterable[str]) -> dict[str, Any]:
        """A copy of section `name` whose keys are exactly `names` (a settings dataclass's fields);
        ValueError naming the missing and unknown keys otherwise."""
        raw, names = dict(self.sections[name]), set(names)
        missing, unknown = sorted(names - set(raw)), sorted(set(raw) - names)
        if missing or unknown:
            raise ValueError(f"replay config {name}: missing keys {missing}, unknown keys {unknown}")
        return raw


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> ReplayConfig:
    """Read the YAML at `path` (default: the packaged replay.yaml) and apply `overrides`.

    Example: ``load_config(overrides={"search": {"method": "mppi"}})``.
    """
    raw = yaml.safe_load((path or DEFAULT_PATH).read_text())
    return ReplayConfig.from_mapping(merge(raw, overrides or {}))


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; any other value is passed to torch (`cpu`, `cuda:1`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
