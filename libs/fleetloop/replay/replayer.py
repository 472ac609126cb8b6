"""One replay set-up and the one path from scenarios to solutions, shared by `fleetloop replay scenario`
and the replay-validator service: configuration (replay.yaml plus search overrides), device, world model
and the policy seeding the search; `solve` searches a batch of scenarios together and re-validates the
solutions under perturbations; `pair` builds the ScenarioSolutionPair of one of them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fleetloop.replay.config import ReplayConfig, load_config, resolve_device
from fleetloop.replay.policies import Policy, get_policy
from fleetloop.replay.robustness import RobustnessResult, revalidate
from fleetloop.replay.scenario import ScenarioBatch
from fleetloop.replay.search import SearchResult, search, solution_pair
from fleetloop.replay.world import WorldModel

SEARCH_BUDGET_KEYS = ("method", "iterations", "candidates_per_iteration")


def search_version(config: ReplayConfig) -> str:
    """`search+<hash>` of the effective `search:` section: the pair's `search_config_version`."""
    digest = hashlib.sha1(json.dumps(dict(config.section("search")), sort_keys=True).encode()).hexdigest()
    return f"search+{digest[:8]}"


@dataclass
class Solved:
    """A searched batch: the search result, the robustness verdict (None when not re-validated), and the
    seconds the search (`seconds`) and the re-validation (`robust_seconds`) took."""

    result: SearchResult
    verdict: RobustnessResult | None
    seconds: float
    robust_seconds: float = 0.0


class Replayer:
    """The configuration, device, world model and policy of one replay set-up."""

    def __init__(self, config: ReplayConfig, device: torch.device, policy_spec: str,
                 checkpoints: Path | None) -> None:
        self.config = config
        self.device = device
        self.world = WorldModel(config)
        self.policy_spec = policy_spec
        self.policy: Policy = get_policy(policy_spec, config, checkpoints)

    @classmethod
    def build(cls, *, policy: str, checkpoints: Path | None = None, config_path: Path | None = None,
              search: Mapping[str, Any] | None = None, device: str | None = None) -> Replayer:
        """replay.yaml (or `config_path`) with `search` merged into its `search:` section; `device` None
        means the file's (`auto`: CUDA when present). Raises PolicyError for an unknown policy, ConfigError
        or ValueError for a bad configuration."""
        budget = {k: v for k, v in (search or {}).items() if v is not None}
        config = load_config(config_path, overrides={"search": budget} if budget else None)
        return cls(config, resolve_device(device or config.section("device")), policy, checkpoints)

    @property
    def search_version(self) -> str:
        return search_version(self.config)

    def solve(self, scen: ScenarioBatch, seed: int = 0, robust: bool = True) -> Solved:
        """Search every scenario of `scen` together and, with `robust`, re-validate each solution under
        perturbations. Raises ScenarioError for a scenario that cannot be replayed."""
        start = time.perf_counter()
        result = search(scen, self.world, self.policy, self.config, seed=seed)
        searched = time.perf_counter()
        verdict = revalidate(scen, self.world, result.solution_actions, self.config, seed=seed,
                             baseline_actions=result.baseline.ego_actions[:, 0]) if robust else None
        return Solved(result, verdict, searched - start, time.perf_counter() - searched)

    def pair(self, scen: ScenarioBatch, solved: Solved, index: int, created_ms: int) -> Any:
        """The ScenarioSolutionPair of scenario `index`; `created_ms` is the caller's clock (epoch ms)."""
        return solution_pair(scen, solved.result, index, self.config, self.policy_spec, solved.verdict,
                             created_ms=created_ms)
