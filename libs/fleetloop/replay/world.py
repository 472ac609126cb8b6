"""The batched world model: the ego on the kinematic bicycle, the other agents by their scenario's model.

All candidates of all scenarios advance together, `[S, C, A]` per step; the only Python loop is over
time. Tensors live on the scenario's device; nothing is random, so a rollout is a pure function of
the scenario, the actions and the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fleetloop.replay.agents import AgentPlan, IdmFollower, IdmParams, agent_models, forward_fill, prepare_agents
from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.dynamics import BicycleBounds, bicycle_step, clamp_actions, inverse_bicycle
from fleetloop.replay.scenario import EGO, Rollout, ScenarioBatch, ScenarioError


@dataclass
class WorldState:
    """The world at step `k`: `[S, C, A]` x, y (m), heading (rad), speed (m/s), valid (bool). Beside them,
    for the car-follower, per follower slot (`AgentPlan.followers`) `[S, C, F]`: `path_s` the arc length
    along its logged path (m), `path_curvature` the path's curvature there (1/m), `leader` the agent slot
    of its current non-ego leader (`EGO` for none; the ego itself is checked every step); `taken_over`
    `[S, C]` whether the ego has left its log in that candidate (latched); and `plan`, the
    candidate-independent preparation of the scenario's agents (built once by `WorldModel.initial`)."""

    x: Tensor
    y: Tensor
    heading: Tensor
    speed: Tensor
    valid: Tensor
    k: int
    path_s: Tensor
    path_curvature: Tensor
    leader: Tensor
    taken_over: Tensor
    plan: AgentPlan


class WorldModel:
    """Rolls ego action sequences out against a batch of scenarios (bounds from `dynamics`, agent
    parameters from `agents` in replay.yaml)."""

    def __init__(self, config: ReplayConfig) -> None:
        self.bounds = BicycleBounds.from_config(config.section("dynamics"))
        self.params = IdmParams.from_config(config.section("agents"))
        self.follower = IdmFollower(self.params, self.bounds)

    def baseline_actions(self, scen: ScenarioBatch) -> Tensor:
        """The logged ego as actions, `[S, T, 2]` (accel m/s², curvature 1/m): the inverse bicycle of the
        ego's log, clamped into the bounds; a step whose inverse is unknown (a gap in the log) repeats
        the last known action; zeros before `current_step` and at the last step."""
        ego = (scen.x[:, EGO], scen.y[:, EGO], scen.heading[:, EGO], scen.speed[:, EGO], scen.valid[:, EGO])
        accel, curvature, known = inverse_bicycle(*ego, scen.dt_s)
        accel, curvature = clamp_actions(accel, curvature, self.bounds)
        # before the first known step the fill takes step 0's action, which is 0 where it is unknown
        actions = torch.stack([forward_fill(accel, known), forward_fill(curvature, known)], dim=-1)
        steps = torch.arange(scen.n_steps, device=scen.device)
        live = (steps >= scen.current_step) & (steps < scen.n_steps - 1)
        return torch.where(live[None, :, None], actions, 0.0)

    def initial(self, scen: ScenarioBatch, n_candidates: int, agent_model: Tensor | None = None) -> WorldState:
        """The state at `current_step` for `n_candidates` copies of each scenario, `[S, C, A]`.
        `agent_model` `[S]` (AgentModel codes) overrides each scenario's own."""
        if n_candidates < 1:
            raise ScenarioError(f"n_candidates must be >= 1, got {n_candidates}")
        if scen.n_steps < 2:
            raise ScenarioError(f"a rollout needs at least 2 steps, the window has {scen.n_steps}")
        plan = prepare_agents(scen, agent_models(scen, agent_model), self.params, self.bounds)
        c = scen.current_step
        s, a = scen.n_scenarios, scen.n_agents

        def at_c(v: Tensor) -> Tensor:
            return v[:, None, :, c].expand(s, n_candidates, a).clone()

        return WorldState(x=at_c(plan.base_x), y=at_c(plan.base_y), heading=at_c(plan.base_heading),
                          speed=at_c(plan.base_speed), valid=at_c(plan.base_valid), k=c,
                          path_s=plan.path_s[:, None, :, 0].expand(s, n_candidates, -1).clone(),
                          path_curvature=plan.path_curvature[:, None, :, 0].expand(s, n_candidates, -1).clone(),
                          leader=torch.full_like(plan.path_s[:, None, :, 0].expand(s, n_candidates, -1), EGO,
                                                 dtype=torch.long),
                          taken_over=torch.zeros(s, n_candidates, dtype=torch.bool, device=scen.device), plan=plan)

    def step(self, state: WorldState, scen: ScenarioBatch, ego_action: Tensor, k: int) -> WorldState:
        """Apply `ego_action` `[S, C, 2]` (accel m/s², curvature 1/m; clamped into the bounds) at step `k`:
        the state at `k + 1`. The other agents move by the scenario's agent model."""
        return self._advance(state, scen, ego_action, k)

    def _advance(self, state: WorldState, scen: ScenarioBatch, ego_action: Tensor, k: int,
                 into: tuple[Tensor, ...] | None = None) -> WorldState:
        """`step`, writing into `into` where given: seven `[S, C, A]` views (x, y, heading, speed, valid at
        k + 1; applied accel, curvature at k) that already hold the candidate-independent values (a
        rollout's outputs), written in place instead of copies."""
        if state.k != k or not scen.current_step <= k < scen.n_steps - 1:
            raise ScenarioError(f"step {k} from a state at step {state.k} in a window of {scen.n_steps} steps "
                                f"starting at {scen.current_step}")
        plan, nxt = state.plan, k + 1

        def base(v: Tensor) -> Tensor:
            return v[:, None, :, nxt]

        if into is None:
            # every candidate starts from the candidate-independent tracks; followers and the ego are written in
            shape = state.x.shape
            x, y, heading, speed, valid, accel, curvature = (v.expand(shape).clone() for v in (
                base(plan.base_x), base(plan.base_y), base(plan.base_heading), base(plan.base_speed),
                base(plan.base_valid), plan.base_accel[:, None, :, k], plan.base_curvature[:, None, :, k]))
        else:
            x, y, heading, speed, valid, accel, curvature = into
        path_s = plan.path_s[:, None, :, nxt - scen.current_step]
        path_curvature = plan.path_curvature[:, None, :, nxt - scen.current_step]
        leader = state.leader
        if plan.has_idm:
            refresh = (k - scen.current_step) % max(1, self.params.leader_refresh_steps) == 0
            at_next, at_k = (plan.base_x, plan.base_y, plan.base_heading, plan.base_speed, plan.base_valid), (
                plan.base_accel, plan.base_curvature)
            logged = [v[:, None, :, nxt].gather(2, plan.followers[:, None]) for v in at_next] + [
                v[:, None, :, k].gather(2, plan.followers[:, None]) for v in at_k]           # [S, 1, F] each
            log_speed, log_valid = logged[3], logged[4]
            moved = self.follower.compute(plan, state.x, state.y, state.heading, state.speed, state.valid,
                                          state.path_s, state.path_curvature, state.leader, path_s, log_speed,
                                          log_valid, scen.dt_s, refresh)
            active = plan.follower_ok[:, None] & state.taken_over[..., None]                  # [S, C, F]
            slots = plan.followers[:, None].expand_as(active)
            for full, mine, log in zip((x, y, heading, speed, valid, accel, curvature),
                                       (moved.x, moved.y, moved.heading, moved.speed, moved.valid, moved.accel,
                                        moved.curvature), logged, strict=True):
                full.scatter_(2, slots, torch.where(active, mine, log))
            path_s = torch.where(active, moved.path_s, path_s)
            path_curvature = torch.where(active, moved.curvature, path_curvature)
            leader = moved.leader
        else:
            path_s, path_curvature = path_s.expand_as(state.path_s), path_curvature.expand_as(state.path_s)

        ego_a, ego_k = clamp_actions(ego_action[..., 0], ego_action[..., 1], self.bounds)
        ex, ey, eh, ev, applied = bicycle_step(state.x[..., EGO], state.y[..., EGO], state.heading[..., EGO],
                                               state.speed[..., EGO], ego_a, ego_k, scen.dt_s,
                                               self.bounds.min_speed_mps)
        x[..., EGO], y[..., EGO], heading[..., EGO], speed[..., EGO] = ex, ey, eh, ev
        valid[..., EGO] = True
        accel[..., EGO], curvature[..., EGO] = applied, ego_k

        logged = scen.valid[:, None, EGO, nxt]
        deviation = torch.hypot(ex - scen.x[:, None, EGO, nxt], ey - scen.y[:, None, EGO, nxt])
        taken_over = state.taken_over | (logged & (deviation > self.params.takeover_deviation_m))
        return WorldState(x=x, y=y, heading=heading, speed=speed, valid=valid, k=nxt, path_s=path_s,
                          path_curvature=path_curvature, leader=leader, taken_over=taken_over, plan=plan)

    def rollout(self, scen: ScenarioBatch, ego_actions: Tensor, agent_model: Tensor | None = None) -> Rollout:
        """Roll `ego_actions` `[S, C, T, 2]` (accel m/s², curvature 1/m) out from `current_step`: a
        `Rollout` `[S, C, A, T]`. Steps before `current_step` repeat the log; the last step's action is
        unused. `agent_model` `[S]` overrides each scenario's agent model."""
        s, a, t = scen.x.shape
        if ego_actions.dim() != 4 or ego_actions.shape[0] != s or ego_actions.shape[2] != t or (
                ego_actions.shape[3] != 2):
            raise ScenarioError(f"ego_actions has shape {tuple(ego_actions.shape)}, expected ({s}, C, {t}, 2)")
        if not bool(torch.isfinite(ego_actions).all()):
            raise ScenarioError("ego_actions holds NaN or infinite values")
        c_n = ego_actions.shape[1]
        state = self.initial(scen, c_n, agent_model)
        plan = state.plan
        full = (s, c_n, a, t)

        def broadcast(v: Tensor) -> Tensor:
            return v[:, None].expand(full).clone()

        # The candidate-independent tracks first (one copy each); each step then writes only the followers
        # and the ego, in place, and its state is a view of step k+1 of these outputs.
        out = Rollout(x=broadcast(plan.base_x), y=broadcast(plan.base_y), heading=broadcast(plan.base_heading),
                      speed=broadcast(plan.base_speed), accel=broadcast(plan.base_accel),
                      curvature=broadcast(plan.base_curvature), valid=broadcast(plan.base_valid),
                      ego_actions=torch.zeros(s, c_n, t, 2, device=scen.device), dt_s=scen.dt_s,
                      current_step=scen.current_step)
        for k in range(scen.current_step, t - 1):
            into = (out.x[..., k + 1], out.y[..., k + 1], out.heading[..., k + 1], out.speed[..., k + 1],
                    out.valid[..., k + 1], out.accel[..., k], out.curvature[..., k])
            state = self._advance(state, scen, ego_actions[:, :, k], k, into)
        out.valid[:, :, EGO, scen.current_step:] = True
        out.accel[..., t - 1] = 0.0
        out.curvature[..., t - 1] = 0.0
        live = slice(scen.current_step, t - 1)
        out.ego_actions[:, :, live, 0] = out.accel[:, :, EGO, live]
        out.ego_actions[:, :, live, 1] = out.curvature[:, :, EGO, live]
        return out
