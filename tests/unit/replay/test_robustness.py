"""Robustness: the perturbations have known answers on constant-speed agents, they are seeded, and the
re-validation compares a solution with the baseline under every perturbation in one batch."""

from __future__ import annotations

import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.robustness import KINDS, perturb, revalidate
from fleetloop.replay.scenario import EGO, AgentClass, ScenarioError
from fleetloop.replay.search import search
from fleetloop.replay.world import WorldModel

from tests.support.replaydata import scenario

CFG = load_config(overrides={"robustness": {"perturbations": 8}})
WORLD = WorldModel(CFG)
P = CFG.section("robustness")


def moving():
    """The ego at 10 m/s and a car 30 m ahead in the next lane at 8 m/s (constant speed, logged)."""
    return scenario([(30.0, 3.5, 8.0)], t=60)


def test_every_kind_in_turn_and_the_ego_untouched():
    scen = moving()
    out, kinds, magnitude = perturb(scen, CFG, seed=1)
    out.validate()
    assert kinds == list(KINDS) * 2 and magnitude.shape == (1, 8)
    assert out.n_scenarios == 8 and out.n_agents == scen.n_agents + 1     # one more slot: the extra agent's
    for name in ("x", "y", "heading", "speed"):
        assert torch.equal(getattr(out, name)[:, EGO], getattr(scen, name)[:, EGO].expand(8, -1))
    extra = out.valid[:, -1].any(1)
    assert extra.tolist() == [k == "extra_agent" for k in kinds]
    assert [m.scenario_id for m in out.meta][:2] == ["hand-0~speed0", "hand-0~timing1"]


def test_speed_and_timing_retime_the_log_exactly_on_constant_motion():
    scen = moving()
    out, kinds, magnitude = perturb(scen, CFG, seed=1)
    c, dt = scen.current_step, scen.dt_s
    t = (torch.arange(scen.n_steps) - c) * dt
    for r, kind in enumerate(kinds):
        m = float(magnitude[0, r])
        if kind == "speed":
            assert 1 - P["speed_fraction"] <= m <= 1 + P["speed_fraction"] and m != 1.0
            # same place now, 8 m/s x factor from there (beyond the window too: the end velocity runs on)
            assert torch.allclose(out.x[r, 1], 30.0 + 8.0 * m * t, atol=1e-3)
            assert torch.allclose(out.speed[r, 1], torch.full_like(t, 8.0 * m))
        if kind == "timing":
            assert m == int(m) and 1 <= abs(m) <= P["shift_steps"]
            assert torch.allclose(out.x[r, 1], 30.0 + 8.0 * (t - m * dt), atol=1e-3)   # arrives m steps later
            assert torch.allclose(out.speed[r, 1], torch.full_like(t, 8.0))
        assert torch.allclose(out.y[r, 1], torch.full_like(t, 3.5)) or kind == "noise"


def test_the_extra_agent_is_a_car_one_lane_over_and_noise_moves_only_the_others():
    scen = moving()
    out, kinds, magnitude = perturb(scen, CFG, seed=2)
    c = scen.current_step
    lo, hi = P["extra_agent_ahead_m"]
    for r, kind in enumerate(kinds):
        if kind == "extra_agent":
            ahead = float(magnitude[0, r])
            assert lo <= ahead <= hi
            assert float(out.x[r, -1, c]) == pytest.approx(ahead, abs=1e-3)
            assert abs(float(out.y[r, -1, c])) == pytest.approx(P["lane_width_m"], abs=1e-3)
            lo_v, hi_v = P["extra_agent_speed_factor"]
            assert 10.0 * lo_v <= float(out.speed[r, -1, c]) <= 10.0 * hi_v
            assert int(out.agent_class[r, -1]) == AgentClass.CAR
            assert (float(out.length[r, -1]), float(out.width[r, -1])) == pytest.approx(P["extra_agent_size_m"])
        if kind == "noise":
            dx = out.x[r, 1] - scen.x[0, 1]
            dy = out.y[r, 1] - scen.y[0, 1]
            assert float(dx.abs().max()) > 0 and float(dy.abs().max()) > 0
            # a per-agent bias plus small jitter: the offset's spread over time is the jitter's
            assert float(dx.std()) < 3 * P["position_jitter_m"]
            assert float(dx.mean().abs()) < 5 * P["position_bias_m"]


def test_perturbations_are_seeded():
    a, _, ma = perturb(moving(), CFG, seed=4)
    b, _, mb = perturb(moving(), CFG, seed=4)
    c, _, mc = perturb(moving(), CFG, seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(ma, mb)
    assert not torch.equal(ma, mc)


def test_a_solution_that_brakes_for_the_stalled_car_wins_everywhere_and_the_baseline_ties():
    scen = scenario([(30.0, 0.0, 0.0)], t=60)
    result = search(scen, WORLD, None, load_config(overrides={"search": {"iterations": 1,
                                                                          "candidates_per_iteration": 32}}))
    verdict = revalidate(scen, WORLD, result.solution_actions, CFG, seed=0)
    assert verdict.kinds == list(KINDS) * 2
    assert not bool(verdict.baseline_gates.any())                   # the logged ego hits it under every perturbation
    assert bool(verdict.solution_gates.all()) and float(verdict.win_rate[0]) == 1.0
    worst = int(verdict.worst[0])
    assert float(verdict.worst_excess[0]) == pytest.approx(
        float(verdict.solution_total[0, worst] - verdict.baseline_total[0, worst]))
    excess = verdict.solution_total - verdict.baseline_total
    assert float(verdict.worst_excess[0]) == pytest.approx(float(excess.max()))
    summary = verdict.summary(0)
    assert summary["win_rate"] == 1.0 and summary["worst"]["kind"] in KINDS
    same = revalidate(scen, WORLD, WORLD.baseline_actions(scen), CFG, seed=0)
    assert float(same.win_rate[0]) == 0.0 and float(same.worst_excess[0]) == 0.0   # a tie is no win


def test_bad_input_gets_precise_errors():
    scen = moving()
    with pytest.raises(ScenarioError, match=r"solution actions have shape \(1, 59, 2\)"):
        revalidate(scen, WORLD, torch.zeros(1, 59, 2), CFG)
    with pytest.raises(ValueError, match=r"robustness.kinds: unknown \['earthquake'\]"):
        perturb(scen, load_config(overrides={"robustness": {"kinds": ["speed", "earthquake"]}}), 0)
    with pytest.raises(ValueError, match=r"missing keys \[\], unknown keys \['speed_fraktion'\]"):
        perturb(scen, load_config(overrides={"robustness": {"speed_fraktion": 0.1}}), 0)
