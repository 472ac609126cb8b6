"""The Pareto front over the four objectives, per-term attribution, and the rule that picks *the* solution.

Objectives are `costs.OBJECTIVES` (safety, comfort, efficiency, compliance), lower better. A candidate
dominates another when it is no worse in every objective and better in at least one. Ranks are the
non-dominated sorting of NSGA-II: rank 0 is the front, rank k the front once ranks < k are removed.

The solution rule (`choose_solution`), in order:

1. Only the front: rank-0 members among the valid candidates (all candidates where none is valid).
   Callers put failed hard gates into the objectives (a penalty, as `costs.evaluate` and the search
   do) or pass them as `valid`, so a gate-failing member never dominates one that passes.
2. No trade-off against the baseline where possible: if some front members are no worse than the
   baseline in every objective (within `baseline_tolerance`), keep only those.
3. Safety first: keep the members whose safety objective is within `safety_tolerance` of the lowest.
4. The lowest sum of the objectives (for `costs.evaluate`'s objectives, the total cost); ties go to
   the lowest index.

The baseline is the reference of step 2, not a member: were it among the candidates, step 2 would keep
it whenever nothing weakly dominates it, and the log-divergence term makes every real alternative a
trade-off. The search then accepts the pick only if it lowers the baseline's total cost; otherwise the
baseline stands (a case the fleet already drove well keeps what it drove).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.costs import CostReport, build_terms, weighted_cost

INF = float("inf")


def dominance(objectives: Tensor) -> Tensor:
    """`[..., N, N]` bool: entry (i, j) is True when candidate i dominates candidate j (`objectives`
    `[..., N, M]`, lower better)."""
    a, b = objectives[..., :, None, :], objectives[..., None, :, :]
    return (a <= b).all(-1) & (a < b).any(-1)


def non_dominated_ranks(objectives: Tensor, valid: Tensor | None = None) -> Tensor:
    """Non-dominated sorting: `objectives` `[..., N, M]` (lower better) → ranks `[..., N]` int64, 0 = the
    front. Invalid candidates (`valid` `[..., N]` False) take no part and get rank N. A NaN objective
    counts as +inf, the worst value of that objective."""
    obj = torch.nan_to_num(objectives, nan=INF)
    n = obj.shape[-2]
    ok = torch.ones(obj.shape[:-1], dtype=torch.bool, device=obj.device) if valid is None else valid.clone()
    dom = (dominance(obj) & ok[..., :, None] & ok[..., None, :]).to(obj.dtype)
    count = dom.sum(-2)                        # how many valid candidates dominate each one
    ranks = torch.full(obj.shape[:-1], n, dtype=torch.long, device=obj.device)
    remaining = ok
    rank = 0
    while bool(remaining.any()):               # one pass per front; peeled fronts release their dominated
        front = remaining & (count == 0)
        ranks[front] = rank
        remaining = remaining & ~front
        count = count - (front.to(obj.dtype)[..., None, :] @ dom)[..., 0, :]
        rank += 1
    return ranks


def choose_solution(objectives: Tensor, baseline: Tensor, safety_tolerance: float = 0.5,
                    baseline_tolerance: float = 0.05, valid: Tensor | None = None) -> Tensor:
    """The index of *the* solution by the module's rule: `objectives` `[..., N, 4]` (`costs.OBJECTIVES`
    order), `baseline` `[..., 4]` (the baseline's objectives) → `[...]` int64. `safety_tolerance` and
    `baseline_tolerance` are in objective units (weighted cost; `pareto` section of replay.yaml, read
    with `settings(config)`)."""
    obj = torch.nan_to_num(objectives, nan=INF)
    ok = torch.ones(obj.shape[:-1], dtype=torch.bool, device=obj.device) if valid is None else valid
    ok = ok | ~ok.any(-1, keepdim=True)                                       # none valid: consider all
    keep = ok & (non_dominated_ranks(obj, ok) == 0)                             # 1. the front
    no_trade = keep & (obj <= baseline[..., None, :] + baseline_tolerance).all(-1)
    keep = torch.where(no_trade.any(-1, keepdim=True), no_trade, keep)        # 2. no trade-off if possible
    safety = obj[..., 0].masked_fill(~keep, INF)
    keep &= safety <= safety.amin(-1, keepdim=True) + safety_tolerance         # 3. safety first
    total = obj.sum(-1).masked_fill(~keep, INF)                                 # 4. lowest total, first index
    best = total.amin(-1, keepdim=True)
    index = torch.arange(obj.shape[-2], device=obj.device).expand(total.shape)
    return torch.where(keep & (total == best), index, obj.shape[-2]).amin(-1)


def settings(config: ReplayConfig) -> dict[str, float]:
    """`choose_solution`'s tolerances from the `pareto` section (keyword arguments)."""
    p = config.section("pareto")
    return {"safety_tolerance": float(p["safety_tolerance"]), "baseline_tolerance": float(p["baseline_tolerance"])}


@dataclass
class Attribution:
    """Why candidates differ from the baseline, per cost term: `names` `[K]` and their `objectives`;
    `delta` `[S, N, K]` float32, the change of each term's weighted cost (gate penalty included)
    against the baseline: negative is better. Over K it sums to the change of the total."""

    names: tuple[str, ...]
    objectives: tuple[str, ...]
    delta: Tensor

    def better(self, s: int, n: int, min_delta: float = 1e-6) -> list[tuple[str, float]]:
        """The terms that make candidate n of scenario s better than the baseline, most improved first."""
        d = self.delta[s, n].tolist()
        return sorted(((k, v) for k, v in zip(self.names, d, strict=True) if v < -min_delta), key=lambda x: x[1])

    def worse(self, s: int, n: int, min_delta: float = 1e-6) -> list[tuple[str, float]]:
        """The terms that make candidate n of scenario s worse than the baseline, most worsened first."""
        d = self.delta[s, n].tolist()
        return sorted(((k, v) for k, v in zip(self.names, d, strict=True) if v > min_delta), key=lambda x: -x[1])


def attribute(report: CostReport, baseline: CostReport, config: ReplayConfig) -> Attribution:
    """Per-term attribution of `report` `[S, N]` against the `baseline` report `[S, 1]` (both from
    `costs.evaluate` with `config`)."""
    penalty = float(config.section("costs")["gate_penalty"])
    specs = [spec for spec in build_terms(config) if spec.term.name in report.terms]
    delta = torch.stack([weighted_cost(spec, report.terms[spec.term.name], penalty)
                         - weighted_cost(spec, baseline.terms[spec.term.name], penalty) for spec in specs], -1)
    return Attribution(tuple(s.term.name for s in specs), tuple(s.term.objective for s in specs), delta)
