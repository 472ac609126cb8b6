"""The world model on hand-built scenes: the baseline reproduces the log, the agent models (log, constant
velocity, IDM with its takeover, leader corridor, lookahead and lane speed limit), batching, determinism,
the step/rollout contract and precise errors."""

import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.scenario import (
    AgentClass,
    AgentModel,
    MapKind,
    ScenarioBatch,
    ScenarioError,
    ScenarioMeta,
    concat,
)
from fleetloop.replay.world import WorldModel

DT, STEPS, NOW = 0.1, 61, 10


def scene(agents, model=AgentModel.IDM, speed_limit=20.0, steps=STEPS, now=NOW, ego_speed=15.0,
          ego_curvature=0.0) -> ScenarioBatch:
    """One scenario: the ego at the origin at step `now`, driving `ego_speed` m/s (on an arc of
    `ego_curvature`), and `agents` as (x, y, speed, class) at step `now`, each driving straight along +x
    at constant speed in the log. Three lane centres at y = -3.5, 0, 3.5 with `speed_limit`."""
    a = 1 + len(agents)
    time = (torch.arange(steps, dtype=torch.float32) - now) * DT
    x, y, h, v = (torch.zeros(1, a, steps) for _ in range(4))
    s = ego_speed * time
    if ego_curvature:
        h[0, 0] = s * ego_curvature
        x[0, 0], y[0, 0] = torch.sin(h[0, 0]) / ego_curvature, (1 - torch.cos(h[0, 0])) / ego_curvature
    else:
        x[0, 0] = s
    v[0, 0] = ego_speed
    cls = [int(AgentClass.EGO)]
    for i, (x0, y0, speed, kind) in enumerate(agents, start=1):
        x[0, i], y[0, i], v[0, i] = x0 + speed * time, y0, speed
        cls.append(int(kind))
    lanes = torch.tensor([-3.5, 0.0, 3.5])
    line = torch.linspace(-300.0, 600.0, 10)
    map_xy = torch.stack([line.expand(3, 10), lanes[:, None].expand(3, 10)], -1)[None].clone()
    valid = torch.ones(1, a, steps, dtype=torch.bool)
    return ScenarioBatch(
        x=x, y=y, heading=h, speed=v, vx=v * torch.cos(h), vy=v * torch.sin(h), valid=valid,
        filled=torch.zeros_like(valid), length=torch.full((1, a), 4.5), width=torch.full((1, a), 1.9),
        agent_class=torch.tensor([cls]), map_xy=map_xy, map_valid=torch.ones(1, 3, 10, dtype=torch.bool),
        map_kind=torch.full((1, 3), int(MapKind.LANE_CENTRE)), map_speed_limit_mps=torch.full((1, 3), speed_limit),
        dt_s=DT, current_step=now, meta=[ScenarioMeta(scenario_id="hand-1", agent_model=model)])


@pytest.fixture(scope="module")
def world() -> WorldModel:
    return WorldModel(load_config())


def brake(scen, decel, candidates=1):
    """Ego actions [S, C, T, 2]: the baseline with `decel` m/s² of braking from the current step on."""
    acts = torch.zeros(scen.n_scenarios, candidates, scen.n_steps, 2)
    acts[:, :, scen.current_step:, 0] = -decel
    return acts


def test_baseline_reproduces_the_logged_ego(world):
    """Straight and on an arc (R = 50 m): the baseline rollout stays within 2 cm of the logged ego over 5 s,
    and with the ego on its log the IDM agents replay theirs exactly."""
    for curvature in (0.0, 0.02):
        scen = scene([(-20.0, 0.0, 15.0, AgentClass.CAR), (30.0, 3.5, 12.0, AgentClass.CAR)], ego_curvature=curvature)
        scen.validate()
        actions = world.baseline_actions(scen)
        assert actions.shape == (1, STEPS, 2)
        assert bool((actions[:, :NOW] == 0).all()) and bool((actions[:, -1] == 0).all())
        assert actions[0, NOW:-1, 1].mean().item() == pytest.approx(curvature, abs=1e-4)
        out = world.rollout(scen, actions[:, None])
        assert torch.hypot(out.x[0, 0, 0] - scen.x[0, 0], out.y[0, 0, 0] - scen.y[0, 0]).max().item() < 0.02
        assert torch.equal(out.x[0, 0, 1:], scen.x[0, 1:]) and torch.equal(out.y[0, 0, 1:], scen.y[0, 1:])


def test_baseline_repeats_the_last_known_action_over_a_log_gap(world):
    """Steps 20-22 of the ego's log are missing (on an arc, R = 50 m): the four steps whose inverse is
    unknown repeat step 18's action instead of dropping to zero curvature."""
    scen = scene([], ego_curvature=0.02)
    scen.valid[0, 0, 20:23] = False
    actions = world.baseline_actions(scen)
    assert torch.equal(actions[0, 19:23], actions[0, 18:19].expand(4, 2))
    assert actions[0, 19, 1].item() == pytest.approx(0.02, abs=1e-4)


def test_rollout_layout_and_history(world):
    scen = scene([(-20.0, 0.0, 15.0, AgentClass.CAR), (10.0, 6.0, 1.0, AgentClass.PEDESTRIAN)])
    out = world.rollout(scen, brake(scen, 3.0, candidates=3))
    assert out.x.shape == (1, 3, 3, STEPS) and out.ego_actions.shape == (1, 3, STEPS, 2)
    assert out.valid.dtype == torch.bool and out.dt_s == DT and out.current_step == NOW
    for name in ("x", "y", "heading", "speed"):
        logged = getattr(scen, name)[:, None, :, :NOW + 1].expand(1, 3, 3, -1)
        assert torch.equal(getattr(out, name)[..., :NOW + 1], logged)
    assert bool((out.ego_actions[:, :, :NOW] == 0).all())
    assert out.ego_actions[0, 0, NOW:NOW + 5, 0].tolist() == pytest.approx([-3.0] * 5)
    assert out.accel[0, 0, 0, NOW:NOW + 5].tolist() == pytest.approx([-3.0] * 5)
    assert bool((out.accel[..., -1] == 0).all())


def test_ego_never_reverses_and_stops(world):
    scen = scene([])
    out = world.rollout(scen, brake(scen, 20.0))           # clamped to the 6 m/s² bound
    speed = out.speed[0, 0, 0, NOW:]
    assert bool((speed >= 0).all()) and speed[-1].item() == 0.0
    assert out.ego_actions[0, 0, NOW, 0].item() == pytest.approx(-6.0)
    assert out.x[0, 0, 0, -1].item() == pytest.approx(15.0 ** 2 / 12.0, abs=0.8)   # v²/2a, stepped


def test_log_agents_ignore_the_ego(world):
    scen = scene([(-12.0, 0.0, 15.0, AgentClass.CAR)], model=AgentModel.LOG)
    out = world.rollout(scen, brake(scen, 6.0))
    assert torch.equal(out.x[0, 0, 1], scen.x[0, 1])       # drives into the braking ego: the log is the log
    override = world.rollout(scen, brake(scen, 6.0), agent_model=torch.tensor([int(AgentModel.IDM)]))
    assert override.x[0, 0, 1, -1].item() < scen.x[0, 1, -1].item() - 5.0


def test_constant_velocity_holds_the_current_velocity(world):
    scen = scene([(30.0, 3.5, 12.0, AgentClass.CAR), (10.0, 6.0, 1.0, AgentClass.PEDESTRIAN)],
                 model=AgentModel.CONSTANT_VELOCITY)
    # the log slows the car from the current step on; constant velocity ignores that
    scen.x[0, 1, NOW:] = 30.0 + 6.0 * torch.arange(STEPS - NOW) * DT
    scen.vy[0, 2] = -1.0
    scen.vx[0, 2] = 0.0
    out = world.rollout(scen, brake(scen, 0.0))
    horizon = (STEPS - 1 - NOW) * DT
    assert out.x[0, 0, 1, -1].item() == pytest.approx(30.0 + 12.0 * horizon, abs=1e-3)
    assert out.y[0, 0, 2, -1].item() == pytest.approx(6.0 - horizon, abs=1e-4)
    assert out.x[0, 0, 2, -1].item() == pytest.approx(scen.x[0, 2, NOW].item())
    assert bool(out.valid[0, 0, 1:, NOW:].all())


def test_idm_follower_brakes_for_the_ego_and_keeps_a_gap(world):
    """A car 20 m behind in the ego's lane at the same speed; the ego brakes at 4 m/s² to a stop. In the
    log the follower would run into the ego's stopping point; by IDM it stops behind, with a gap."""
    scen = scene([(-20.0, 0.0, 15.0, AgentClass.CAR), (-20.0, 3.5, 15.0, AgentClass.CAR)], steps=81)
    out = world.rollout(scen, brake(scen, 4.0))
    gap = out.x[0, 0, 0] - out.x[0, 0, 1] - 4.5
    assert gap[NOW:].min().item() > 0.5
    assert out.speed[0, 0, 1, -1].item() < 1.0
    assert out.accel[0, 0, 1, NOW:].min().item() < -2.0
    # the car in the next lane has no leader: it keeps (close to) its speed, only capped by the limit
    assert out.speed[0, 0, 2, -1].item() == pytest.approx(15.0, abs=0.5)


def test_follower_on_a_curve_sees_the_ego_through_the_bent_corridor(world):
    """On an arc of R = 40 m a car 25 m behind the ego is ~7.8 m off its own straight-ahead line; the
    corridor bent by the path curvature still finds the braking ego and the follower stops behind it."""
    k = 1 / 40
    scen = scene([(0.0, 0.0, 12.0, AgentClass.CAR)], ego_speed=12.0, ego_curvature=k, steps=81)
    s = 12.0 * (torch.arange(81, dtype=torch.float32) - NOW) * DT - 25.0
    scen.heading[0, 1] = s * k
    scen.x[0, 1], scen.y[0, 1] = torch.sin(s * k) / k, (1 - torch.cos(s * k)) / k
    scen.vx[0, 1], scen.vy[0, 1] = 12.0 * torch.cos(s * k), 12.0 * torch.sin(s * k)
    acts = world.baseline_actions(scen)[:, None].clone()
    acts[:, :, NOW:-1, 0] = -4.0
    out = world.rollout(scen, acts)
    gap = torch.hypot(out.x[0, 0, 0] - out.x[0, 0, 1], out.y[0, 0, 0] - out.y[0, 0, 1]) - 4.5
    assert gap[NOW:].min().item() > 1.0
    assert out.speed[0, 0, 1, -1].item() < 1.0
    on_arc = torch.hypot(out.x[0, 0, 1], out.y[0, 0, 1] - 1 / k) - 1 / k        # stays on its logged path
    assert on_arc.abs().max().item() < 0.05


def test_takeover_only_once_the_ego_leaves_its_log(world):
    """Below the 1 m deviation the IDM agents replay their log; the takeover is per candidate."""
    scen = scene([(-20.0, 0.0, 15.0, AgentClass.CAR)])
    acts = torch.zeros(1, 2, STEPS, 2)
    acts[0, 0, NOW, 0] = -1.0                     # 0.1 s at -1 m/s²: ~0.5 m behind the log by the end
    acts[0, 1, NOW:, 0] = -3.0
    out = world.rollout(scen, acts)
    assert torch.hypot(out.x[0, 0, 0] - scen.x[0, 0], out.y[0, 0, 0] - scen.y[0, 0]).max().item() < 1.0
    assert torch.equal(out.x[0, 0, 1], scen.x[0, 1])
    assert not torch.equal(out.x[0, 1, 1], scen.x[0, 1])


def test_lookahead_grows_with_speed(world):
    """A stopped car 150 m ahead of a 25 m/s follower, the ego off in the next lane braking (so the
    takeover happens at once). A fixed 50 m lookahead would see it only 2 s before impact; the speed-based
    lookahead (~2× the desired gap) makes the follower brake while still more than 100 m away and creep
    up to it without contact. The stopped car itself stays put (never ahead of its log)."""
    scen = scene([(-150.0, 0.0, 25.0, AgentClass.CAR), (0.0, 0.0, 0.0, AgentClass.CAR)], speed_limit=30.0,
                 ego_speed=10.0, steps=111)
    scen.y[0, 0] = 3.5
    out = world.rollout(scen, brake(scen, 2.0))
    follower = out.x[0, 0, 1]
    first_brake = int((out.accel[0, 0, 1, NOW:] < -0.5).nonzero()[0]) + NOW
    assert (scen.x[0, 2, NOW] - follower[first_brake]).item() > 100.0
    assert bool((follower[NOW:] < -4.5 - 1.0).all()) and out.speed[0, 0, 1, -1].item() < 3.0
    assert torch.equal(out.x[0, 0, 2], scen.x[0, 2])


def test_idm_agent_leaving_the_log_is_gone_not_parked(world):
    """A car ahead leaves the log (out of range) at step 40; after the takeover it drives its log and is
    invalid from there on. A follower held back by the braking ego stays valid while it lags behind its
    last logged point, though its log has ended."""
    scen = scene([(30.0, 0.0, 20.0, AgentClass.CAR), (-15.0, 0.0, 15.0, AgentClass.CAR)])
    scen.valid[0, 1, 40:] = False
    scen.valid[0, 2, 50:] = False
    out = world.rollout(scen, brake(scen, 4.0))
    assert not bool(out.valid[0, 0, 1, 40:].any()) and bool(out.valid[0, 0, 1, :40].all())
    assert bool(out.valid[0, 0, 2, 50:].all())
    assert out.x[0, 0, 2, -1].item() < scen.x[0, 2, 49].item() - 1.0


def test_desired_speed_from_the_lane_limit(world):
    """v0 is 30 m/s capped by the nearest lane centre running the agent's way within 5 m; an oncoming
    or off-map agent gets the uncapped 30 m/s."""
    scen = scene([(30.0, 3.5, 12.0, AgentClass.CAR), (30.0, 1.0, 12.0, AgentClass.CAR),
                  (30.0, 40.0, 12.0, AgentClass.CAR), (30.0, -3.5, 12.0, AgentClass.CAR)], speed_limit=13.9)
    scen.heading[0, 4] = 3.1
    plan = world.initial(scen, 1).plan
    assert plan.followers[0].tolist() == [1, 2, 3, 4]
    assert plan.desired_speed[0].tolist() == pytest.approx([13.9, 13.9, 30.0, 30.0])


def test_idm_agent_never_ahead_of_its_log(world):
    """A free-road agent after the takeover drives exactly its log (it may only fall behind it)."""
    scen = scene([(30.0, 3.5, 25.0, AgentClass.CAR), (-30.0, 0.0, 18.0, AgentClass.CAR)], speed_limit=20.0)
    out = world.rollout(scen, brake(scen, 6.0))
    assert torch.allclose(out.x[0, 0, 1], scen.x[0, 1]) and torch.allclose(out.speed[0, 0, 1], scen.speed[0, 1])
    assert bool((out.x[0, 0, 2] <= scen.x[0, 2] + 1e-4).all())
    assert out.x[0, 0, 2, -1].item() < scen.x[0, 2, -1].item() - 5.0


def test_pedestrians_and_static_objects_replay_their_log_under_idm(world):
    scen = scene([(8.0, 0.0, 0.0, AgentClass.CONE), (15.0, 2.0, 1.2, AgentClass.PEDESTRIAN)])
    out = world.rollout(scen, brake(scen, 5.0))
    assert torch.equal(out.x[0, 0, 1:], scen.x[0, 1:]) and torch.equal(out.y[0, 0, 1:], scen.y[0, 1:])


def test_pedestrian_in_the_corridor_is_a_leader(world):
    """A pedestrian standing in the lane ahead stops an IDM car once the ego leaves its log."""
    scen = scene([(40.0, 0.0, 0.0, AgentClass.PEDESTRIAN), (-10.0, 0.0, 15.0, AgentClass.CAR)], steps=91)
    scen.y[0, 0] = -3.5
    out = world.rollout(scen, brake(scen, 3.0))
    assert out.x[0, 0, 2, -1].item() < 40.0 - 4.5 / 2
    assert out.speed[0, 0, 2, -1].item() < 0.5


def test_batched_equals_one_at_a_time_and_is_deterministic(world):
    """Scenarios of different agent models and candidates of different actions do not leak into each other."""
    agents = [(-20.0, 0.0, 15.0, AgentClass.CAR), (30.0, 0.0, 10.0, AgentClass.CAR), (0.0, 3.5, 14.0, AgentClass.CAR)]
    scens = [scene(agents, model=m) for m in (AgentModel.IDM, AgentModel.CONSTANT_VELOCITY, AgentModel.LOG)]
    batch = concat(scens)
    acts = torch.stack([brake(batch, d)[:, 0] for d in (0.0, 2.0, 5.0, -1.0)], dim=1)
    acts[:, 3, :, 1] = 0.05
    out = world.rollout(batch, acts)
    again = world.rollout(batch, acts)
    assert all(torch.equal(getattr(out, f), getattr(again, f)) for f in ("x", "y", "heading", "speed", "valid"))
    for i, one in enumerate(scens):
        for c in range(4):
            single = world.rollout(one, acts[i:i + 1, c:c + 1])
            for f in ("x", "y", "heading", "speed", "accel", "curvature"):
                assert torch.allclose(getattr(single, f)[0, 0], getattr(out, f)[i, c], atol=1e-5), (i, c, f)


def test_step_matches_rollout(world):
    scen = scene([(-20.0, 0.0, 15.0, AgentClass.CAR), (25.0, 0.0, 12.0, AgentClass.CAR)])
    acts = brake(scen, 3.0, candidates=2)
    acts[:, 1, :, 1] = -0.02
    out = world.rollout(scen, acts)
    state = world.initial(scen, 2)
    assert state.x.shape == (1, 2, 3) and state.k == NOW
    for k in range(NOW, STEPS - 1):
        state = world.step(state, scen, acts[:, :, k], k)
        assert torch.allclose(state.x, out.x[..., k + 1]) and torch.allclose(state.heading, out.heading[..., k + 1])
    assert state.k == STEPS - 1


def test_bad_input_is_a_precise_error(world):
    scen = scene([(-20.0, 0.0, 15.0, AgentClass.CAR)])
    with pytest.raises(ScenarioError, match="ego_actions has shape"):
        world.rollout(scen, torch.zeros(1, 2, STEPS, 3))
    nan = brake(scen, 1.0)
    nan[0, 0, 20, 0] = float("nan")
    with pytest.raises(ScenarioError, match="NaN"):
        world.rollout(scen, nan)
    with pytest.raises(ScenarioError, match="agent_model override"):
        world.rollout(scen, brake(scen, 1.0), agent_model=torch.tensor([1, 2]))
    with pytest.raises(ScenarioError, match="outside"):
        world.rollout(scen, brake(scen, 1.0), agent_model=torch.tensor([7]))
    state = world.initial(scen, 1)
    with pytest.raises(ScenarioError, match="step 12 from a state at step 10"):
        world.step(state, scen, torch.zeros(1, 1, 2), 12)
    with pytest.raises(ScenarioError, match="n_candidates"):
        world.initial(scen, 0)
    with pytest.raises(KeyError, match="agents keys missing"):
        WorldModel(load_config(overrides={"agents": {"idm": {"headway_s": None}}}))
