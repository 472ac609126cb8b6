"""Search over what-if ego trajectories: seed, refine, keep the Pareto front, choose one solution.

For S scenarios at once (one batch, chunked only to bound memory), the population starts from
- the logged baseline (`WorldModel.baseline_actions`),
- a proposal set in the manner of PDM-Closed: an IDM speed profile towards 0.2 … 1.0 of the lane's
  speed limit (else of the current speed), with a leader search ahead along the ego's own path, on the
  reference lane centre and at lateral offsets from it, tracked by pure pursuit on curvature; all
  proposals roll closed loop through `WorldModel.initial` / `WorldModel.step` (a loop over time only),
- the policy's own plan (`Policy.plan`),
and is refined by the cross-entropy method (CEM, with iCEM's elite carry-over) or MPPI
(`search.method`) over action sequences `[S, C, T, 2]` (acceleration m/s², curvature 1/m).

Exploration noise is smooth by construction: standard normal noise is drawn on knots every
`search.knot_spacing_s` seconds and linearly interpolated to the 10 Hz grid (a piecewise-linear action
has bounded jerk), then scaled by the per-step standard deviation. Noise is drawn per scenario from a
CPU generator seeded by (seed, scenario id): the same scenario gets the same answer in any batch and on
any device (the knot noise is small, so the host-to-device copy is cheap).

Every candidate is scored by `costs.evaluate` against the baseline rollout. A bounded archive per
scenario holds the non-dominated candidates of everything evaluated so far (the Pareto front of the
union of evaluated objectives, as long as the front fits `search.archive_size`); candidates failing a
hard gate are dominated by any that pass. The solution is `pareto.choose_solution`'s pick from the front
of the searched candidates, judged against the baseline; it must lower the baseline's total cost, else the
baseline stands (a case the fleet already drove well keeps what it drove).
A scenario stops early once a candidate dominates the baseline by `search.early_stop_margin`; stopped
scenarios drop out of the batch (masked), the others continue together.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch

from fleetloop.replay import costs, pareto, parity
from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.dynamics import BicycleBounds, clamp_actions
from fleetloop.replay.scenario import EGO, MapKind, Rollout, ScenarioBatch, ScenarioError

INF = float("inf")
SOURCES = ("baseline", "proposal", "policy", "search")  # where a candidate came from


class Planner(Protocol):
    """What the search needs of a policy (`fleetloop.replay.policies.Policy`)."""

    def plan(self, scen: ScenarioBatch, world: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class SearchSettings:
    """The `search:` section of replay.yaml, checked (see the comments there for each number)."""

    method: str
    iterations: int
    candidates_per_iteration: int
    max_rows: int
    knot_spacing_s: float
    init_std_accel_mps2: float
    init_std_curvature_pm: float
    min_std_accel_mps2: float
    min_std_curvature_pm: float
    elite_fraction: float
    keep_elites: int
    momentum: float
    mppi_temperature: float
    early_stop_margin: float
    early_stop_tolerance: float
    archive_size: int
    front_trajectories: int
    proposal_speed_fractions: tuple[float, ...]
    proposal_lateral_offsets_m: tuple[float, ...]
    proposal_min_reference_speed_mps: float
    proposal_lookahead_s: float
    proposal_min_lookahead_m: float
    proposal_forecast_s: tuple[float, ...]
    proposal_path_margin_m: float
    idm_max_accel_mps2: float
    idm_comfort_decel_mps2: float
    idm_max_decel_mps2: float
    idm_min_gap_m: float
    idm_headway_s: float
    idm_delta: float
    lane_max_heading_error_rad: float

    @classmethod
    def from_config(cls, config: ReplayConfig) -> SearchSettings:
        raw = config.section_fields("search", (f.name for f in fields(cls)))
        for key in ("proposal_speed_fractions", "proposal_lateral_offsets_m", "proposal_forecast_s"):
            raw[key] = tuple(float(v) for v in raw[key])
        settings = cls(**raw)
        if settings.method not in ("cem", "mppi"):
            raise ValueError(f"replay config search.method: {settings.method!r} is neither 'cem' nor 'mppi'")
        if settings.iterations < 0 or settings.candidates_per_iteration < 1 or settings.max_rows < 1:
            raise ValueError("replay config search: iterations >= 0, candidates_per_iteration >= 1, max_rows >= 1")
        if not 0 < settings.elite_fraction <= 1 or not 0 <= settings.momentum < 1:
            raise ValueError("replay config search: elite_fraction in (0, 1], momentum in [0, 1)")
        if settings.front_trajectories < 1 or settings.archive_size < settings.front_trajectories:
            raise ValueError("replay config search: 1 <= front_trajectories <= archive_size")
        if not settings.proposal_speed_fractions or not settings.proposal_lateral_offsets_m:
            raise ValueError("replay config search: at least one proposal speed fraction and lateral offset")
        return settings

    @property
    def total_candidates(self) -> int:
        """Candidates evaluated per scenario without an early stop (seeds not counted)."""
        return self.iterations * self.candidates_per_iteration


@dataclass
class SearchResult:
    """What the search found for each of S scenarios (F = `search.front_trajectories` at most).

    - `baseline`: the logged baseline rolled out, `Rollout` with C = 1; `baseline_report`: its `CostReport`.
    - `solution`: the chosen candidate, `Rollout` with C = 1 (`ego_actions` are the solution's actions,
      `[S, 1, T, 2]`); `solution_report`: its `CostReport` (against the baseline).
    - `front`: up to F members of the Pareto front, `Rollout` `[S, F, A, T]`; `front_valid` `[S, F]` bool
      (padding False); `front_objectives` `[S, F, 4]` (`costs.OBJECTIVES` order); `front_size` `[S]`
      the front's size before truncation to F (within the archive).
    - `cost_change`: per scenario, term name → (baseline value, solution value) in the term's unit.
    - `triggers_baseline`, `triggers_solution`: per scenario, trigger name → events counted by the
      fleet's trigger classes (`parity.fired_triggers`); `triggers_removed`: fired by the baseline and
      not by the solution (name → the baseline's count).
    - `source`: per scenario, where the solution came from (`SOURCES`).
    - `iterations` `[S]` int64 refinement iterations run; `candidates` `[S]` int64 candidates evaluated
      (seeds included); `early_stopped` `[S]` bool.
    """

    scenario_ids: list[str]
    baseline: Rollout
    baseline_report: costs.CostReport
    solution: Rollout
    solution_report: costs.CostReport
    front: Rollout
    front_valid: torch.Tensor
    front_objectives: torch.Tensor
    front_size: torch.Tensor
    cost_change: list[dict[str, tuple[float, float]]]
    triggers_baseline: list[dict[str, int]]
    triggers_solution: list[dict[str, int]]
    triggers_removed: list[dict[str, int]]
    source: list[str]
    iterations: torch.Tensor
    candidates: torch.Tensor
    early_stopped: torch.Tensor
    method: str
    seed: int
    device: str

    @property
    def solution_actions(self) -> torch.Tensor:
        """`[S, T, 2]` acceleration (m/s²) and curvature (1/m) of the solution."""
        return self.solution.ego_actions[:, 0]

    def triggers_added(self, i: int) -> dict[str, int]:
        """Triggers the solution of scenario `i` fires and the baseline does not (name → count)."""
        base = self.triggers_baseline[i]
        return {k: v for k, v in self.triggers_solution[i].items() if v > 0 and base.get(k, 0) == 0}


# --- the reference lane -------------------------------------------------------------------------------------------


@dataclass
class LaneReference:
    """One reference polyline per scenario, `[S, V, 2]` metres in the scenario frame, vertices compacted to
    the front (`valid` `[S, V]`), `s` `[S, V]` cumulative arc length (m, strictly increasing over the valid
    vertices, padding beyond); `speed_limit_mps` `[S]` (NaN where unknown). Points beyond either end are
    extrapolated along the end segment, so a short map crop still guides a long rollout."""

    xy: torch.Tensor
    valid: torch.Tensor
    s: torch.Tensor
    speed_limit_mps: torch.Tensor

    def point_at(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Point `[S, C, 2]` and tangent heading `[S, C]` (rad) at arc length `s` `[S, C]` (m)."""
        n_valid = self.valid.sum(dim=1, keepdim=True)                       # [S, 1], >= 2 by construction
        seg = torch.searchsorted(self.s.contiguous(), s.contiguous(), right=True)  # vertex after s
        seg = torch.minimum(torch.clamp(seg, min=1), n_valid - 1)           # first / last segment extrapolate
        v0 = self.xy.gather(1, (seg - 1)[..., None].expand(*seg.shape, 2))
        v1 = self.xy.gather(1, seg[..., None].expand(*seg.shape, 2))
        s0 = self.s.gather(1, seg - 1)
        s1 = self.s.gather(1, seg)
        frac = ((s - s0) / (s1 - s0).clamp(min=1e-6))[..., None]
        d = v1 - v0
        return v0 + frac * d, torch.atan2(d[..., 1], d[..., 0])

    def project(self, xy: torch.Tensor) -> torch.Tensor:
        """Arc length `[S, C]` (m) of the nearest point on the polyline to points `xy` `[S, C, 2]`; before the
        first or past the last vertex the arc length runs on along the end segment (negative, or beyond)."""
        v0, v1 = self.xy[:, None, :-1], self.xy[:, None, 1:]               # [S, 1, V-1, 2]
        seg_ok = (self.valid[:, :-1] & self.valid[:, 1:])[:, None]          # [S, 1, V-1]
        d = v1 - v0
        rel = xy[:, :, None] - v0                                           # [S, C, V-1, 2]
        length2 = (d * d).sum(-1).clamp(min=1e-9)
        u = (rel * d).sum(-1) / length2
        dist = ((rel - u.clamp(0.0, 1.0)[..., None] * d) ** 2).sum(-1).masked_fill(~seg_ok, float("inf"))
        best = dist.argmin(dim=2, keepdim=True)                             # [S, C, 1]
        last = seg_ok.sum(-1, keepdim=True) - 1                             # [S, 1, 1]
        inf = torch.full_like(u[..., :1], float("inf"))
        lo = torch.where(best == 0, -inf, torch.zeros_like(inf))
        hi = torch.where(best == last, inf, torch.ones_like(inf))
        u_best = torch.maximum(torch.minimum(u.gather(2, best), hi), lo)
        s0 = self.s[:, None, :-1].expand_as(dist).gather(2, best)
        seg_len = length2.sqrt().expand_as(dist).gather(2, best)
        return (s0 + u_best * seg_len)[..., 0]


def lane_reference(scen: ScenarioBatch, max_heading_error_rad: float) -> LaneReference:
    """The lane centre nearest the ego at the current step among those heading its way (within
    `max_heading_error_rad`); where the map has none, a straight line along the ego's heading."""
    k = scen.current_step
    ex, ey, eh = scen.x[:, EGO, k], scen.y[:, EGO, k], scen.heading[:, EGO, k]          # [S]
    n_s, n_p, n_v = scen.map_kind.shape[0], scen.map_kind.shape[1], scen.map_xy.shape[2]
    n_ref = max(n_v, 2)
    # Fallback: a straight line through the ego along its heading (2 vertices, padding far beyond).
    xy = torch.zeros(n_s, n_ref, 2, device=scen.device)
    xy[:, 0] = torch.stack([ex, ey], -1)
    xy[:, 1] = torch.stack([ex + torch.cos(eh), ey + torch.sin(eh)], -1)
    valid = torch.zeros(n_s, n_ref, dtype=torch.bool, device=scen.device)
    valid[:, :2] = True
    s = torch.cat([torch.zeros(n_s, 1, device=scen.device), torch.ones(n_s, 1, device=scen.device),
                   1e6 * torch.arange(1, n_ref - 1, device=scen.device, dtype=torch.float32).expand(n_s, -1)
                   + 1.0], dim=1)
    limit = torch.full((n_s,), float("nan"), device=scen.device)
    if n_p == 0 or n_v < 2:
        return LaneReference(xy=xy, valid=valid, s=s, speed_limit_mps=limit)
    pts, ok = scen.map_xy, scen.map_valid                                               # [S, P, V, 2], [S, P, V]
    lane = (scen.map_kind == MapKind.LANE_CENTRE)[..., None]                            # [S, P, 1]
    seg_ok = ok[..., :-1] & ok[..., 1:] & lane                                          # [S, P, V-1]
    d = pts[..., 1:, :] - pts[..., :-1, :]
    rel = torch.stack([ex, ey], -1)[:, None, None] - pts[..., :-1, :]
    u = ((rel * d).sum(-1) / (d * d).sum(-1).clamp(min=1e-9)).clamp(0.0, 1.0)
    dist = ((rel - u[..., None] * d) ** 2).sum(-1).sqrt()
    aligned = torch.cos(torch.atan2(d[..., 1], d[..., 0]) - eh[:, None, None]) >= torch.cos(
        torch.tensor(max_heading_error_rad))
    dist = dist.masked_fill(~(seg_ok & aligned), float("inf")).flatten(1)               # [S, P * (V-1)]
    flat_best = dist.argmin(dim=1)
    has_lane = torch.isfinite(dist.gather(1, flat_best[:, None]))[:, 0]
    p_best = flat_best // (n_v - 1)
    s_idx = torch.arange(n_s, device=scen.device)
    lane_xy, lane_valid = pts[s_idx, p_best], ok[s_idx, p_best]                         # [S, V, 2], [S, V]
    # Compact valid vertices to the front (stable), so segments are consecutive valid pairs.
    order = torch.sort((~lane_valid).to(torch.int8), dim=1, stable=True).indices
    lane_xy = lane_xy.gather(1, order[..., None].expand_as(lane_xy))
    lane_valid = lane_valid.gather(1, order)
    # Repeated vertices would make `s` non-increasing: give every segment at least 1 mm.
    step = torch.linalg.vector_norm(lane_xy[:, 1:] - lane_xy[:, :-1], dim=-1).clamp(min=1e-3)
    step = torch.where(lane_valid[:, 1:], step, torch.full_like(step, 1e6))            # padding far beyond
    lane_s = torch.cat([torch.zeros_like(step[:, :1]), step.cumsum(1)], dim=1)
    pick = (has_lane & (lane_valid.sum(1) >= 2))[:, None]
    return LaneReference(xy=torch.where(pick[..., None], lane_xy, xy), valid=torch.where(pick, lane_valid, valid),
                         s=torch.where(pick, lane_s, s),
                         speed_limit_mps=torch.where(pick[:, 0], scen.map_speed_limit_mps[s_idx, p_best], limit))


# --- the proposal set ---------------------------------------------------------------------------------------------


class ProposalSet:
    """PDM-Closed-style proposals: for each speed fraction f and lateral offset d (metres, + left), an IDM
    speed profile towards f × the reference speed (the lane's limit, else the current speed, at least
    `proposal_min_reference_speed_mps`) behind the nearest agent in the ego's path, steered by pure
    pursuit onto the reference lane shifted by d. Agents count as in the path when they are ahead and
    within the path's half-width now or at any of the `proposal_forecast_s` horizons (both moving at
    constant velocity), so a crossing pedestrian or a cut-in is a leader before it arrives."""

    def __init__(self, settings: SearchSettings, bounds: BicycleBounds) -> None:
        self.p = settings
        self.bounds = bounds

    @property
    def n_proposals(self) -> int:
        return len(self.p.proposal_speed_fractions) * len(self.p.proposal_lateral_offsets_m)

    def compute(self, scen: ScenarioBatch, world: Any, ref: LaneReference) -> torch.Tensor:
        """Actions `[S, P, T, 2]` (m/s², 1/m) of the P = fractions × offsets proposals, closed loop in `world`."""
        p, dev = self.p, scen.device
        fractions = torch.tensor(p.proposal_speed_fractions, device=dev)
        offsets = torch.tensor(p.proposal_lateral_offsets_m, device=dev)
        frac = fractions.repeat_interleave(len(offsets))                               # [P]
        offset = offsets.repeat(len(fractions))[None, :, None]                        # [1, P, 1]
        k0, n_t, n_p = scen.current_step, scen.n_steps, self.n_proposals
        v_now = scen.speed[:, EGO, k0]
        v_ref = torch.where(torch.isfinite(ref.speed_limit_mps), ref.speed_limit_mps,
                            v_now.clamp(min=p.proposal_min_reference_speed_mps))
        v_desired = (v_ref[:, None] * frac[None]).clamp(min=0.1)                     # [S, P]
        actions = torch.zeros(scen.n_scenarios, n_p, n_t, 2, device=dev)
        state = world.initial(scen, n_p)
        for k in range(k0, n_t - 1):
            ex, ey, eh, ev = state.x[:, :, EGO], state.y[:, :, EGO], state.heading[:, :, EGO], state.speed[:, :, EGO]
            ego_xy = torch.stack([ex, ey], -1)
            look = (p.proposal_lookahead_s * ev.abs()).clamp(min=p.proposal_min_lookahead_m)
            point, tangent = ref.point_at(ref.project(ego_xy) + look)
            target = point + offset * torch.stack([-torch.sin(tangent), torch.cos(tangent)], -1)
            rel = target - ego_xy
            local_y = -torch.sin(eh) * rel[..., 0] + torch.cos(eh) * rel[..., 1]
            curvature = 2.0 * local_y / (rel * rel).sum(-1).clamp(min=1.0)             # pure pursuit
            gap, leader_speed = self._leader(state, scen)
            accel = self._idm(ev, v_desired, gap, leader_speed)
            action = torch.stack(clamp_actions(accel, curvature, self.bounds), -1)
            actions[:, :, k] = action
            state = world.step(state, scen, action, k)
        return actions

    def _leader(self, state: Any, scen: ScenarioBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Bumper gap (m, inf without a leader) and speed along the ego's heading (m/s) of the nearest agent
        in each candidate's path, `[S, C]` each."""
        p = self.p
        eh = state.heading[:, :, EGO:EGO + 1]
        ev = state.speed[:, :, EGO:EGO + 1]
        dx = state.x[:, :, 1:] - state.x[:, :, EGO:EGO + 1]
        dy = state.y[:, :, 1:] - state.y[:, :, EGO:EGO + 1]
        cos_h, sin_h = torch.cos(eh), torch.sin(eh)
        lon = cos_h * dx + sin_h * dy                                                   # [S, C, A-1]
        lat = -sin_h * dx + cos_h * dy
        rel_heading = state.heading[:, :, 1:] - eh
        v_lon = state.speed[:, :, 1:] * torch.cos(rel_heading)
        v_lat = state.speed[:, :, 1:] * torch.sin(rel_heading)
        half = ((scen.width[:, EGO:EGO + 1] + scen.width[:, 1:]) / 2 + p.proposal_path_margin_m)[:, None]
        in_path = torch.zeros_like(lon, dtype=torch.bool)
        for tau in p.proposal_forecast_s:
            lon_t = lon + (v_lon - ev) * tau
            in_path |= (lon_t > 0) & ((lat + v_lat * tau).abs() < half)
        in_path &= state.valid[:, :, 1:] & (lon > 0)
        gap = lon - ((scen.length[:, EGO:EGO + 1] + scen.length[:, 1:]) / 2)[:, None]
        gap = torch.where(in_path, gap.clamp(min=0.1), torch.full_like(gap, float("inf")))
        if gap.shape[2] == 0:
            return gap.sum(2) + float("inf"), torch.zeros_like(ev[..., 0])
        best = gap.argmin(dim=2, keepdim=True)
        return gap.gather(2, best)[..., 0], v_lon.gather(2, best)[..., 0]

    def _idm(self, v: torch.Tensor, v_desired: torch.Tensor, gap: torch.Tensor, v_leader: torch.Tensor) -> torch.Tensor:
        """IDM acceleration (m/s²) with the search's IDM parameters (Treiber et al. 2000)."""
        p = self.p
        v = v.clamp(min=0.0)
        s_star = p.idm_min_gap_m + (v * p.idm_headway_s + v * (v - v_leader)
                                    / (2.0 * (p.idm_max_accel_mps2 * p.idm_comfort_decel_mps2) ** 0.5)).clamp(min=0)
        interaction = torch.where(torch.isfinite(gap), (s_star / gap) ** 2, torch.zeros_like(gap))
        accel = p.idm_max_accel_mps2 * (1.0 - (v / v_desired) ** p.idm_delta - interaction)
        return accel.clamp(min=-p.idm_max_decel_mps2)


# --- smooth noise and the two refiners ----------------------------------------------------------------------------


def knot_matrix(n_steps: int, knot_steps: int, device: torch.device) -> torch.Tensor:
    """Linear interpolation `[n_steps, K]` from K knots every `knot_steps` steps (the last knot on the last
    step) to every step: noise drawn on knots and mapped through it is piecewise linear."""
    positions = torch.arange(0, max(n_steps - 1, 0), max(knot_steps, 1), dtype=torch.float32).tolist()
    positions = torch.tensor(positions + [float(max(n_steps - 1, 0))], device=device)   # [K]
    steps = torch.arange(n_steps, dtype=torch.float32, device=device)[:, None]         # [H, 1]
    upper = torch.searchsorted(positions, steps[:, 0].contiguous(), right=False).clamp(1, len(positions) - 1)
    left, right = positions[upper - 1], positions[upper]
    w_right = ((steps[:, 0] - left) / (right - left).clamp(min=1e-6)).clamp(0.0, 1.0)
    weights = torch.zeros(n_steps, len(positions), device=device)
    rows = torch.arange(n_steps, device=device)
    weights[rows, upper - 1] = 1.0 - w_right
    weights[rows, upper] += w_right
    return weights


class CrossEntropy:
    """CEM with iCEM's elite carry-over: the new mean and standard deviation are the elites' (the best
    `elite_fraction` of this iteration's samples and of the E best carried from the last one), blended
    with the old by `momentum`; the deviation never falls below its floor."""

    def __init__(self, settings: SearchSettings, min_std: torch.Tensor) -> None:
        self.p = settings
        self.min_std = min_std

    def compute(self, mean: torch.Tensor, std: torch.Tensor, samples: torch.Tensor, key: torch.Tensor,
                carried: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`mean`, `std` `[S, H, 2]`; `samples` `[S, N, H, 2]` with ranking `key` `[S, N]` (lower better);
        `carried` the last elites `([S, E, H, 2], [S, E])`. Returns the new mean, std and E elites to carry."""
        pool, pool_key = torch.cat([carried[0], samples], 1), torch.cat([carried[1], key], 1)
        n_elite = max(2, carried[1].shape[1], round(self.p.elite_fraction * samples.shape[1]))
        order = pool_key.topk(n_elite, dim=1, largest=False).indices                      # [S, n_elite]
        elites = take_candidates(pool, order)
        m = self.p.momentum
        new_mean = m * mean + (1 - m) * elites.mean(1)
        new_std = torch.maximum(m * std + (1 - m) * elites.std(1), self.min_std)
        keep = order[:, :carried[1].shape[1]]
        return new_mean, new_std, (take_candidates(pool, keep), pool_key.gather(1, keep))


class Mppi:
    """MPPI: the new mean is the samples' average weighted by exp(-(key - min) / (λ · spread)), where λ is
    `mppi_temperature` and the spread the mean key excess of the samples passing the gates (a scale-free
    temperature: cost units differ between terms and scenes). The deviation stays at its initial value."""

    def __init__(self, settings: SearchSettings) -> None:
        self.p = settings

    def compute(self, mean: torch.Tensor, std: torch.Tensor, samples: torch.Tensor, key: torch.Tensor,
                gates_pass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`mean`, `std` `[S, H, 2]`; `samples` `[S, N, H, 2]` with ranking `key` and `gates_pass` `[S, N]`;
        returns the new mean and std."""
        excess = key - key.min(dim=1, keepdim=True).values
        feasible = gates_pass & torch.isfinite(excess)
        spread = torch.where(feasible, excess, 0.0).sum(1, keepdim=True) / feasible.sum(1, keepdim=True).clamp(min=1)
        weights = torch.softmax(-excess / (self.p.mppi_temperature * spread.clamp(min=1e-6)), dim=1)
        return (weights[..., None, None] * samples).sum(1), std


# --- the archive: the Pareto front of everything evaluated ---------------------------------------------------------


@dataclass
class Archive:
    """Per scenario, the best `archive_size` candidates seen: the non-dominated ones first, then by key.
    `actions` `[S, M, H, 2]` over the searched steps; `objectives` `[S, M, 4]` with the gate penalty added
    (a failing candidate is dominated by any passing one); `key` `[S, M]`; `source` `[S, M]` int64
    (index into `SOURCES`); `filled` `[S, M]` bool; `front` `[S, M]` bool (non-dominated)."""

    actions: torch.Tensor
    objectives: torch.Tensor
    key: torch.Tensor
    source: torch.Tensor
    filled: torch.Tensor
    front: torch.Tensor

    def merge(self, actions: torch.Tensor, objectives: torch.Tensor, key: torch.Tensor, source: torch.Tensor,
              size: int) -> Archive:
        """The archive of the union of this one and N new candidates (`[S, N, ...]`)."""
        acts = torch.cat([self.actions, actions], 1)
        obj = torch.cat([self.objectives, objectives], 1)
        keys = torch.cat([self.key, key], 1)
        src = torch.cat([self.source, source], 1)
        filled = torch.cat([self.filled, torch.ones_like(key, dtype=torch.bool)], 1)
        dominated = dominated_mask(obj, filled)
        # Sort by key, then (stable) put filled non-dominated first, filled dominated next, padding last.
        by_key = keys.masked_fill(~filled, float("inf")).argsort(dim=1, stable=True)
        rank = (~filled).long() * 2 + dominated.long()
        order = by_key.gather(1, rank.gather(1, by_key).argsort(dim=1, stable=True))[:, :size]

        def take(x: torch.Tensor) -> torch.Tensor:
            return x.gather(1, order.view(*order.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))

        kept_filled = take(filled)
        return Archive(take(acts), take(obj), take(keys), take(src), kept_filled, take(~dominated) & kept_filled)

    @classmethod
    def empty(cls, n_scenarios: int, n_steps: int, size: int, device: torch.device) -> Archive:
        """`size` unfilled slots per scenario (the archive keeps its width as it merges)."""
        z = torch.zeros(n_scenarios, size, device=device)
        return cls(torch.zeros(n_scenarios, size, n_steps, 2, device=device),
                   torch.zeros(n_scenarios, size, 4, device=device), z.clone(), z.long(), z.bool(), z.bool())


def dominated_mask(objectives: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """`[S, N]` True where another filled candidate of the same scenario dominates (`pareto.dominance`)."""
    return (pareto.dominance(objectives) & filled[:, :, None] & filled[:, None, :]).any(dim=1)


# --- batch helpers: gather candidates, select scenarios, join chunks ----------------------------------------------


def take_candidates(obj: Any, index: torch.Tensor) -> Any:
    """`obj` (a Rollout, CostReport, CostValue or tensor with `[S, C, ...]` tensors) at candidates `index`
    `[S, K]`; tensors of another shape pass unchanged."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() < 2 or obj.shape[0] != index.shape[0]:
            return obj
        return obj.gather(1, index.view(*index.shape, *([1] * (obj.dim() - 2))).expand(-1, -1, *obj.shape[2:]))
    if isinstance(obj, Mapping):
        return {k: take_candidates(v, index) for k, v in obj.items()}
    if hasattr(obj, "__dataclass_fields__"):
        return replace(obj, **{f.name: take_candidates(getattr(obj, f.name), index) for f in fields(obj)
                               if _nested(getattr(obj, f.name))})
    return obj


def _nested(value: Any) -> bool:
    """Whether the batch helpers descend into `value` (tensors, mappings, lists and dataclass instances)."""
    return isinstance(value, (torch.Tensor, Mapping, list)) or (hasattr(value, "__dataclass_fields__")
                                                                and not isinstance(value, type))


def take_scenarios(obj: Any, index: torch.Tensor, n_scenarios: int) -> Any:
    """`obj`'s tensors with a leading scenario dimension of `n_scenarios`, at scenarios `index` `[S']`."""
    if isinstance(obj, torch.Tensor):
        return obj.index_select(0, index) if obj.dim() >= 1 and obj.shape[0] == n_scenarios else obj
    if isinstance(obj, Mapping):
        return {k: take_scenarios(v, index, n_scenarios) for k, v in obj.items()}
    if hasattr(obj, "__dataclass_fields__"):
        return replace(obj, **{f.name: take_scenarios(getattr(obj, f.name), index, n_scenarios) for f in fields(obj)
                               if _nested(getattr(obj, f.name))})
    return obj


def join_scenarios(parts: list[Any]) -> Any:
    """The chunks' objects (same structure) joined along the scenario dimension; lists are concatenated."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, 0)
    if isinstance(first, list):
        return [x for p in parts for x in p]
    if isinstance(first, Mapping):
        return {k: join_scenarios([p[k] for p in parts]) for k in first}
    if hasattr(first, "__dataclass_fields__"):
        return replace(first, **{f.name: join_scenarios([getattr(p, f.name) for p in parts]) for f in fields(first)
                                 if _nested(getattr(first, f.name))})
    return first


def stack_candidates(rollouts: list[Rollout]) -> Rollout:
    """Rollouts of the same scenarios side by side along the candidate dimension."""
    return replace(rollouts[0], **{f.name: torch.cat([getattr(r, f.name) for r in rollouts], 1)
                                   for f in fields(rollouts[0]) if isinstance(getattr(rollouts[0], f.name),
                                                                              torch.Tensor)})


def scenario_seed(seed: int, scenario_id: str) -> int:
    """The noise seed of one scenario: the same (seed, scenario) pair draws the same noise in any batch."""
    return zlib.crc32(f"{seed}:{scenario_id}".encode())


def dominates_baseline(objectives: torch.Tensor, gates_pass: torch.Tensor, baseline: torch.Tensor, margin: float,
                       tolerance: float) -> torch.Tensor:
    """`[S]` True where a candidate passes the gates, is no worse than the baseline in every objective (up
    to `tolerance`) and better by `margin` in at least one; `objectives` `[S, N, 4]`, `baseline` `[S, 4]`."""
    no_worse = (objectives <= baseline[:, None] + tolerance).all(-1)
    better = (objectives <= baseline[:, None] - margin).any(-1)
    return (gates_pass & no_worse & better).any(1)


# --- the search ---------------------------------------------------------------------------------------------------


def search(scen: ScenarioBatch, world: Any, policy: Planner | None, config: ReplayConfig, seed: int = 0
           ) -> SearchResult:
    """Search every scenario of `scen` for a better ego trajectory (see the module docstring).

    `world` is a `WorldModel`, `policy` a `Policy` (or None: no policy seed). Scenarios are searched
    together, in chunks of at most `search.max_rows` candidate rollouts. Raises `ScenarioError` for a
    scenario that cannot be replayed or leaves no step to search, ValueError for a bad `search:` config.
    """
    scen.validate()
    if scen.current_step >= scen.n_steps - 1:
        raise ScenarioError(f"scenarios {[m.scenario_id for m in scen.meta][:3]}: current_step "
                            f"{scen.current_step} leaves no step to search in a window of {scen.n_steps}")
    settings = SearchSettings.from_config(config)
    bounds = BicycleBounds.from_config(config.section("dynamics"))
    n_seeds = 2 + ProposalSet(settings, bounds).n_proposals
    chunk = max(1, settings.max_rows // max(settings.candidates_per_iteration, n_seeds))
    parts = [_search_chunk(scen.select(list(range(i, min(i + chunk, scen.n_scenarios)))), world, policy, config,
                           settings, bounds, seed) for i in range(0, scen.n_scenarios, chunk)]
    return join_scenarios(parts) if len(parts) > 1 else parts[0]


class _Scorer:
    """Rolls candidate actions out and scores them against the baseline."""

    def __init__(self, world: Any, config: ReplayConfig) -> None:
        self.world, self.config = world, config
        # Failing candidates get the costs' gate penalty on every objective, so any passing one dominates them.
        self.penalty = float(config.section("costs")["gate_penalty"])

    def compute(self, scen: ScenarioBatch, baseline: Rollout, actions: torch.Tensor
                ) -> tuple[Rollout, costs.CostReport, torch.Tensor, torch.Tensor]:
        """Rollout, report, penalised objectives `[S, N, 4]` and ranking key `[S, N]` of `actions` `[S, N, T, 2]`."""
        rollout = self.world.rollout(scen, actions)
        report = costs.evaluate(rollout, scen, baseline, self.config)
        failed = (~report.gates_pass).float()
        objectives = torch.nan_to_num(report.objectives, nan=INF) + self.penalty * failed[..., None]
        return rollout, report, objectives, ranking_key(report)


def ranking_key(report: costs.CostReport) -> torch.Tensor:
    """`[S, C]` how the search ranks candidates: the costs' total (weighted terms plus a gate penalty per
    failed gate, so any candidate passing the gates ranks before any failing one); NaN ranks last."""
    return torch.nan_to_num(report.total, nan=INF)


def _search_chunk(scen: ScenarioBatch, world: Any, policy: Planner | None, config: ReplayConfig,
                  p: SearchSettings, bounds: BicycleBounds, seed: int) -> SearchResult:
    chunk = SlicedSearch(scen, world, policy, config, seed, settings=p, bounds=bounds)
    chunk.advance(p.iterations)
    return chunk.finish()


STATE_VERSION = 1
_STATE_TENSORS = ("mean", "std", "carried_actions", "carried_key", "iterations", "candidates", "stopped")


class SlicedSearch:
    """The search of one chunk of scenarios (at most `search.max_rows` candidate rollouts per world call),
    run a slice of refinement iterations at a time: `advance(n)` runs up to n more, `snapshot()` is its
    progress as CPU tensors (`torch.save`-able) and `SlicedSearch(..., resume_state=snapshot)` continues
    from it; `finish()` is the `SearchResult`. However it is sliced, paused and resumed, the answer is the
    one `search` gives with the same seed (the same operations in the same order, the noise generators'
    states carried in the snapshot).

    Building it rolls the baseline out; without `resume_state` it also scores the seeds (the proposals and
    the policy's plan), with it the policy is not consulted. Raises ValueError for a snapshot of another
    version, another seed or other scenarios.
    """

    def __init__(self, scen: ScenarioBatch, world: Any, policy: Planner | None, config: ReplayConfig,
                 seed: int = 0, *, resume_state: Mapping[str, Any] | None = None,
                 settings: SearchSettings | None = None, bounds: BicycleBounds | None = None) -> None:
        p = self.p = settings or SearchSettings.from_config(config)
        bounds = bounds or BicycleBounds.from_config(config.section("dynamics"))
        self.scen, self.config, self.seed = scen, config, seed
        n_s, n_t, k0, dev = scen.n_scenarios, scen.n_steps, scen.current_step, scen.device
        self.span = span = slice(k0, n_t - 1)                        # the steps whose action moves the ego
        n_h = n_t - 1 - k0
        self.scorer = _Scorer(world, config)
        base_actions = world.baseline_actions(scen)
        self.baseline = world.rollout(scen, base_actions[:, None])
        self.base_report = costs.evaluate(self.baseline, scen, self.baseline, config)
        self.base_objectives = self.base_report.objectives[:, 0]
        self.lo = torch.tensor([-bounds.decel_max_mps2, -bounds.curvature_max_inv_m], device=dev)
        self.hi = torch.tensor([bounds.accel_max_mps2, bounds.curvature_max_inv_m], device=dev)
        self.cem = CrossEntropy(p, torch.tensor([p.min_std_accel_mps2, p.min_std_curvature_pm], device=dev))
        self.mppi = Mppi(p)
        self.knots = knot_matrix(n_h, max(1, round(p.knot_spacing_s / scen.dt_s)), dev)   # [H, K]
        self.generators = [torch.Generator().manual_seed(scenario_seed(seed, m.scenario_id)) for m in scen.meta]
        if resume_state is not None:
            self._build(resume_state)
            return
        self.passes = 0                                              # refinement loop passes run so far
        ref = lane_reference(scen, p.lane_max_heading_error_rad)
        seeds = [base_actions[:, None], ProposalSet(p, bounds).compute(scen, world, ref)]
        if policy is not None:
            planned = policy.plan(scen, world)
            if tuple(planned.shape) != (n_s, n_t, 2):
                raise ValueError(f"policy plan has shape {tuple(planned.shape)}, expected {(n_s, n_t, 2)}")
            seeds.append(planned[:, None])
        seed_actions = torch.cat(seeds, 1)
        source = torch.tensor([0] + [1] * seeds[1].shape[1] + [2] * (policy is not None), device=dev)
        rollout, report, objectives, key = self.scorer.compute(scen, self.baseline, seed_actions)
        applied = rollout.ego_actions[:, :, span]
        self.archive = Archive.empty(n_s, n_h, p.archive_size, dev).merge(applied, objectives, key,
                                                                          source.expand(n_s, -1), p.archive_size)
        self.stopped = dominates_baseline(report.objectives, report.gates_pass, self.base_objectives,
                                          p.early_stop_margin, p.early_stop_tolerance)
        self.iterations = torch.zeros(n_s, dtype=torch.long, device=dev)
        self.candidates = torch.full((n_s,), seed_actions.shape[1], dtype=torch.long, device=dev)
        # The refinement starts from the best seed with the configured spread.
        best = key.argmin(1)
        self.mean = applied[torch.arange(n_s, device=dev), best]                          # [S, H, 2]
        self.std = torch.tensor([p.init_std_accel_mps2, p.init_std_curvature_pm],
                                device=dev).expand(n_s, n_h, 2).clone()
        keep = key.topk(min(p.keep_elites, key.shape[1]), dim=1, largest=False).indices
        self.carried_actions, self.carried_key = take_candidates(applied, keep), key.gather(1, keep)  # CEM's elites

    @property
    def done(self) -> bool:
        """True once every iteration ran or every scenario stopped early."""
        return self.passes >= self.p.iterations or bool(self.stopped.all())

    def advance(self, iterations: int) -> bool:
        """Run up to `iterations` more refinement iterations; returns `done`."""
        p, scen, dev = self.p, self.scen, self.scen.device
        n_s, n_t, span, n_c = scen.n_scenarios, scen.n_steps, self.span, p.candidates_per_iteration
        for _ in range(max(0, min(iterations, p.iterations - self.passes))):
            active = (~self.stopped).nonzero()[:, 0]
            if active.numel() == 0:
                break
            self.passes += 1
            noise = torch.stack([torch.randn(n_c, self.knots.shape[1], 2, generator=self.generators[i])
                                 for i in active.tolist()]).to(dev)                     # [S', N, K, 2]
            smooth = torch.einsum("hk,snkc->snhc", self.knots, noise)
            samples = torch.maximum(torch.minimum(self.mean[active, None] + self.std[active, None] * smooth,
                                                  self.hi), self.lo)
            actions = torch.zeros(active.numel(), n_c, n_t, 2, device=dev)
            actions[:, :, span] = samples
            sub = scen if active.numel() == n_s else scen.select(active)
            rollout, report, objectives, key = self.scorer.compute(sub, take_scenarios(self.baseline, active, n_s),
                                                                   actions)
            applied = rollout.ego_actions[:, :, span]
            if p.method == "cem":
                carried = (self.carried_actions[active], self.carried_key[active])
                self.mean[active], self.std[active], (self.carried_actions[active], self.carried_key[active]) = \
                    self.cem.compute(self.mean[active], self.std[active], applied, key, carried)
            else:
                self.mean[active], self.std[active] = self.mppi.compute(self.mean[active], self.std[active], applied,
                                                                        key, report.gates_pass)
            merged = take_scenarios(self.archive, active, n_s).merge(applied, objectives, key,
                                                                     torch.full_like(key, 3, dtype=torch.long),
                                                                     p.archive_size)
            for f in fields(Archive):
                getattr(self.archive, f.name)[active] = getattr(merged, f.name)
            self.iterations[active] += 1
            self.candidates[active] += n_c
            self.stopped[active] |= dominates_baseline(report.objectives, report.gates_pass,
                                                       self.base_objectives[active], p.early_stop_margin,
                                                       p.early_stop_tolerance)
        return self.done

    def snapshot(self) -> dict[str, Any]:
        """The progress so far: the refinement's distribution, CEM's elites, the archive, the counters and
        each scenario's noise generator state, as CPU tensors; plus the version, seed and scenario ids."""
        state: dict[str, Any] = {"version": STATE_VERSION, "seed": self.seed, "passes": self.passes,
                                 "scenario_ids": [m.scenario_id for m in self.scen.meta],
                                 "generators": [g.get_state() for g in self.generators]}
        state.update({name: getattr(self, name).cpu() for name in _STATE_TENSORS})
        state.update({f"archive.{f.name}": getattr(self.archive, f.name).cpu() for f in fields(Archive)})
        return state

    def _build(self, state: Mapping[str, Any]) -> None:
        ids = [m.scenario_id for m in self.scen.meta]
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"search snapshot version {state.get('version')!r}, expected {STATE_VERSION}")
        if state["seed"] != self.seed or list(state["scenario_ids"]) != ids:
            raise ValueError(f"search snapshot of seed {state['seed']} and scenarios {list(state['scenario_ids'])} "
                             f"resumed with seed {self.seed} and scenarios {ids}")
        dev = self.scen.device
        self.passes = int(state["passes"])
        for name in _STATE_TENSORS:
            setattr(self, name, state[name].to(dev).clone())
        self.archive = Archive(**{f.name: state[f"archive.{f.name}"].to(dev).clone() for f in fields(Archive)})
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)

    def finish(self) -> SearchResult:
        """The result of the iterations run so far (`search`'s, once `done`)."""
        return _finish(self.scen, self.config, self.p, self.scorer, self.baseline, self.base_report, self.archive,
                       self.iterations, self.candidates, self.stopped, self.seed)


def _finish(scen: ScenarioBatch, config: ReplayConfig, p: SearchSettings, scorer: _Scorer,
            baseline: Rollout, base_report: costs.CostReport, archive: Archive, iterations: torch.Tensor,
            candidates: torch.Tensor, stopped: torch.Tensor, seed: int) -> SearchResult:
    """Choose the solution from each archive's front, roll it and the front out once more, count triggers."""
    n_s, n_t, dev = scen.n_scenarios, scen.n_steps, scen.device
    span = slice(scen.current_step, n_t - 1)
    n_f = p.front_trajectories
    # `pareto.choose_solution` over the searched candidates, the baseline being the reference it is judged
    # against rather than a candidate: with the baseline among them the rule's "no trade-off against the
    # baseline" step would keep the baseline whenever nothing weakly dominates it, and the log-divergence
    # term makes every real alternative a trade-off (a needless hard brake would stand).
    searched = archive.filled & (archive.source != SOURCES.index("baseline"))
    chosen = pareto.choose_solution(archive.objectives, base_report.objectives[:, 0], valid=searched,
                                    **pareto.settings(config))                             # [S]
    # A solution must lower the baseline's total; where the chosen one does not, the baseline stands.
    accepted = archive.key.gather(1, chosen[:, None])[:, 0] < ranking_key(base_report)[:, 0]
    # Then the rest of the front in archive order (front first, by key), padded with the solution.
    slots = torch.arange(archive.key.shape[1], device=dev).expand(n_s, -1)
    others = archive.front & (slots != chosen[:, None])
    order = torch.sort((~others).to(torch.int8), dim=1, stable=True).indices[:, :n_f - 1]
    front_valid = torch.cat([torch.ones_like(chosen[:, None], dtype=torch.bool), others.gather(1, order)], 1)
    front_index = torch.where(front_valid, torch.cat([chosen[:, None], order], 1), chosen[:, None])
    actions = torch.zeros(n_s, n_f, n_t, 2, device=dev)
    actions[:, :, span] = take_candidates(archive.actions, front_index)
    actions[:, 0] = torch.where(accepted[:, None, None], actions[:, 0], baseline.ego_actions[:, 0])
    front, report, _, _ = scorer.compute(scen, baseline, actions)
    first = torch.zeros(n_s, 1, dtype=torch.long, device=dev)
    solution, solution_report = take_candidates(front, first), take_candidates(report, first)
    counted = parity.fired_triggers(stack_candidates([baseline, solution]), scen,
                                    [(i, c) for i in range(n_s) for c in (0, 1)])
    fired_base, fired_solution = counted[0::2], counted[1::2]
    removed = [{k: v for k, v in b.items() if v > 0 and s.get(k, 0) == 0} for b, s in zip(fired_base, fired_solution,
                                                                                         strict=True)]
    change = [{name: (_value(base_report.terms[name], i), _value(solution_report.terms[name], i))
               for name in solution_report.terms} for i in range(n_s)]
    source = torch.where(accepted, archive.source.gather(1, chosen[:, None])[:, 0], SOURCES.index("baseline"))
    return SearchResult(
        scenario_ids=[m.scenario_id for m in scen.meta], baseline=baseline, baseline_report=base_report,
        solution=solution, solution_report=solution_report, front=front, front_valid=front_valid,
        front_objectives=report.objectives, front_size=archive.front.sum(1), cost_change=change,
        triggers_baseline=fired_base, triggers_solution=fired_solution, triggers_removed=removed,
        source=[SOURCES[int(s)] for s in source.tolist()], iterations=iterations, candidates=candidates,
        early_stopped=stopped, method=p.method, seed=seed, device=str(dev))


def _value(term: costs.CostValue, i: int) -> float:
    """Scenario i's value of a C = 1 term (NaN where the term does not apply)."""
    return float(term.value[i, 0]) if bool(term.valid[i, 0]) else float("nan")


# --- the pair ----------------------------------------------------------------------------------------------------


def solution_pair(scen: ScenarioBatch, result: SearchResult, index: int, config: ReplayConfig, policy_version: str,
                  robust: Any = None, created_ms: int = 0) -> Any:
    """The `ScenarioSolutionPair` of scenario `index` of a search: its baseline, the returned front (the
    solution first), the per-term cost change, the triggers of both, the provenance and, when given, the
    `robustness.RobustnessResult` verdict. `created_ms` is the caller's clock (epoch ms)."""
    from fleetloop.replay.pair import Provenance, Robustness, build_pair, ego_trajectories

    members = result.front_valid[index].nonzero()[:, 0]
    baseline = {k: v[0] for k, v in ego_trajectories(result.baseline, index, [0]).items()}
    search_version = hashlib.sha1(json.dumps(dict(config.section("search")), sort_keys=True).encode()).hexdigest()
    provenance = Provenance(policy_version=policy_version, search_config_version=f"search+{search_version[:8]}",
                            seed=result.seed, device=result.device, replay_config_version=config.version,
                            created_ms=created_ms)
    verdict = None
    if robust is not None:
        summary = robust.summary(index)
        verdict = Robustness(win_rate=summary["win_rate"], worst_cost_delta=float(robust.worst_excess[index]),
                             perturbations=summary["perturbations"], kinds=tuple(dict.fromkeys(robust.kinds)),
                             gate_pass_rate=summary["solution_gate_rate"])
    return build_pair(scen, index, baseline, ego_trajectories(result.front, index, members), 0,
                      result.cost_change[index], config, provenance, robustness=verdict,
                      front_objectives=result.front_objectives[index, members],
                      baseline_triggers=result.triggers_baseline[index],
                      solution_triggers=result.triggers_solution[index])
