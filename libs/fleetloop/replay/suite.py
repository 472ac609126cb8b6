"""The generated suite as a quality measure: search every known-answer scenario, judge it by its family.

A scenario's verdict (`ScenarioVerdict`):
- *solvable*: the generator claims a safe answer (`baseline_collides_safe_exists`) and the baseline
  does collide in this world model (the `collision` cost term is above 0);
- *solved*: solvable, and the solution is collision-free with a lower total cost than the baseline;
- *regression*: the solution fires a trigger the baseline does not (`SearchResult.triggers_added`);
- *hard braking*: the solution fires `hard_brake` or `phantom_stop` (one hard deceleration is one or
  the other, by whether an obstacle was in the path).

The suite is searched in the truth view (`generator.without_phantoms`): a phantom obstacle is what
perception reported and truth does not have, which is what the replay learns from the ground truth of
the same moment, so the answer for `phantom_obstacle` is not to brake. `suite_table` prints one row per
family and a total; the CLI (`fleetloop replay suite`), the bench and the suite test share it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.generator import COLLIDES_SAFE_EXISTS, FAMILIES, generate_suite, without_phantoms
from fleetloop.replay.scenario import ScenarioBatch
from fleetloop.replay.search import SearchResult, search
from fleetloop.report import table

HARD_BRAKING = ("hard_brake", "phantom_stop")


@dataclass(frozen=True)
class ScenarioVerdict:
    """One scenario of the suite judged (totals are the costs' total, lower better)."""

    scenario_id: str
    family: str
    answer: str
    baseline_collides: bool
    solvable: bool
    solved: bool
    solution_collides: bool
    baseline_total: float
    solution_total: float
    triggers_removed: dict[str, int]
    triggers_added: dict[str, int]
    hard_braking: bool
    candidates: int
    source: str

    @property
    def regression(self) -> bool:
        return bool(self.triggers_added)


@dataclass
class SuiteReport:
    """The verdicts of a suite run, with the search result, the seconds it took and the budget used."""

    verdicts: list[ScenarioVerdict]
    result: SearchResult
    seconds: float
    budget: dict[str, Any]

    @property
    def solvable(self) -> int:
        return sum(v.solvable for v in self.verdicts)

    @property
    def solved(self) -> int:
        return sum(v.solved for v in self.verdicts)

    @property
    def solved_fraction(self) -> float:
        """Solved / solvable (NaN without a solvable scenario)."""
        return self.solved / self.solvable if self.solvable else math.nan

    def family(self, name: str) -> list[ScenarioVerdict]:
        return [v for v in self.verdicts if v.family == name]


def judge(scen: ScenarioBatch, result: SearchResult) -> list[ScenarioVerdict]:
    """Each scenario's verdict from its search result (see the module docstring)."""
    base_collision = result.baseline_report.terms["collision"].value[:, 0]
    sol_collision = result.solution_report.terms["collision"].value[:, 0]
    base_total = result.baseline_report.total[:, 0]
    sol_total = result.solution_report.total[:, 0]
    out = []
    for i, m in enumerate(scen.meta):
        collides = bool(base_collision[i] > 0)
        solvable = m.answer == COLLIDES_SAFE_EXISTS and collides
        sol_collides = bool(sol_collision[i] > 0)
        added = result.triggers_added(i)
        out.append(ScenarioVerdict(
            scenario_id=m.scenario_id, family=m.family, answer=m.answer, baseline_collides=collides,
            solvable=solvable, solved=solvable and not sol_collides and bool(sol_total[i] < base_total[i]),
            solution_collides=sol_collides, baseline_total=float(base_total[i]), solution_total=float(sol_total[i]),
            triggers_removed=result.triggers_removed[i], triggers_added=added,
            hard_braking=any(result.triggers_solution[i].get(k, 0) > 0 for k in HARD_BRAKING),
            candidates=int(result.candidates[i]), source=result.source[i]))
    return out


def run_suite(n: int, seed: int, config: ReplayConfig, world: Any, policy: Any = None,
              device: torch.device | str = "cpu", search_seed: int = 0) -> SuiteReport:
    """Generate `n` scenarios (`generate_suite(n, seed)`), search them all in the truth view, judge them."""
    scen = without_phantoms(generate_suite(n, seed, config, device))
    start = time.perf_counter()
    result = search(scen, world, policy, config, seed=search_seed)
    seconds = time.perf_counter() - start
    p = config.section("search")
    budget = {"method": p["method"], "iterations": p["iterations"],
              "candidates_per_iteration": p["candidates_per_iteration"]}
    return SuiteReport(judge(scen, result), result, seconds, budget)


def suite_table(report: SuiteReport) -> str:
    """One row per family and a total: scenarios, baseline collisions, solvable, solved (and the
    fraction), solutions colliding, solutions firing a trigger the baseline does not (on the controls, a
    regression; elsewhere mostly a hard brake classified `phantom_stop` because it starts before the
    obstacle is within the trigger's lookahead), solutions braking hard, solutions free of a trigger the
    baseline fired, the median total cost of baseline and solution, and the candidates per scenario."""
    rows = []
    groups = [(f, report.family(f)) for f in FAMILIES if report.family(f)] + [("total", report.verdicts)]
    for name, vs in groups:
        solvable = sum(v.solvable for v in vs)
        solved = sum(v.solved for v in vs)
        rows.append([name, len(vs), sum(v.baseline_collides for v in vs), solvable, solved,
                     f"{100 * solved / solvable:.1f}" if solvable else "-",
                     sum(v.solution_collides for v in vs), sum(v.regression for v in vs),
                     sum(v.hard_braking for v in vs), sum(bool(v.triggers_removed) for v in vs),
                     f"{_median([v.baseline_total for v in vs]):.2f}", f"{_median([v.solution_total for v in vs]):.2f}",
                     f"{sum(v.candidates for v in vs) / len(vs):.0f}"])
    return table(["family", "n", "base collides", "solvable", "solved", "solved %", "sol collides", "adds triggers",
                  "sol brakes hard", "removes triggers", "base total p50", "sol total p50", "candidates"], rows)


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median()) if values else math.nan
