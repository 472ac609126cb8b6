"""What a replay request asks for, resolved: its policy, its effective search budget and so its solution
id (`Plan`), shared by the consumer and ReplayService; and the replay set-ups (`Replayer`s) per policy and
budget, built once. Configuration: services/replay_validator/validator.yaml (`ValidatorConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fleetloop.config import ConfigModel, load_yaml
from fleetloop.replay.config import ReplayConfig, load_config, resolve_device
from fleetloop.replay.policies import list_policies
from fleetloop.replay.replayer import Replayer, search_version
from fleetloop.replay.requests import search_overrides, solution_id
from fleetloop.v1 import replay_service_pb2
from pydantic import Field

CONFIG = Path(__file__).with_name("validator.yaml")


class MapConfig(ConfigModel):
    source: Literal["sim", "none"]
    sim_seed: int = 7
    sim_vehicles: int = Field(50, ge=1)
    sim_duration_s: int = Field(3600, ge=1)


class ValidatorConfig(ConfigModel):
    """services/replay_validator/validator.yaml (the reasons for each value are there)."""

    version: str
    default_policy: str
    default_search_config: str
    search_configs: dict[str, dict[str, Any]]
    max_iterations: int = Field(ge=0)
    max_candidates_per_iteration: int = Field(ge=1)
    batch_requests: int = Field(ge=1)
    batch_scenarios: int = Field(ge=1)
    robust: bool
    min_win_rate: float = Field(ge=0, le=1)
    seed: int = Field(ge=0)
    torch_threads: int = Field(ge=0)
    checkpoints_dir: Path
    pair_prefix: str
    map: MapConfig


def load_validator_config(path: Path | None = None) -> ValidatorConfig:
    """validator.yaml at `path`, default the packaged one (`CONFIG`, read when called)."""
    return load_yaml(path or CONFIG, ValidatorConfig)


class Unplannable(ValueError):
    """A request the validator cannot serve: `reason` (unknown_policy, unknown_search_config, bad_overrides)
    and `field` (the request field at fault) say why."""

    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.reason, self.field, self.detail = reason, field, detail


@dataclass(frozen=True)
class Plan:
    """One request resolved: `budget` is the `search:` patch (named configuration, then overrides)."""

    case_id: str
    policy: str
    search_config: str
    budget: tuple[tuple[str, Any], ...]
    search_config_version: str
    solution_id: str

    @property
    def setup_key(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """Requests with the same key share one Replayer and are searched together."""
        return self.policy, self.budget


class Planner:
    """Resolves requests against the configuration; caches the effective replay configurations and the
    Replayers (one per policy x budget)."""

    def __init__(self, config: ValidatorConfig, replay_config_path: Path | None = None) -> None:
        self.config = config
        self.replay_config_path = replay_config_path
        self._configs: dict[tuple, ReplayConfig] = {}
        self._replayers: dict[tuple, Replayer] = {}

    def policies(self) -> list[str]:
        return list_policies(self.config.checkpoints_dir)

    def plan(self, case_id: str, policy: str, search_config: str,
             overrides: replay_service_pb2.SearchOverrides | None) -> Plan:
        """Raises Unplannable naming the field."""
        policy = policy or self.config.default_policy
        if policy not in self.policies():
            raise Unplannable("unknown_policy", "policy",
                              f"unknown policy {policy[:80]!r}; known: {', '.join(self.policies())}")
        name = search_config or self.config.default_search_config
        if name not in self.config.search_configs:
            raise Unplannable("unknown_search_config", "search_config",
                              f"unknown search configuration {name[:80]!r}; known: "
                              f"{', '.join(sorted(self.config.search_configs))}")
        patch = dict(self.config.search_configs[name])
        asked = search_overrides(overrides) if overrides is not None else {}
        for field, least, most in (("iterations", 0, self.config.max_iterations),
                                   ("candidates_per_iteration", 1, self.config.max_candidates_per_iteration)):
            if field in asked and not least <= asked[field] <= most:
                raise Unplannable("bad_overrides", f"overrides.{field}", f"{asked[field]} is outside {least}..{most}")
        if asked.get("method", "cem") not in ("cem", "mppi"):
            raise Unplannable("bad_overrides", "overrides.method", f"{asked['method'][:40]!r} is neither cem nor mppi")
        patch.update(asked)
        budget = tuple(sorted(patch.items()))
        version = search_version(self.replay_config(budget))
        return Plan(case_id, policy, name, budget, version, solution_id(case_id, policy, version))

    def replay_config(self, budget: tuple[tuple[str, Any], ...]) -> ReplayConfig:
        if budget not in self._configs:
            self._configs[budget] = load_config(self.replay_config_path,
                                                overrides={"search": dict(budget)} if budget else None)
        return self._configs[budget]

    def replayer(self, plan: Plan) -> Replayer:
        """The set-up of `plan` (built on first use). Raises PolicyError for a policy that cannot be loaded."""
        key = plan.setup_key
        if key not in self._replayers:
            config = self.replay_config(plan.budget)
            self._replayers[key] = Replayer(config, resolve_device(config.section("device")), plan.policy,
                                            self.config.checkpoints_dir)
        return self._replayers[key]
