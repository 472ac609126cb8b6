"""How the non-ego agents move in a rollout: log replay, constant velocity, or a reactive car-follower.

The agent model is chosen per scenario (`ScenarioMeta.agent_model`, or an override tensor `[S]`):

- `LOG`: every agent replays its log, whatever the ego does.
- `CONSTANT_VELOCITY`: every agent known at `current_step` holds its velocity (vx, vy) and heading.
- `IDM`: vehicles known at `current_step` replay their log until the ego leaves its own log (its position
  deviates from the logged ego by more than `agents.takeover_deviation_m`, per candidate, latched);
  from then on they drive the Intelligent Driver Model along their own logged path (the path is kept,
  the progress along it is IDM's, never ahead of the log: they yield, they do not drive more boldly
  than they did, so a parked or stalled car stays put). Pedestrians, cyclists and static objects
  replay their log.

Agents unknown at `current_step` enter as logged under every model. Only the IDM vehicles after the
takeover depend on the candidate; everything else is one `[S, A, T]` track broadcast over candidates
(`AgentPlan.base_*`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fleetloop.replay.dynamics import BicycleBounds, inverse_bicycle, wrap_angle
from fleetloop.replay.scenario import EGO, VEHICLE_CLASSES, AgentModel, MapKind, ScenarioBatch, ScenarioError

_INF = float("inf")
_MIN_GAP_M = 0.1            # IDM's (s*/s)² is singular at contact; a touching leader reads as 0.1 m
_EXTENSION_M = 1000.0       # a straight piece past a path's last logged point: every path has a segment to
                            # interpolate on, even a one-step window (agents never pass their log's end)
_MAX_ARC_RAD = 1.5          # the parabolic corridor holds up to ~86° of arc; beyond it nothing counts as ahead


@dataclass(frozen=True)
class IdmParams:
    """Car-follower parameters (the `agents` section of replay.yaml; units in the names)."""

    takeover_deviation_m: float
    desired_speed_mps: float
    min_gap_m: float
    headway_s: float
    accel_mps2: float
    decel_mps2: float
    exponent: float
    lookahead_min_m: float
    lookahead_factor: float
    corridor_margin_m: float
    leader_candidates: int
    candidate_stride_steps: int
    leader_refresh_steps: int
    lane_match_m: float

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> IdmParams:
        flat = {"takeover_deviation_m": section.get("takeover_deviation_m"), **section.get("idm", {})}
        missing = [k for k in cls.__dataclass_fields__ if flat.get(k) is None]
        if missing:
            raise KeyError(f"replay config: agents keys missing: {missing}")
        ints = ("leader_candidates", "candidate_stride_steps", "leader_refresh_steps")
        return cls(**{k: int(flat[k]) if k in ints else float(flat[k]) for k in cls.__dataclass_fields__})

    def lookahead_m(self, speed: Tensor) -> Tensor:
        """How far ahead (m) a follower at `speed` (m/s) looks for a leader: `lookahead_factor` × IDM's
        desired gap to a stopped leader, s0 + vT + v²/(2√(ab)), so that a leader just beyond it would
        have contributed at most 1/factor² of `accel_mps2` of braking; never under `lookahead_min_m`."""
        v = speed.clamp(min=0.0)
        gap = self.min_gap_m + v * self.headway_s + v * v / (2.0 * (self.accel_mps2 * self.decel_mps2) ** 0.5)
        return (self.lookahead_factor * gap).clamp(min=self.lookahead_min_m)


@dataclass
class AgentPlan:
    """What a batch of scenarios needs to move its agents, prepared once per rollout.

    `base_*` `[S, A, T]`: each agent's track when it does not depend on the candidate (log, or constant
    velocity), forward-filled from `current_step` over gaps in the log (`base_valid` keeps the log's
    mask). The car-following vehicles are gathered into F follower slots (F = the most IDM vehicles of
    any scenario, so padding agents cost nothing): `followers` `[S, F]` their agent slots (`EGO` where
    padding) with `follower_ok`. Per follower: paths `[S, F, P]` (P = T − current_step + 1), the logged
    positions from `current_step` on plus a far extension, with arc length `path_s` (m), heading and
    curvature; `path_end_s` `[S, F]` the arc length of its last logged point; `leaders` `[S, F, K]`
    the agent slots that can become its non-ego leader, with `leaders_valid`; `desired_speed` `[S, F]`
    (m/s). `length`, `width` `[S, A]` (m) of every agent.
    """

    base_x: Tensor
    base_y: Tensor
    base_heading: Tensor
    base_speed: Tensor
    base_valid: Tensor
    base_accel: Tensor
    base_curvature: Tensor
    followers: Tensor
    follower_ok: Tensor
    has_idm: bool
    path_x: Tensor
    path_y: Tensor
    path_heading: Tensor
    path_curvature: Tensor
    path_s: Tensor
    path_end_s: Tensor
    leaders: Tensor
    leaders_valid: Tensor
    desired_speed: Tensor
    length: Tensor
    width: Tensor


def agent_models(scen: ScenarioBatch, override: Tensor | None = None) -> Tensor:
    """The agent model code (`AgentModel`) per scenario, `[S]` int64 on the scenario's device."""
    if override is None:
        return torch.tensor([int(m.agent_model) for m in scen.meta], dtype=torch.long, device=scen.device)
    if tuple(override.shape) != (scen.n_scenarios,):
        raise ScenarioError(f"agent_model override has shape {tuple(override.shape)}, expected ({scen.n_scenarios},)")
    known = torch.tensor([int(m) for m in AgentModel], device=override.device)
    if not bool(torch.isin(override, known).all()):
        raise ScenarioError(f"agent_model override holds codes outside {[m.name for m in AgentModel]}")
    return override.to(device=scen.device, dtype=torch.long)


def forward_fill(values: Tensor, valid: Tensor) -> Tensor:
    """Each invalid step takes the last valid value before it along the last axis (the first step's
    value where none is valid before)."""
    steps = torch.arange(values.shape[-1], device=values.device).expand_as(values)
    last = torch.where(valid, steps, 0).cummax(dim=-1).values
    return values.gather(-1, last)


def _lane_desired_speed(scen: ScenarioBatch, params: IdmParams) -> Tensor:
    """IDM's desired speed per agent `[S, A]` (m/s): `desired_speed_mps` capped by the speed limit of the
    nearest lane centre running the agent's way (within ±90° of its heading) within `lane_match_m` of
    its position at `current_step`."""
    c = scen.current_step
    px, py, ph = scen.x[:, :, c], scen.y[:, :, c], scen.heading[:, :, c]
    lane = (scen.map_kind == MapKind.LANE_CENTRE)[:, :, None] & scen.map_valid
    seg_ok = lane[:, :, :-1] & lane[:, :, 1:]                                    # [S, P, V-1]
    if seg_ok.shape[-1] == 0:
        return torch.full_like(px, params.desired_speed_mps)
    a, b = scen.map_xy[:, :, :-1].flatten(1, 2), scen.map_xy[:, :, 1:].flatten(1, 2)     # [S, P·(V-1), 2]
    ab = b - a
    direction = torch.atan2(ab[..., 1], ab[..., 0])
    # distance from each agent to each lane segment (the projection clamped onto the segment)
    rel_x, rel_y = px[..., None] - a[:, None, :, 0], py[..., None] - a[:, None, :, 1]       # [S, A, P·(V-1)]
    along = ((rel_x * ab[:, None, :, 0] + rel_y * ab[:, None, :, 1])
             / (ab[..., 0] ** 2 + ab[..., 1] ** 2).clamp(min=1e-9)[:, None]).clamp(0.0, 1.0)
    dist = torch.hypot(rel_x - along * ab[:, None, :, 0], rel_y - along * ab[:, None, :, 1])
    aligned = wrap_angle(direction[:, None, :] - ph[..., None]).abs() <= torch.pi / 2
    dist = torch.where(seg_ok.flatten(1)[:, None, :] & aligned, dist, _INF)      # [S, A, P·(V-1)]
    best, where = dist.min(dim=-1)
    poly = where // seg_ok.shape[-1]
    limit = scen.map_speed_limit_mps.gather(1, poly)
    found = (best <= params.lane_match_m) & torch.isfinite(limit)
    return torch.where(found, limit.clamp(max=params.desired_speed_mps), params.desired_speed_mps)


def _leader_candidates(slots: Tensor, bx: Tensor, by: Tensor, bh: Tensor, bcurv: Tensor, bvalid: Tensor,
                       corridor: Tensor, speed: Tensor, params: IdmParams) -> tuple[Tensor, Tensor]:
    """For each follower (agent `slots` `[S, F]`), the K other non-ego agents that share its corridor at
    some (sub-sampled) logged step, ahead or behind within its lookahead, nearest first: `[S, F, K]`
    agent slots and validity. The per-step search then checks only these and the ego, which keeps it
    O(F·K) instead of O(A²); an agent that never shares a vehicle's corridor in the log is assumed not
    to become its leader. Tracks are `[S, A, t]`, `corridor` `[S, A, A]` (m)."""
    s, a, t = bx.shape
    f = slots.shape[1]

    def own(v: Tensor) -> Tensor:
        return v.gather(1, slots[..., None].expand(s, f, t))

    dx = bx[:, None, :, :] - own(bx)[:, :, None, :]                              # [S, F, A, t]
    dy = by[:, None, :, :] - own(by)[:, :, None, :]
    cos, sin = torch.cos(own(bh))[:, :, None, :], torch.sin(own(bh))[:, :, None, :]
    lon = dx * cos + dy * sin
    lat = dy * cos - dx * sin
    kappa = own(bcurv)[:, :, None, :]
    reach = params.lookahead_m(own(speed))[:, :, None, :]
    others = slots[..., None] != torch.arange(a, device=bx.device)                # [S, F, A]
    others[..., EGO] = False
    width = corridor.gather(1, slots[..., None].expand(s, f, a))
    shared = (own(bvalid)[:, :, None, :] & bvalid[:, None, :, :] & others[..., None]
              & (lon.abs() <= reach) & ((kappa * lon).abs() <= _MAX_ARC_RAD)
              & ((lat - 0.5 * kappa * lon * lon).abs() <= width[..., None]))
    score = torch.where(shared, lon.abs(), _INF).amin(dim=-1)                    # [S, F, A]
    k = max(0, min(params.leader_candidates, a - 2))
    best, index = torch.topk(score, k, dim=-1, largest=False)
    return index, torch.isfinite(best)


def prepare_agents(scen: ScenarioBatch, models: Tensor, params: IdmParams, bounds: BicycleBounds) -> AgentPlan:
    """Everything about the agents of `scen` that does not depend on the candidate (see `AgentPlan`)."""
    c, dt = scen.current_step, scen.dt_s
    s, a, t = scen.x.shape
    device = scen.device
    now = scen.valid[:, :, c]
    slot = torch.arange(a, device=device)
    not_ego = (slot != EGO)[None, :]
    vehicle = torch.isin(scen.agent_class, torch.tensor([int(v) for v in VEHICLE_CLASSES], device=device))
    cv = (models == AgentModel.CONSTANT_VELOCITY)[:, None] & now & not_ego
    idm = (models == AgentModel.IDM)[:, None] & now & not_ego & vehicle

    # Forward-fill the known-at-c agents over log gaps from c on, so a takeover never starts from zeros.
    future = torch.zeros(s, a, t, dtype=torch.bool, device=device)
    future[:, :, c:] = now[..., None]
    fill_mask = scen.valid | ~future
    bx, by = forward_fill(scen.x, fill_mask), forward_fill(scen.y, fill_mask)
    bh, bv = forward_fill(scen.heading, fill_mask), forward_fill(scen.speed, fill_mask)
    accel, curvature, _ = inverse_bicycle(bx, by, bh, bv, scen.valid, dt)
    accel, curvature = torch.where(future, accel, 0.0), torch.where(future, curvature, 0.0)
    base_valid = scen.valid.clone()

    # Constant velocity: hold (vx, vy), heading and speed of step c.
    elapsed = (torch.arange(t, device=device, dtype=scen.x.dtype) - c).clamp(min=0) * dt
    cvx, cvy = scen.vx[:, :, c:c + 1], scen.vy[:, :, c:c + 1]
    cv_t = cv[..., None] & future
    bx = torch.where(cv_t, scen.x[:, :, c:c + 1] + cvx * elapsed, bx)
    by = torch.where(cv_t, scen.y[:, :, c:c + 1] + cvy * elapsed, by)
    bh = torch.where(cv_t, scen.heading[:, :, c:c + 1], bh)
    bv = torch.where(cv_t, scen.speed[:, :, c:c + 1], bv)
    accel, curvature = torch.where(cv_t, 0.0, accel), torch.where(cv_t, 0.0, curvature)
    base_valid = torch.where(cv_t, True, base_valid)

    # The IDM vehicles first in each scenario's follower slots; padding slots point at the ego, never used.
    n_followers = int(idm.sum(dim=1).max()) if s else 0
    slots = torch.sort((~idm).to(torch.uint8), dim=1, stable=True).indices[:, :n_followers]
    follower_ok = idm.gather(1, slots)
    slots = torch.where(follower_ok, slots, EGO)
    tf = t - c

    def own(v: Tensor) -> Tensor:
        return v[:, :, c:].gather(1, slots[..., None].expand(s, n_followers, tf))

    # Paths: logged positions from c on (forward-filled) plus a straight extension past the last one.
    fx, fy, fh = own(bx), own(by), own(bh)
    path_x = torch.cat([fx, fx[..., -1:] + _EXTENSION_M * torch.cos(fh[..., -1:])], dim=-1)
    path_y = torch.cat([fy, fy[..., -1:] + _EXTENSION_M * torch.sin(fh[..., -1:])], dim=-1)
    path_heading = torch.cat([fh, fh[..., -1:]], dim=-1)
    seg = torch.hypot(path_x.diff(dim=-1), path_y.diff(dim=-1))
    path_s = torch.cat([torch.zeros_like(seg[..., :1]), seg.cumsum(dim=-1)], dim=-1)
    turn = wrap_angle(path_heading.diff(dim=-1))
    seg_curv = torch.where(seg > 0.1, turn / seg.clamp(min=0.1), 0.0)
    path_curvature = torch.cat([seg_curv, torch.zeros_like(seg_curv[..., :1])], dim=-1)
    last_valid = torch.where(own(scen.valid), torch.arange(tf, device=device), 0).amax(dim=-1)
    path_end_s = path_s.gather(-1, last_valid[..., None])[..., 0]

    desired = _lane_desired_speed(scen, params).gather(1, slots)
    corridor = (scen.width[:, :, None] + scen.width[:, None, :]) * 0.5 + params.corridor_margin_m  # [S, i, j]
    sub = slice(c, t, max(1, params.candidate_stride_steps))
    logged_curv = torch.where(scen.valid[:, :, sub], curvature[:, :, sub], 0.0)
    leaders, leaders_valid = _leader_candidates(slots, bx[:, :, sub], by[:, :, sub], bh[:, :, sub], logged_curv,
                                                base_valid[:, :, sub], corridor, bv[:, :, sub], params)
    leaders_valid &= follower_ok[..., None]
    return AgentPlan(base_x=bx, base_y=by, base_heading=bh, base_speed=bv, base_valid=base_valid, base_accel=accel,
                     base_curvature=curvature, followers=slots, follower_ok=follower_ok, has_idm=n_followers > 0,
                     path_x=path_x, path_y=path_y, path_heading=path_heading, path_curvature=path_curvature,
                     path_s=path_s, path_end_s=path_end_s,
                     leaders=leaders, leaders_valid=leaders_valid, desired_speed=desired, length=scen.length,
                     width=scen.width)


@dataclass
class IdmStep:
    """One IDM step's result for every follower slot, `[S, C, F]`: position (m), heading (rad), speed (m/s),
    arc length along the path (m) and path curvature there (1/m), applied acceleration (m/s²), the
    current non-ego leader's agent slot (`EGO` when there is none), validity."""

    x: Tensor
    y: Tensor
    heading: Tensor
    speed: Tensor
    path_s: Tensor
    curvature: Tensor
    accel: Tensor
    leader: Tensor
    valid: Tensor


class IdmFollower:
    """The Intelligent Driver Model along each vehicle's logged path, batched over `[S, C, A]`.

    acceleration = a · (1 − (v / v0)^δ − (s* / gap)²), s* = s0 + max(0, v·T + v·Δv / (2√(ab))), where the
    leader is the nearest agent (the ego included) ahead of the follower within its lateral corridor
    (half-widths plus a margin, bent by the follower's path curvature) and lookahead (`IdmParams.lookahead_m`),
    gap is bumper to bumper and Δv the closing speed along the follower's heading. The ego is checked every
    step; the other agents (the plan's K candidates) every `leader_refresh_steps`, the chosen one every
    step in between. The result is bounded by the bicycle's acceleration bounds and the speed never goes
    negative. v0 is the lane-capped `desired_speed` or the logged speed at that step, whichever is
    higher, and an agent never gets further along its path than its log had it at the same step.
    """

    def __init__(self, params: IdmParams, bounds: BicycleBounds) -> None:
        self.p = params
        self.bounds = bounds

    def compute(self, plan: AgentPlan, x: Tensor, y: Tensor, heading: Tensor, speed: Tensor, valid: Tensor,
                path_s: Tensor, curvature: Tensor, leader: Tensor, log_s: Tensor, log_speed: Tensor,
                log_valid: Tensor, dt: float, refresh: bool) -> IdmStep:
        """Advance every follower one step of `dt` s by IDM. `x` … `valid` are every agent's state `[S, C, A]`;
        `path_s`, `curvature`, `leader` `[S, C, F]` the followers' own; `log_s`, `log_speed`, `log_valid`
        `[S, 1, F]` their logged arc length (m), speed (m/s) and validity at the next step. The caller keeps
        the result only for IDM vehicles after the takeover. `refresh` re-chooses the non-ego leader among
        the plan's candidates."""
        p = self.p
        s, c, _ = x.shape
        f = plan.followers.shape[1]
        # a rollout's state is a strided view of its outputs; gathers read contiguous copies far faster
        x, y, heading, speed, valid = (v.contiguous() for v in (x, y, heading, speed, valid))
        mine = plan.followers[:, None].expand(s, c, f)
        fx, fy, fh, fv = (v.gather(2, mine) for v in (x, y, heading, speed))
        cos, sin = torch.cos(fh), torch.sin(fh)
        reach = p.lookahead_m(fv)
        own = (fx, fy, fh, fv, cos, sin, curvature, reach, plan.width.gather(1, plan.followers)[:, None],
               plan.length.gather(1, plan.followers)[:, None])
        world = (x, y, heading, speed, valid)
        if refresh and plan.leaders.shape[-1] > 0:
            k = plan.leaders.shape[-1]
            candidates = plan.leaders[:, None].expand(s, c, f, k)
            gap, _ = self._leading(plan, own, world, candidates, plan.leaders_valid[:, None])
            best, nearest = gap.min(dim=-1)
            leader = torch.where(torch.isfinite(best), candidates.gather(-1, nearest[..., None])[..., 0], EGO)
        pair = torch.stack([torch.zeros_like(leader), leader], dim=-1)             # the ego and the chosen agent
        gap, along = self._leading(plan, own, world, pair, plan.follower_ok[:, None, :, None], with_speed=True)
        gap, nearest = gap.min(dim=-1)
        closing = fv - along.gather(-1, nearest[..., None])[..., 0]
        desired_gap = p.min_gap_m + (fv * p.headway_s
                                     + fv * closing / (2.0 * (p.accel_mps2 * p.decel_mps2) ** 0.5)).clamp(min=0.0)
        interaction = torch.where(torch.isfinite(gap), (desired_gap / gap.clamp(min=_MIN_GAP_M)) ** 2, 0.0)
        desired = torch.maximum(plan.desired_speed[:, None], log_speed).clamp(min=0.1)
        free = (fv.clamp(min=0.0) / desired) ** p.exponent
        accel = (p.accel_mps2 * (1.0 - free - interaction)).clamp(-self.bounds.decel_max_mps2,
                                                                  self.bounds.accel_max_mps2)
        accel = torch.maximum(accel, -fv.clamp(min=0.0) / dt)     # stop, never reverse
        new_speed = fv + accel * dt
        new_s = path_s + (fv + new_speed) * (0.5 * dt)
        # Never ahead of the log: a reactive agent yields, it does not drive more boldly than it did (a
        # parked or stalled car stays put); once caught up it rejoins its logged speed.
        caught_up = new_s >= log_s
        new_s = torch.where(caught_up, log_s, new_s)
        new_speed = torch.where(caught_up, torch.minimum(new_speed, log_speed), new_speed)
        accel = (new_speed - fv) / dt
        nx, ny, nh, kappa = self._on_path(plan, new_s)
        # Known while the log knows it, or while it lags behind its last logged point; an agent that has
        # reached the end of a log that ends (it left the scene) is gone, not parked there.
        on_log = log_valid | (new_s < plan.path_end_s[:, None] - 1e-3)
        return IdmStep(x=nx, y=ny, heading=nh, speed=new_speed, path_s=new_s, curvature=kappa, accel=accel,
                       leader=leader, valid=on_log)

    def _leading(self, plan: AgentPlan, own: tuple[Tensor, ...], world: tuple[Tensor, ...], others: Tensor,
                 others_ok: Tensor, with_speed: bool = False) -> tuple[Tensor, Tensor | None]:
        """Bumper-to-bumper gap (m, inf where not a leader) from each follower to each agent slot in
        `others` `[S, C, F, n]`, and (with `with_speed`) that agent's speed along the follower's heading."""
        fx, fy, fh, _, cos, sin, kappa, reach, fw, fl = own
        x, y, heading, speed, valid = world
        s, c, f, n = others.shape
        flat = others.reshape(s, c, f * n)

        def of(v: Tensor) -> Tensor:
            return v.expand(s, c, -1).gather(2, flat).view(s, c, f, n)

        dx, dy = of(x) - fx[..., None], of(y) - fy[..., None]
        cos, sin, kappa = cos[..., None], sin[..., None], kappa[..., None]
        lon = dx * cos + dy * sin
        lat = dy * cos - dx * sin
        corridor = (of(plan.width[:, None]) + fw[..., None]) * 0.5 + self.p.corridor_margin_m
        bumpers = (of(plan.length[:, None]) + fl[..., None]) * 0.5
        ahead = (others_ok & of(valid) & (lon > 0.0) & (lon <= reach[..., None]) & (kappa * lon).abs().le(_MAX_ARC_RAD)
                 & (lat - 0.5 * kappa * lon * lon).abs().le(corridor))
        gap = torch.where(ahead, lon - bumpers, _INF)
        along = of(speed) * torch.cos(of(heading) - fh[..., None]) if with_speed else None
        return gap, along

    def _on_path(self, plan: AgentPlan, path_s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Position, heading and path curvature `[S, C, F]` at arc lengths `path_s` `[S, C, F]` (searchsorted
        runs agent-major, as it needs the path's leading dimensions first)."""
        query = path_s.permute(0, 2, 1).contiguous()
        idx = (torch.searchsorted(plan.path_s, query, right=True) - 1).clamp(0, plan.path_s.shape[-1] - 2)
        nxt = idx + 1
        s0 = plan.path_s.gather(-1, idx)
        frac = ((query - s0) / (plan.path_s.gather(-1, nxt) - s0).clamp(min=1e-6)).clamp(0.0, 1.0)

        def lerp(v: Tensor) -> Tensor:
            v0 = v.gather(-1, idx)
            return (v0 + frac * (v.gather(-1, nxt) - v0)).permute(0, 2, 1)

        h0 = plan.path_heading.gather(-1, idx)
        heading = wrap_angle(h0 + frac * wrap_angle(plan.path_heading.gather(-1, nxt) - h0)).permute(0, 2, 1)
        return lerp(plan.path_x), lerp(plan.path_y), heading, plan.path_curvature.gather(-1, idx).permute(0, 2, 1)
