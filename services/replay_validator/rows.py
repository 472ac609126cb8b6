"""Solutions as messages and rows (pure): the verdict rule, the Solution of one searched scenario, and its
replay_solutions row."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fleetloop.v1 import replay_service_pb2
from google.protobuf import json_format

from services.replay_validator.plans import Plan

Verdict = replay_service_pb2.SolutionVerdict
SOLUTION_COLUMNS = ("solution_id", "case_id", "vehicle_id", "request_id", "policy", "search_config",
                    "search_config_version", "verdict", "source", "baseline_terms", "solution_terms",
                    "baseline_total", "solution_total", "baseline_score", "solution_score", "triggers_removed",
                    "win_rate", "pair_uri", "pair_size_bytes", "device", "requested", "solution_json")
VERDICT_NAMES = {v: replay_service_pb2.SolutionVerdict.Name(v).removeprefix("SOLUTION_VERDICT_").lower()
                 for v in replay_service_pb2.SolutionVerdict.values() if v}


def verdict_of(source: str, win_rate: float | None, min_win_rate: float) -> int:
    """Baseline stands when the search kept the baseline; else improved when the solution wins at least
    `min_win_rate` of the perturbed scenes (or was not re-validated), fragile when it does not."""
    if source == "baseline":
        return Verdict.SOLUTION_VERDICT_BASELINE_STANDS
    if win_rate is None or win_rate >= min_win_rate:
        return Verdict.SOLUTION_VERDICT_IMPROVED
    return Verdict.SOLUTION_VERDICT_FRAGILE


def solution_message(plan: Plan, request: replay_service_pb2.ReplayRequest, vehicle_id: str, solved: Any,
                     index: int, min_win_rate: float, pair_key: str, pair_uri: str, pair_size: int,
                     batch_scenarios: int) -> replay_service_pb2.Solution:
    """The Solution of scenario `index` of `solved` (a `fleetloop.replay.replayer.Solved`)."""
    result, robust = solved.result, solved.verdict
    win_rate = float(robust.win_rate[index]) if robust is not None else None
    source = result.source[index]
    base, sol = result.baseline_report, result.solution_report
    return replay_service_pb2.Solution(
        solution_id=plan.solution_id, case_id=plan.case_id, vehicle_id=vehicle_id, request_id=request.request_id,
        policy=plan.policy, search_config=plan.search_config, search_config_version=plan.search_config_version,
        verdict=verdict_of(source, win_rate, min_win_rate), source=source,
        terms=[replay_service_pb2.TermScore(name=name, baseline=b, solution=s)
               for name, (b, s) in sorted(result.cost_change[index].items())],
        baseline_total=float(base.total[index, 0]), solution_total=float(sol.total[index, 0]),
        baseline_score=float(base.score[index, 0]), solution_score=float(sol.score[index, 0]),
        triggers_removed=result.triggers_removed[index], triggers_added=result.triggers_added(index),
        win_rate=math.nan if win_rate is None else win_rate,
        perturbations=len(robust.kinds) if robust is not None else 0,
        pair_key=pair_key, pair_uri=pair_uri, pair_size_bytes=pair_size,
        scenario_id=result.scenario_ids[index], device=result.device, seed=result.seed,
        iterations=int(result.iterations[index]), candidates=int(result.candidates[index]),
        requested_ms=request.requested_ms, search_seconds=solved.seconds + solved.robust_seconds,
        batch_scenarios=batch_scenarios)


def solution_json(solution: replay_service_pb2.Solution) -> str:
    return json_format.MessageToJson(solution, preserving_proto_field_name=True, indent=None)


def solution_from_json(text: str) -> replay_service_pb2.Solution:
    return json_format.Parse(text, replay_service_pb2.Solution())


def solution_row(solution: replay_service_pb2.Solution) -> tuple:
    terms = list(solution.terms)
    return (solution.solution_id, solution.case_id, solution.vehicle_id, solution.request_id, solution.policy,
            solution.search_config, solution.search_config_version, VERDICT_NAMES.get(solution.verdict, ""),
            solution.source, {t.name: t.baseline for t in terms}, {t.name: t.solution for t in terms},
            solution.baseline_total, solution.solution_total, solution.baseline_score, solution.solution_score,
            dict(solution.triggers_removed), solution.win_rate, solution.pair_uri, solution.pair_size_bytes,
            solution.device, datetime.fromtimestamp(solution.requested_ms / 1000, tz=UTC), solution_json(solution))
