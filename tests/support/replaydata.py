"""Hand-built scenarios and rollouts for the replay's cost, Pareto and parity tests (no world model):
a straight two-lane road along +x, the ego in the right lane at the origin, agents placed by the test."""

from __future__ import annotations

import torch
from fleetloop.replay.scenario import AgentClass, MapKind, Rollout, ScenarioBatch, ScenarioMeta

DT = 0.1
LANE_Y = (0.0, 3.5)            # lane centres (m)
EDGE_Y = (-1.75, 5.25)         # road edges (m)
LIMIT_MPS = 13.9               # 50 km/h


def road_map(s: int, length_m: float = 300.0, spacing_m: float = 5.0) -> dict[str, torch.Tensor]:
    """Two lane centres and two road edges from x = −50 m, vertices every `spacing_m`."""
    xs = torch.arange(-50.0, length_m, spacing_m)
    v = xs.numel()
    lines = [torch.stack([xs, torch.full_like(xs, y)], -1) for y in LANE_Y + EDGE_Y]
    xy = torch.stack(lines)[None].expand(s, -1, -1, -1).clone()
    kind = torch.tensor([MapKind.LANE_CENTRE] * 2 + [MapKind.ROAD_EDGE] * 2)[None].expand(s, -1).clone()
    limit = torch.tensor([LIMIT_MPS, LIMIT_MPS, float("nan"), float("nan")])[None].expand(s, -1).clone()
    return {"map_xy": xy, "map_valid": torch.ones(s, 4, v, dtype=torch.bool), "map_kind": kind,
            "map_speed_limit_mps": limit}


def scenario(agents: list[tuple[float, float, float]], t: int = 50, current_step: int = 10, s: int = 1,
             ego_speed_mps: float = 10.0, agent_class: AgentClass = AgentClass.CAR) -> ScenarioBatch:
    """The ego at the origin at `current_step` driving `ego_speed_mps` along +x (logged at constant
    speed); agents given as (x at current_step, y, speed along +x), 4.5 × 1.8 m, constant speed."""
    a = 1 + len(agents)
    time = (torch.arange(t) - current_step) * DT
    x = torch.zeros(s, a, t)
    y = torch.zeros(s, a, t)
    speed = torch.zeros(s, a, t)
    x[:, 0] = ego_speed_mps * time
    speed[:, 0] = ego_speed_mps
    for i, (ax, ay, av) in enumerate(agents, start=1):
        x[:, i] = ax + av * time
        y[:, i] = ay
        speed[:, i] = av
    cls = torch.full((s, a), int(agent_class))
    cls[:, 0] = AgentClass.EGO
    return ScenarioBatch(
        x=x, y=y, heading=torch.zeros(s, a, t), speed=speed, vx=speed.clone(), vy=torch.zeros(s, a, t),
        valid=torch.ones(s, a, t, dtype=torch.bool), filled=torch.zeros(s, a, t, dtype=torch.bool),
        length=torch.full((s, a), 4.5), width=torch.full((s, a), 1.8), agent_class=cls, dt_s=DT,
        current_step=current_step, meta=[ScenarioMeta(scenario_id=f"hand-{i}", t0_ms=1_700_000_000_000)
                                         for i in range(s)], **road_map(s))


def drive(scen: ScenarioBatch, accel: torch.Tensor, curvature: torch.Tensor | None = None) -> Rollout:
    """Roll the ego out by a unicycle/bicycle Euler step from `current_step` with `accel` `[S, C, T]`
    (m/s²) and `curvature` `[S, C, T]` (1/m); the other agents replay the scenario's log."""
    s, c, t = accel.shape
    curvature = torch.zeros_like(accel) if curvature is None else curvature
    full = (s, c, scen.n_agents, t)
    x, y, h, v = (getattr(scen, n)[:, None].expand(full).clone() for n in ("x", "y", "heading", "speed"))
    acc, cur = torch.zeros(full), torch.zeros(full)
    for k in range(scen.current_step, t - 1):
        a, kk = accel[..., k], curvature[..., k]
        vk = v[:, :, 0, k]
        x[:, :, 0, k + 1] = x[:, :, 0, k] + vk * torch.cos(h[:, :, 0, k]) * DT
        y[:, :, 0, k + 1] = y[:, :, 0, k] + vk * torch.sin(h[:, :, 0, k]) * DT
        h[:, :, 0, k + 1] = h[:, :, 0, k] + vk * kk * DT
        v[:, :, 0, k + 1] = (vk + a * DT).clamp_min(0.0)
        acc[:, :, 0, k] = torch.where(vk + a * DT > 0, a, -vk / DT)
        cur[:, :, 0, k] = kk
    actions = torch.stack([acc[:, :, 0], cur[:, :, 0]], -1)
    actions[:, :, :scen.current_step] = 0.0
    return Rollout(x=x, y=y, heading=h, speed=v, accel=acc, curvature=cur,
                   valid=scen.valid[:, None].expand(full).clone(), ego_actions=actions, dt_s=DT,
                   current_step=scen.current_step)


def constant(scen: ScenarioBatch, values: list[float]) -> torch.Tensor:
    """`[S, len(values), T]`: candidate i applies values[i] at every step."""
    return torch.tensor(values)[None, :, None].expand(scen.n_scenarios, -1, scen.n_steps).clone()
