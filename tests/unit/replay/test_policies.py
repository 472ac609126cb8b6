"""Replay policies: observation features on hand-built scenes, the rule's decision, the MLP's bounds, the
registry and its checkpoint checks."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.features import FEATURES, ObservationFeatures
from fleetloop.replay.policies import (
    ActionBounds,
    BehaviourCloningPolicy,
    CheckpointError,
    LoggedPolicy,
    PolicyNotFound,
    RulePolicy,
    checkpoint_paths,
    get_policy,
    list_policies,
    parse_spec,
    save_checkpoint,
)
from fleetloop.replay.scenario import AGENT_FIELDS, AgentClass, MapKind, ScenarioBatch, ScenarioMeta

CONFIG = load_config()
COL = {name: i for i, name in enumerate(FEATURES)}
INPUTS = ("speed_mps", "accel_mps2", "pursuit_curvature_1pm", "lead_gap_m")


def scene(agents: list[tuple[float, float, float, float, float]], lanes: list[tuple[list[tuple[float, float]], float]],
          ego_length: float = 4.5) -> ScenarioBatch:
    """One scenario, one step: agents as (x, y, heading, speed, length) with the ego first (width 2 m
    each); lanes as (vertices, speed limit) lane centres."""
    a, p, v = len(agents), len(lanes), max(len(pts) for pts, _ in lanes)
    st = torch.tensor(agents, dtype=torch.float32).T[:, None, :, None]  # [5, 1, A, 1]
    map_xy = torch.zeros(1, p, v, 2)
    map_valid = torch.zeros(1, p, v, dtype=torch.bool)
    for i, (pts, _) in enumerate(lanes):
        map_xy[0, i, :len(pts)] = torch.tensor(pts)
        map_valid[0, i, :len(pts)] = True
    length = st[4, :, :, 0].clone()
    length[0, 0] = ego_length
    return ScenarioBatch(
        x=st[0], y=st[1], heading=st[2], speed=st[3], vx=st[3] * torch.cos(st[2]), vy=st[3] * torch.sin(st[2]),
        valid=torch.ones(1, a, 1, dtype=torch.bool), filled=torch.zeros(1, a, 1, dtype=torch.bool),
        length=length, width=torch.full((1, a), 2.0),
        agent_class=torch.tensor([[AgentClass.EGO] + [AgentClass.CAR] * (a - 1)]),
        map_xy=map_xy, map_valid=map_valid, map_kind=torch.full((1, p), int(MapKind.LANE_CENTRE)),
        map_speed_limit_mps=torch.tensor([[lim for _, lim in lanes]], dtype=torch.float32),
        dt_s=0.1, current_step=0, meta=[ScenarioMeta(scenario_id="hand")])


def features_of(scen: ScenarioBatch) -> torch.Tensor:
    return ObservationFeatures.from_config(CONFIG.section("policies")).along_log(scen)[0, 0]


STRAIGHT = ([(-50.0, 0.0), (0.0, 0.0), (50.0, 0.0), (100.0, 0.0)], 10.0)
ONCOMING = ([(100.0, 3.5), (-50.0, 3.5)], 16.0)


def test_straight_road_features_have_known_values():
    scen = scene([(0.0, 0.5, 0.05, 8.0, 4.5),      # ego, 0.5 m left of the lane, turned 0.05 rad left
                  (30.0, 0.2, 0.0, 5.0, 4.5),      # leader: 30 m ahead, slower
                  (12.0, 4.5, math.pi, 9.0, 4.5),  # oncoming, beside: not in the corridor
                  (-20.0, 0.0, 0.0, 9.0, 4.5)],    # behind
                 [STRAIGHT, ONCOMING])
    f = features_of(scen)
    assert f[COL["speed_mps"]] == pytest.approx(8.0)
    assert f[COL["heading_error_rad"]] == pytest.approx(0.05, abs=1e-6)
    assert f[COL["lateral_offset_m"]] == pytest.approx(0.5, abs=1e-6)
    assert f[COL["speed_limit_mps"]] == pytest.approx(10.0)
    assert f[COL["preview_limit_mps"]] == pytest.approx(10.0)
    assert f[COL["lane_found"]] == 1.0
    # preview 4 m + 1 s x 8 m/s = 12 m down the lane: target (12, 0) seen from the ego
    c, s = math.cos(0.05), math.sin(0.05)
    fx, fy = c * 12.0 + s * -0.5, -s * 12.0 + c * -0.5
    assert f[COL["pursuit_curvature_1pm"]] == pytest.approx(2 * fy / (fx * fx + fy * fy), rel=1e-4)
    gap_m = 30.0 * c - 0.3 * s - 4.5  # along the ego heading, minus half of each length
    assert f[COL["lead_gap_m"]] == pytest.approx(gap_m, abs=1e-3)
    assert f[COL["lead_closing_mps"]] == pytest.approx(8.0 - 5.0 * math.cos(-0.05), abs=1e-4)
    assert f[COL["lead_present"]] == 1.0


def test_ego_next_to_an_oncoming_lane_keeps_its_own():
    f = features_of(scene([(0.0, 3.2, 0.0, 8.0, 4.5)], [STRAIGHT, ONCOMING]))
    assert f[COL["lateral_offset_m"]] == pytest.approx(3.2, abs=1e-5)
    assert f[COL["speed_limit_mps"]] == pytest.approx(10.0)  # the oncoming lane's 16 m/s is not ours


def test_no_leader_and_no_lane_read_as_defaults():
    f = features_of(scene([(0.0, 40.0, 0.0, 8.0, 4.5), (-10.0, 40.0, 0.0, 8.0, 4.5)], [STRAIGHT]))
    p = CONFIG.section("policies")["features"]
    assert f[COL["lane_found"]] == 0.0
    assert f[COL["lateral_offset_m"]] == 0.0 and f[COL["pursuit_curvature_1pm"]] == 0.0
    assert f[COL["speed_limit_mps"]] == pytest.approx(p["default_speed_limit_mps"])
    assert f[COL["lead_present"]] == 0.0
    assert f[COL["lead_gap_m"]] == pytest.approx(p["lead_range_m"]) and f[COL["lead_closing_mps"]] == 0.0


def test_pure_pursuit_on_an_arc_gives_its_curvature():
    radius = 50.0
    arc = [(radius * math.sin(t), radius * (1 - math.cos(t))) for t in torch.linspace(-0.3, 1.2, 60).tolist()]
    f = features_of(scene([(0.0, 0.0, 0.0, 10.0, 4.5)], [(arc, 12.0)]))
    assert f[COL["pursuit_curvature_1pm"]] == pytest.approx(1 / radius, rel=0.03)
    assert abs(float(f[COL["heading_error_rad"]])) < 0.01


def test_preview_limit_sees_the_slow_piece_ahead():
    fast = ([(-50.0, 0.0), (10.0, 0.0)], 14.0)
    slow = ([(10.0, 0.0), (80.0, 0.0)], 6.0)
    f = features_of(scene([(0.0, 0.0, 0.0, 12.0, 4.5)], [fast, slow]))
    assert f[COL["speed_limit_mps"]] == pytest.approx(14.0)
    assert f[COL["preview_limit_mps"]] == pytest.approx(6.0)


def rule() -> RulePolicy:
    return get_policy("rule@1", CONFIG)


def feature_row(**values: float) -> torch.Tensor:
    base = {"speed_mps": 0.0, "accel_mps2": 0.0, "heading_error_rad": 0.0, "lateral_offset_m": 0.0,
            "speed_limit_mps": 10.0, "preview_limit_mps": 10.0, "pursuit_curvature_1pm": 0.0, "lane_found": 1.0,
            "lead_gap_m": 100.0, "lead_closing_mps": 0.0, "lead_present": 0.0}
    base.update(values)
    return torch.tensor([base[n] for n in FEATURES])


def test_rule_accelerates_from_rest_cruises_at_the_limit_and_brakes_for_a_close_stopped_leader():
    p = CONFIG.section("policies")["rule"]
    bounds = ActionBounds.from_config(CONFIG)
    decide = rule().decide
    assert decide(feature_row())[0] == pytest.approx(p["accel_mps2"])
    cruise = p["speed_factor"] * 10.0
    assert decide(feature_row(speed_mps=cruise))[0] == pytest.approx(0.0, abs=1e-5)
    assert decide(feature_row(speed_mps=12.0))[0] < 0  # above the limit: slows down
    brake = decide(feature_row(speed_mps=10.0, lead_present=1.0, lead_gap_m=8.0, lead_closing_mps=10.0))
    assert brake[0] == pytest.approx(bounds.accel_min_mps2)
    # IDM's interaction term by hand at 5 m/s, 20 m behind a leader 1 m/s slower
    s_star = p["min_gap_m"] + 5.0 * p["headway_s"] + 5.0 / (2 * math.sqrt(p["accel_mps2"] * p["comfort_decel_mps2"]))
    want = p["accel_mps2"] * (1 - (5.0 / cruise) ** p["delta"] - (s_star / 20.0) ** 2)
    got = decide(feature_row(speed_mps=5.0, lead_present=1.0, lead_gap_m=20.0, lead_closing_mps=1.0))
    assert got[0] == pytest.approx(want, rel=1e-5)
    assert decide(feature_row(pursuit_curvature_1pm=0.05))[1] == pytest.approx(0.05)
    assert decide(feature_row(pursuit_curvature_1pm=2.0))[1] == pytest.approx(bounds.curvature_max_1pm)


def bc_policy(seed: int = 0, version: int = 1) -> BehaviourCloningPolicy:
    policy = BehaviourCloningPolicy(ObservationFeatures.from_config(CONFIG.section("policies")),
                                    ActionBounds.from_config(CONFIG), [16, 16], INPUTS, version=version)
    policy.reset_parameters(torch.Generator().manual_seed(seed))
    return policy


def test_mlp_output_stays_inside_the_dynamics_bounds_and_init_is_seeded():
    bounds = ActionBounds.from_config(CONFIG)
    policy = bc_policy()
    with torch.no_grad():
        policy.net[-1].weight.mul_(1e3)  # saturate the tanh
        out = policy.act(torch.randn(500, len(FEATURES), generator=torch.Generator().manual_seed(1)) * 50)
    assert float(out[:, 0].min()) >= bounds.accel_min_mps2 and float(out[:, 0].max()) <= bounds.accel_max_mps2
    assert float(out[:, 1].abs().max()) <= bounds.curvature_max_1pm + 1e-6  # float32 of 0.3
    assert float(out[:, 0].min()) < bounds.accel_min_mps2 + 0.1  # and it does reach the ends
    a, b, c = bc_policy(3), bc_policy(3), bc_policy(4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_specs_parse_and_unknown_ones_name_the_known():
    assert parse_spec("bc@12") == ("bc", 12)
    assert isinstance(get_policy("logged@1", CONFIG), LoggedPolicy)
    assert isinstance(rule(), RulePolicy)
    for bad in ("rule@2", "nope@1", "bc@1"):
        with pytest.raises(PolicyNotFound, match=r"known: logged@1, rule@1"):
            get_policy(bad, CONFIG)
    for malformed in ("rule", "rule@0", "rule@v1", ""):
        with pytest.raises(PolicyNotFound, match="name@version"):
            get_policy(malformed, CONFIG)
    assert issubclass(PolicyNotFound, ValueError)


def test_checkpoint_round_trip_and_tampering(tmp_path):
    policy = bc_policy(seed=5, version=2)
    manifest = save_checkpoint(policy, tmp_path, {"n_scenarios": 0, "seed": 5})
    assert list_policies(tmp_path) == ["logged@1", "rule@1", "bc@2"]
    loaded = get_policy("bc@2", CONFIG, checkpoint_dir=tmp_path)
    assert isinstance(loaded, BehaviourCloningPolicy) and loaded.spec == "bc@2"
    for name, value in policy.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    with pytest.raises(PolicyNotFound, match=r"known: logged@1, rule@1, bc@2"):
        get_policy("bc@3", CONFIG, checkpoint_dir=tmp_path)

    weights, _ = checkpoint_paths(tmp_path, "bc", 2)
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        get_policy("bc@2", CONFIG, checkpoint_dir=tmp_path)

    save_checkpoint(policy, tmp_path, {})
    body = json.loads(manifest.read_text())
    body["features"] = body["features"][:-1] + ["lane_colour"]
    manifest.write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="features"):
        get_policy("bc@2", CONFIG, checkpoint_dir=tmp_path)

    weights.unlink()
    with pytest.raises(PolicyNotFound, match="missing"):
        get_policy("bc@2", CONFIG, checkpoint_dir=tmp_path)


class StraightWorld:
    """A stand-in world for the plan loop: the ego moves by the bicycle, the others stand still."""

    def baseline_actions(self, scen: ScenarioBatch) -> torch.Tensor:
        return torch.full((scen.n_scenarios, scen.n_steps, 2), 0.25)

    def initial(self, scen: ScenarioBatch, n_candidates: int) -> SimpleNamespace:
        k = scen.current_step
        return SimpleNamespace(**{n: getattr(scen, n)[:, None, :, k].expand(-1, n_candidates, -1).clone()
                                  for n in ("x", "y", "heading", "speed", "valid")}, k=k)

    def step(self, state: SimpleNamespace, scen: ScenarioBatch, action: torch.Tensor, k: int) -> SimpleNamespace:
        x, y, h, v = (t.clone() for t in (state.x, state.y, state.heading, state.speed))
        v_new = (v[..., 0] + action[..., 0] * scen.dt_s).clamp_min(0.0)
        ds = 0.5 * (v[..., 0] + v_new) * scen.dt_s
        mid = h[..., 0] + 0.5 * action[..., 1] * ds
        x[..., 0] += ds * torch.cos(mid)
        y[..., 0] += ds * torch.sin(mid)
        h[..., 0] += action[..., 1] * ds
        v[..., 0] = v_new
        return SimpleNamespace(x=x, y=y, heading=h, speed=v, valid=state.valid, k=k + 1)


def long_scene(steps: int, ego_y: float) -> ScenarioBatch:
    one = scene([(0.0, ego_y, 0.0, 8.0, 4.5)], [([(-50.0, 0.0), (400.0, 0.0)], 10.0)])
    per_step = AGENT_FIELDS + ("valid", "filled")
    return replace(one, current_step=2, **{n: getattr(one, n).expand(-1, -1, steps).clone() for n in per_step})


def test_rule_plan_returns_to_the_lane_and_logged_plan_is_the_baseline():
    scen = long_scene(60, ego_y=1.0)
    world = StraightWorld()
    actions = rule().plan(scen, world)
    assert actions.shape == (1, 60, 2)
    assert torch.equal(actions[:, :2], torch.zeros(1, 2, 2))  # before current_step: zeros
    state = world.initial(scen, 1)
    for k in range(2, 59):
        state = world.step(state, scen, actions[:, None, k], k)
    assert abs(float(state.y[0, 0, 0])) < 0.15  # pulled back onto the lane centre
    assert float(state.speed[0, 0, 0]) > 8.0    # and accelerating towards 0.95 x 10 m/s
    logged = get_policy("logged@1", CONFIG).plan(scen, world)
    assert torch.all(logged[:, 2:] == 0.25) and torch.all(logged[:, :2] == 0)


def test_logged_acceleration_is_the_speed_change_over_the_step_before():
    one = scene([(0.0, 0.0, 0.0, 8.0, 4.5)], [STRAIGHT])
    scen = replace(one, **{n: getattr(one, n).expand(-1, -1, 3).clone() for n in AGENT_FIELDS + ("valid", "filled")})
    scen.speed[0, 0] = torch.tensor([8.0, 8.5, 8.4])
    accel = ObservationFeatures.from_config(CONFIG.section("policies")).along_log(scen)[0, :, COL["accel_mps2"]]
    assert accel.tolist() == pytest.approx([0.0, 5.0, -1.0], abs=1e-4)
