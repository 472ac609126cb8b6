"""Robustness: does a solution stay better than the baseline when the scene is a little different?

Each of S scenarios is copied R times (`robustness.perturbations`) and every copy perturbed one way,
the kinds taking turns in `robustness.kinds` order, magnitudes drawn from a generator seeded by
(seed, scenario id):

- `speed`: every other agent's motion re-timed by a factor 1 ± `speed_fraction` around the current step
  (the same path, covered faster or slower; speeds scale with it);
- `timing`: every other agent's log shifted by ±1 … `shift_steps` steps (it arrives earlier or later);
- `extra_agent`: a car added in the lane beside the ego's reference lane (left or right), within
  `extra_agent_ahead_m` of the ego, at the ego's speed × `extra_agent_speed_factor`, at constant speed;
- `noise`: perception noise on the other agents' positions, a bias per agent (`position_bias_m`, the
  standard deviation per axis) plus jitter per step (`position_jitter_m`).

Outside the logged window a re-timed track runs on at its end velocity. The solution and the logged
baseline roll out in every copy in one batch (C = 2) and are scored by `costs.evaluate` against the
perturbed baseline. A win is a perturbation where the solution's total is lower than the baseline's;
the worst case is the perturbation where the solution does worst against the baseline.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any

import torch

from fleetloop.replay import costs
from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.scenario import EGO, AgentClass, ScenarioBatch, ScenarioError
from fleetloop.replay.search import lane_reference, ranking_key

KINDS = ("speed", "timing", "extra_agent", "noise")


@dataclass(frozen=True)
class RobustnessSettings:
    """The `robustness:` section of replay.yaml (see the comments there for each number)."""

    perturbations: int
    kinds: tuple[str, ...]
    speed_fraction: float
    shift_steps: int
    extra_agent_ahead_m: tuple[float, float]
    extra_agent_speed_factor: tuple[float, float]
    extra_agent_size_m: tuple[float, float]
    lane_width_m: float
    position_bias_m: float
    position_jitter_m: float
    lane_max_heading_error_rad: float

    @classmethod
    def from_config(cls, config: ReplayConfig) -> RobustnessSettings:
        raw = config.section_fields("robustness", cls.__dataclass_fields__)
        for key in ("kinds", "extra_agent_ahead_m", "extra_agent_speed_factor", "extra_agent_size_m"):
            raw[key] = tuple(raw[key])
        settings = cls(**raw)
        bad = sorted(set(settings.kinds) - set(KINDS))
        if bad or not settings.kinds:
            raise ValueError(f"replay config robustness.kinds: unknown {bad}; choose from {list(KINDS)}")
        if settings.perturbations < 1 or settings.shift_steps < 1:
            raise ValueError("replay config robustness: perturbations >= 1 and shift_steps >= 1")
        return settings


@dataclass
class RobustnessResult:
    """The verdict for S scenarios under R perturbations each.

    `kinds` (R names, the same for every scenario); `magnitude` `[S, R]` in the kind's unit (speed: the
    factor; timing: the shift in steps, + later; extra_agent: the longitudinal offset from the ego, m;
    noise: the bias standard deviation, m). `baseline_total`, `solution_total` `[S, R]` (the costs'
    total, lower better) and `baseline_gates`, `solution_gates` `[S, R]` bool (all hard gates pass);
    `win` `[S, R]`: the solution's total is lower than the baseline's (the costs' total includes a gate
    penalty per failed gate, so a collision outweighs any soft cost). Per scenario `[S]`: `win_rate`,
    `solution_gate_rate` (the fraction of perturbations the solution passes every gate), `worst` (the
    perturbation with the largest solution − baseline total) and `worst_excess` (that difference, lower
    is better).
    """

    scenario_ids: list[str]
    kinds: list[str]
    magnitude: torch.Tensor
    baseline_total: torch.Tensor
    solution_total: torch.Tensor
    baseline_gates: torch.Tensor
    solution_gates: torch.Tensor
    win: torch.Tensor
    win_rate: torch.Tensor
    solution_gate_rate: torch.Tensor
    worst: torch.Tensor
    worst_excess: torch.Tensor

    def summary(self, i: int) -> dict[str, Any]:
        """Scenario i's verdict as plain values (for printing and for the pair's metadata)."""
        w = int(self.worst[i])
        return {"perturbations": len(self.kinds), "win_rate": float(self.win_rate[i]),
                "solution_gate_rate": float(self.solution_gate_rate[i]),
                "worst": {"kind": self.kinds[w], "magnitude": float(self.magnitude[i, w]),
                          "solution_total": float(self.solution_total[i, w]),
                          "baseline_total": float(self.baseline_total[i, w]),
                          "solution_gates_pass": bool(self.solution_gates[i, w])}}


def _uniform(generators: list[torch.Generator], shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return torch.stack([lo + (hi - lo) * torch.rand(shape, generator=g) for g in generators])


def _normal(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def _retime(scen: ScenarioBatch, factor: torch.Tensor, shift: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every non-ego agent's track re-sampled at step c + (t − c) · factor − shift (`factor`, `shift` `[N]`):
    linear between logged steps, at the end velocity beyond the window. Returns the agent fields."""
    n, a, t = scen.x.shape
    c = scen.current_step
    steps = torch.arange(t, device=scen.device, dtype=torch.float32)
    src = c + (steps[None] - c) * factor[:, None] - shift[:, None]                      # [N, T]
    src = src[:, None].expand(n, a, t).clone()
    src[:, EGO] = steps                                                                 # the ego keeps its log
    lo = src.floor().clamp(0, t - 1).long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (src - lo).clamp(0.0, 1.0)
    end = src.round().clamp(0, t - 1).long()
    beyond = (src - src.clamp(0, t - 1)) * scen.dt_s                                    # s outside the window

    def at(v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return v.gather(2, i)

    scale = torch.where(torch.arange(a, device=scen.device)[None, :, None] == EGO, 1.0, factor[:, None, None])
    # beyond the window the log runs on at its end velocity, in the log's own time
    vx, vy = at(scen.vx, end), at(scen.vy, end)
    x = at(scen.x, lo) * (1 - w) + at(scen.x, hi) * w + vx * beyond
    y = at(scen.y, lo) * (1 - w) + at(scen.y, hi) * w + vy * beyond
    vx, vy = vx * scale, vy * scale
    inside = (src >= 0) & (src <= t - 1)
    valid = torch.where(inside, at(scen.valid, lo) & at(scen.valid, hi), at(scen.valid, end))
    filled = at(scen.filled, end) & valid
    zero = torch.zeros_like(x)
    return {"x": torch.where(valid, x, zero), "y": torch.where(valid, y, zero),
            "heading": torch.where(valid, at(scen.heading, end), zero),
            "speed": torch.where(valid, at(scen.speed, end) * scale, zero), "vx": torch.where(valid, vx, zero),
            "vy": torch.where(valid, vy, zero), "valid": valid, "filled": filled}


def perturb(scen: ScenarioBatch, config: ReplayConfig, seed: int) -> tuple[ScenarioBatch, list[str], torch.Tensor]:
    """S × R perturbed copies (scenario-major: copy r of scenario i is row i·R + r) with one more agent slot
    (the extra agent's; unused in the other copies), the R kind names and the magnitudes `[S, R]`."""
    p = RobustnessSettings.from_config(config)
    n_s, n_r, dev = scen.n_scenarios, p.perturbations, scen.device
    kinds = [p.kinds[r % len(p.kinds)] for r in range(n_r)]
    kind = torch.tensor([KINDS.index(k) for k in kinds], device=dev).repeat(n_s)        # [N]
    generators = [torch.Generator().manual_seed(zlib.crc32(f"{seed}:{m.scenario_id}:robustness".encode()))
                  for m in scen.meta]
    # Every draw is made for every copy (then masked by kind), so a copy's numbers do not depend on the others.
    sign = torch.where(_uniform(generators, (n_r,), 0, 1) < 0.5, -1.0, 1.0).to(dev).flatten()
    speed_u = _uniform(generators, (n_r,), 0, 1).to(dev).flatten()
    shift_u = _uniform(generators, (n_r,), 0, 1).to(dev).flatten()
    ahead = _uniform(generators, (n_r,), *p.extra_agent_ahead_m).to(dev).flatten()
    extra_speed = _uniform(generators, (n_r,), *p.extra_agent_speed_factor).to(dev).flatten()
    bias = _normal(generators, (n_r, scen.n_agents, 2)).to(dev).flatten(0, 1) * p.position_bias_m
    jitter = _normal(generators, (n_r, scen.n_agents, scen.n_steps, 2)).to(dev).flatten(0, 1) * p.position_jitter_m

    rep = scen.select(torch.arange(n_s, device=dev).repeat_interleave(n_r))
    is_speed, is_timing = kind == KINDS.index("speed"), kind == KINDS.index("timing")
    is_extra, is_noise = kind == KINDS.index("extra_agent"), kind == KINDS.index("noise")
    factor = torch.where(is_speed, 1.0 + sign * p.speed_fraction * speed_u, torch.ones_like(sign))
    shift = torch.where(is_timing, sign * (1 + (shift_u * p.shift_steps).floor().clamp(max=p.shift_steps - 1)),
                        torch.zeros_like(sign))
    fields = _retime(rep, factor, shift)
    others = (torch.arange(scen.n_agents, device=dev) != EGO)[None, :, None]
    noisy = is_noise[:, None, None] & others & fields["valid"]
    fields["x"] = fields["x"] + torch.where(noisy, bias[:, :, None, 0] + jitter[..., 0], 0.0)
    fields["y"] = fields["y"] + torch.where(noisy, bias[:, :, None, 1] + jitter[..., 1], 0.0)

    # The extra agent: constant speed along the reference lane shifted one lane width left or right.
    ref = lane_reference(rep, p.lane_max_heading_error_rad)
    c = rep.current_step
    ego_v = rep.speed[:, EGO, c].clamp(min=0.0)
    v = ego_v * extra_speed
    s0 = ref.project(torch.stack([rep.x[:, EGO, c], rep.y[:, EGO, c]], -1)[:, None])[:, 0] + ahead   # [N]
    t_rel = (torch.arange(rep.n_steps, device=dev, dtype=torch.float32) - c) * rep.dt_s
    point, tangent = ref.point_at(s0[:, None] + v[:, None] * t_rel[None])                            # [N, T]
    offset = (sign * p.lane_width_m)[:, None, None] * torch.stack([-torch.sin(tangent), torch.cos(tangent)], -1)
    xy = point + offset
    extra = {"x": xy[..., 0], "y": xy[..., 1], "heading": tangent, "speed": v[:, None].expand(-1, rep.n_steps),
             "vx": v[:, None] * torch.cos(tangent), "vy": v[:, None] * torch.sin(tangent)}
    on = is_extra[:, None]
    for name, value in extra.items():
        fields[name] = torch.cat([fields[name], torch.where(on, value, 0.0)[:, None]], 1)
    fields["valid"] = torch.cat([fields["valid"], on.expand(-1, rep.n_steps)[:, None]], 1)
    fields["filled"] = torch.cat([fields["filled"], torch.zeros_like(fields["valid"][:, :1])], 1)
    length, width = p.extra_agent_size_m

    def slot(values: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.cat([values, new[:, None]], 1)

    out = replace(rep, **fields,
                  length=slot(rep.length, torch.where(is_extra, length, 0.0)),
                  width=slot(rep.width, torch.where(is_extra, width, 0.0)),
                  agent_class=slot(rep.agent_class, torch.where(is_extra, int(AgentClass.CAR),
                                                                int(AgentClass.NONE)).long()),
                  meta=[replace(m, scenario_id=f"{m.scenario_id}~{kinds[j % n_r]}{j % n_r}")
                        for j, m in enumerate(rep.meta)])
    magnitude = torch.where(is_speed, factor, torch.where(is_timing, shift, torch.where(
        is_extra, ahead, torch.full_like(factor, p.position_bias_m))))
    return out, kinds, magnitude.view(n_s, n_r)


def revalidate(scen: ScenarioBatch, world: Any, solution_actions: torch.Tensor, config: ReplayConfig,
               seed: int = 0, baseline_actions: torch.Tensor | None = None) -> RobustnessResult:
    """Roll the solution `[S, T, 2]` (m/s², 1/m) and the baseline (default: `world.baseline_actions`) out in
    every perturbed copy of `scen` in one batch and compare their totals (see the module docstring)."""
    scen.validate()
    n_s, n_t = scen.n_scenarios, scen.n_steps
    if tuple(solution_actions.shape) != (n_s, n_t, 2):
        raise ScenarioError(f"solution actions have shape {tuple(solution_actions.shape)}, expected {(n_s, n_t, 2)}")
    base = world.baseline_actions(scen) if baseline_actions is None else baseline_actions
    perturbed, kinds, magnitude = perturb(scen, config, seed)
    n_r = len(kinds)
    actions = torch.stack([base, solution_actions], 1).repeat_interleave(n_r, 0)         # [S·R, 2, T, 2]
    rollout = world.rollout(perturbed, actions)
    baseline = replace(rollout, **{k: getattr(rollout, k)[:, :1] for k in
                                   ("x", "y", "heading", "speed", "accel", "curvature", "valid", "ego_actions")})
    report = costs.evaluate(rollout, perturbed, baseline, config)
    total = report.total.view(n_s, n_r, 2)
    gates = report.gates_pass.view(n_s, n_r, 2)
    key = ranking_key(report).view(n_s, n_r, 2)        # as the search ranks: the total, gate penalties included
    win = key[..., 1] < key[..., 0]
    excess = key[..., 1] - key[..., 0]
    worst = excess.argmax(1)
    return RobustnessResult(
        scenario_ids=[m.scenario_id for m in scen.meta], kinds=kinds, magnitude=magnitude,
        baseline_total=total[..., 0], solution_total=total[..., 1], baseline_gates=gates[..., 0],
        solution_gates=gates[..., 1], win=win, win_rate=win.float().mean(1),
        solution_gate_rate=gates[..., 1].float().mean(1), worst=worst,
        worst_excess=excess.gather(1, worst[:, None])[:, 0])
