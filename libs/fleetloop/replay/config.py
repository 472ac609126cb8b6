"""Replay configuration: the defaults in `replay.yaml`, deep-merged with overrides.

`load_config()` is the only function here that reads a file; everything else takes the parsed
`ReplayConfig`, so services and tests pass configuration in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from fleetloop.config import ConfigError, VersionedConfig, safe_load
from fleetloop.triggers.config import merge

DEFAULT_PATH = Path(__file__).with_name("replay.yaml")

Section = dict[str, Any]


class ReplayConfig(VersionedConfig):
    """The effective replay configuration: one mapping per section of `replay.yaml` (each module of the
    replay reads and checks its own section); `version` is the file's version plus a hash of the
    effective content. A missing or unknown section is a ConfigError naming the file."""

    version: str
    device: str
    scenario: Section
    dynamics: Section
    agents: Section
    costs: Section
    aggregate: Section
    search: Section
    pareto: Section
    robustness: Section
    codec: Section
    policies: Section
    DEFAULT_SOURCE = "replay config"

    def section(self, name: str) -> Any:
        return getattr(self, name)

    def section_fields(self, name: str, names: Iterable[str]) -> dict[str, Any]:
        """A copy of section `name` whose keys are exactly `names` (a settings dataclass's fields);
        ConfigError naming the missing and unknown keys otherwise."""
        raw, names = dict(self.section(name)), set(names)
        missing, unknown = sorted(names - set(raw)), sorted(set(raw) - names)
        if missing or unknown:
            raise ConfigError(f"{self.source}: {name}: missing keys {missing}, unknown keys {unknown}")
        return raw


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> ReplayConfig:
    """Read the YAML at `path` (default: the packaged replay.yaml) and apply `overrides`.

    Example: ``load_config(overrides={"search": {"method": "mppi"}})``.
    """
    path = path or DEFAULT_PATH
    raw = safe_load(path.read_text(encoding="utf-8"), source=str(path))
    return ReplayConfig.from_mapping(merge(raw or {}, overrides or {}), source=str(path))


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; any other value is passed to torch (`cpu`, `cuda:1`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
