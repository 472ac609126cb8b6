"""The search: smooth noise, the reference lane, the proposals, the archive, budgets, early stop, determinism,
and precise errors — on hand-built two-lane roads (tests/support/replaydata) with the real world model and costs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.dynamics import BicycleBounds
from fleetloop.replay.scenario import EGO, AgentClass, ScenarioError
from fleetloop.replay.search import (
    Archive,
    ProposalSet,
    SearchSettings,
    SlicedSearch,
    dominated_mask,
    knot_matrix,
    lane_reference,
    search,
    solution_pair,
)
from fleetloop.replay.world import WorldModel

from tests.support.replaydata import scenario

SMALL = {"iterations": 2, "candidates_per_iteration": 64, "front_trajectories": 4}
CFG = load_config(overrides={"search": SMALL})
WORLD = WorldModel(CFG)


def stalled(s: int = 1, gap_m: float = 30.0, t: int = 60):
    """The ego at 10 m/s logged at constant speed into a car standing `gap_m` ahead in its lane: the
    baseline collides after ~2.5 s; braking at ~2 m/s² from now avoids it."""
    return scenario([(gap_m, 0.0, 0.0)], t=t, s=s)


def test_knot_noise_is_piecewise_linear_through_its_knots():
    w = knot_matrix(25, 5, torch.device("cpu"))
    assert w.shape == (25, 6)                                      # knots at 0, 5, 10, 15, 20 and the last step
    assert torch.allclose(w.sum(1), torch.ones(25))
    knots = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5, 0.0])
    values = w @ knots
    assert torch.allclose(values[[0, 5, 10, 15, 20, 24]], knots)
    assert values[7] == pytest.approx(1.0 + 0.4 * (-2.0))         # 2/5 of the way from 1 to -1
    assert torch.allclose(values[20:], torch.tensor([0.5, 0.375, 0.25, 0.125, 0.0]))


def test_the_reference_lane_is_the_ego_lane_and_extrapolates_past_the_crop():
    scen = scenario([], s=2)
    scen.y[1] += 3.5                                               # scenario 1's ego drives in the left lane
    ref = lane_reference(scen, math.pi / 4)
    point, heading = ref.point_at(torch.tensor([[0.0, 100.0, 400.0], [0.0, 100.0, 400.0]]))
    assert torch.allclose(point[0, :, 1], torch.zeros(3)) and torch.allclose(point[1, :, 1], torch.full((3,), 3.5))
    assert torch.allclose(point[0, :, 0], torch.tensor([-50.0, 50.0, 350.0]))   # the crop ends at x = 295 m
    assert torch.allclose(heading, torch.zeros(2, 3))
    s = ref.project(torch.tensor([[[10.0, 0.4], [-60.0, 0.0]], [[10.0, 3.0], [500.0, 3.5]]]))
    assert torch.allclose(s, torch.tensor([[60.0, -10.0], [60.0, 550.0]]), atol=1e-3)
    assert torch.allclose(ref.speed_limit_mps, torch.full((2,), 13.9))


def test_without_a_map_the_reference_is_the_ego_heading():
    scen = scenario([])
    scen = replace(scen, map_kind=torch.zeros_like(scen.map_kind))
    ref = lane_reference(scen, math.pi / 4)
    point, _ = ref.point_at(torch.tensor([[25.0]]))
    assert torch.allclose(point, torch.tensor([[[25.0, 0.0]]]), atol=1e-5)
    assert math.isnan(float(ref.speed_limit_mps[0]))


def test_proposals_follow_the_speed_fraction_the_offset_and_stop_behind_a_leader():
    settings = SearchSettings.from_config(CFG)
    props = ProposalSet(settings, BicycleBounds.from_config(CFG.section("dynamics")))
    empty = scenario([], t=200)
    roll = WORLD.rollout(empty, props.compute(empty, WORLD, lane_reference(empty, math.pi / 4)))
    fractions, offsets = settings.proposal_speed_fractions, settings.proposal_lateral_offsets_m
    assert roll.n_candidates == len(fractions) * len(offsets) == 15
    for i, f in enumerate(fractions):
        for j, d in enumerate(offsets):
            c = i * len(offsets) + j
            assert float(roll.speed[0, c, EGO, -1]) == pytest.approx(f * 13.9, abs=0.35)   # IDM's free road speed
            assert float(roll.y[0, c, EGO, -1]) == pytest.approx(d, abs=0.1)            # pure pursuit on the offset
    blocked = stalled(gap_m=40.0, t=200)
    roll = WORLD.rollout(blocked, props.compute(blocked, WORLD, lane_reference(blocked, math.pi / 4)))
    front_gap = 40.0 - roll.x[0, :, EGO, -1] - 4.5                 # bumper to bumper
    centred = torch.arange(15) % 3 == 1
    assert bool((front_gap[centred] > 1.0).all())                  # stopped behind the car, never into it
    assert float(roll.speed[0, centred, EGO, -1].max()) < 0.5


def test_dominated_mask_and_the_archive_keep_the_front_first():
    obj = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [2.0, 2.0], [1.0, 1.0], [3.0, 0.0]]])
    obj = torch.cat([obj, torch.zeros(1, 5, 2)], -1)              # four objectives, the last two tied
    filled = torch.tensor([[True, True, True, True, False]])
    assert dominated_mask(obj, filled).tolist() == [[False, False, True, False, False]]  # padding never dominates
    archive = Archive.empty(1, 3, 3, torch.device("cpu"))
    actions = torch.arange(5.0)[None, :, None, None].expand(1, 5, 3, 2)
    merged = archive.merge(actions, obj, obj.sum(-1), torch.zeros(1, 5, dtype=torch.long), 3)
    # the front {0, 1, 3, 4} (4 is filled here), by key: 0 (2.0), 1 (2.0), 3 (2.0), 4 (3.0); 2 is dominated
    assert merged.actions[0, :, 0, 0].tolist() == [0.0, 1.0, 3.0]
    assert merged.front.all() and merged.filled.all()


def test_the_search_avoids_the_stalled_car_and_accounts_for_its_budget():
    scen = stalled()
    result = search(scen, WORLD, None, CFG, seed=3)
    base, sol = result.baseline_report, result.solution_report
    assert float(base.terms["collision"].value[0, 0]) > 0 and not bool(base.gates_pass[0, 0])
    assert float(sol.terms["collision"].value[0, 0]) == 0 and bool(sol.gates_pass[0, 0])
    assert float(sol.total[0, 0]) < float(base.total[0, 0])
    assert result.source[0] in ("proposal", "search")
    # 1 baseline + 15 proposals seed the population, then 2 iterations of 64 (no early stop: braking costs progress)
    assert int(result.candidates[0]) == 16 + 2 * 64 and int(result.iterations[0]) == 2
    assert not bool(result.early_stopped[0])
    assert result.cost_change[0]["collision"][0] > 0 and result.cost_change[0]["collision"][1] == 0
    assert result.solution.ego_actions.shape == (1, 1, 60, 2) and result.solution_actions.shape == (1, 60, 2)
    assert result.front.x.shape == (1, 4, scen.n_agents, 60) and bool(result.front_valid[0, 0])
    assert torch.equal(result.front.x[:, 0], result.solution.x[:, 0])
    assert result.device == "cpu" and result.method == "cem"
    # the solution rolled out again lands where the search said
    again = WORLD.rollout(scen, result.solution.ego_actions)
    assert torch.allclose(again.x, result.solution.x)


def test_mppi_solves_it_too():
    cfg = load_config(overrides={"search": {**SMALL, "method": "mppi"}})
    result = search(stalled(), WORLD, None, cfg, seed=3)
    assert result.method == "mppi" and float(result.solution_report.terms["collision"].value[0, 0]) == 0


def test_a_good_baseline_stands_and_triggers_are_not_added():
    scen = scenario([(40.0, 0.0, 10.0)], t=60)                     # following a car at the same speed
    result = search(scen, WORLD, None, CFG, seed=0)
    assert float(result.solution_report.total[0, 0]) <= float(result.baseline_report.total[0, 0])
    assert result.triggers_added(0) == {}
    if result.source[0] == "baseline":
        assert torch.equal(result.solution_actions, result.baseline.ego_actions[:, 0])


def test_early_stop_is_per_scenario_inside_one_batch():
    # tolerance so loose that any collision-free candidate dominates a colliding baseline: the stalled
    # scenario stops after the seeds, the good one (nothing dominates it by 0.5) uses the whole budget
    cfg = load_config(overrides={"search": {**SMALL, "early_stop_tolerance": 1e6}})
    good = scenario([(40.0, 0.0, 10.0)], t=60)
    bad = stalled()
    both = replace(good, **{k: torch.cat([getattr(good, k), getattr(bad, k)]) for k in good.tensors()},
                   meta=[good.meta[0], replace(bad.meta[0], scenario_id="hand-stalled")])
    result = search(both, WORLD, None, cfg, seed=0)
    assert result.early_stopped.tolist() == [False, True]
    assert result.iterations.tolist() == [2, 0] and result.candidates.tolist() == [16 + 128, 16]


def test_same_seed_same_answer_in_any_batch_and_the_pair_builds():
    one = stalled()
    a = search(one, WORLD, None, CFG, seed=5)
    b = search(one, WORLD, None, CFG, seed=5)
    assert torch.equal(a.solution_actions, b.solution_actions)
    # the solution here is a proposal (no noise in it); the front holds searched candidates, which show
    # whether each scenario draws its own noise
    assert torch.equal(a.front.ego_actions, b.front.ego_actions)
    other = stalled(gap_m=45.0)
    pair = replace(other, **{k: torch.cat([getattr(other, k), getattr(one, k)]) for k in one.tensors()},
                   meta=[replace(other.meta[0], scenario_id="hand-45"), one.meta[0]])
    c = search(pair, WORLD, None, CFG, seed=5)  # the same scenario second in a batch of two
    assert torch.allclose(c.solution_actions[1:], a.solution_actions, atol=1e-5)
    assert torch.allclose(c.front.ego_actions[1:], a.front.ego_actions, atol=1e-5)
    assert torch.allclose(c.front_objectives[1:], a.front_objectives, atol=1e-5)
    msg = solution_pair(one, a, 0, CFG, "none")
    assert msg.problem.scenario_id == "hand-0" and len(msg.front) >= 1 and msg.solution_index == 0
    assert {d.name for d in msg.cost_delta} >= {"collision", "progress"}


def test_a_sliced_search_resumed_from_its_snapshot_gives_the_unsliced_answer():
    import io

    cfg = load_config(overrides={"search": {**SMALL, "iterations": 4, "early_stop_margin": 1e9}})  # no early stop
    two = stalled(s=2)
    whole = search(two, WORLD, None, cfg, seed=7)
    first = SlicedSearch(two, WORLD, None, cfg, seed=7)
    assert not first.advance(1) and first.passes == 1
    buffer = io.BytesIO()
    torch.save(first.snapshot(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()))
    resumed = SlicedSearch(two, WORLD, None, cfg, seed=7, resume_state=state)
    assert not resumed.advance(2) and resumed.advance(5) and resumed.passes == 4
    result = resumed.finish()
    assert result.iterations.tolist() == whole.iterations.tolist() == [4, 4]
    assert torch.equal(result.solution_actions, whole.solution_actions)
    assert torch.equal(result.front.ego_actions, whole.front.ego_actions)
    assert torch.equal(result.front_objectives, whole.front_objectives)
    with pytest.raises(ValueError, match="snapshot of seed 7 .* resumed with seed 8"):
        SlicedSearch(two, WORLD, None, cfg, seed=8, resume_state=state)
    with pytest.raises(ValueError, match="search snapshot version 0, expected 1"):
        SlicedSearch(two, WORLD, None, cfg, seed=7, resume_state={**state, "version": 0})


class _BadPolicy:
    def plan(self, scen, world):
        return torch.zeros(scen.n_scenarios, 3, 2)


def test_bad_input_gets_precise_errors():
    nan = stalled()
    nan.x[0, 1, 20] = float("nan")
    with pytest.raises(ScenarioError, match="scenario hand-0: agent 1 has NaN or infinite states"):
        search(nan, WORLD, None, CFG)
    no_ego = stalled()
    no_ego.agent_class[0, EGO] = int(AgentClass.CAR)
    with pytest.raises(ScenarioError, match="scenario hand-0: no ego in agent slot 0"):
        search(no_ego, WORLD, None, CFG)
    last = replace(stalled(), current_step=59)
    with pytest.raises(ScenarioError, match="current_step 59 leaves no step to search"):
        search(last, WORLD, None, CFG)
    with pytest.raises(ValueError, match="policy plan has shape"):
        search(stalled(), WORLD, _BadPolicy(), CFG)
    with pytest.raises(ValueError, match="search.method: 'sgd'"):
        search(stalled(), WORLD, None, load_config(overrides={"search": {"method": "sgd"}}))
    with pytest.raises(ValueError, match="unknown keys \\['iteration'\\]"):
        search(stalled(), WORLD, None, load_config(overrides={"search": {"iteration": 3}}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_finds_the_same_answer_within_tolerance():
    # the noise is drawn on the CPU for every device, so the two searches differ only by float rounding
    # in the rollouts and costs: the same kind of solution, totals within 1e-2, both collision-free
    cpu = search(stalled(), WORLD, None, CFG, seed=3)
    cuda = search(stalled().to("cuda"), WORLD, None, CFG, seed=3)
    assert cuda.device.startswith("cuda") and cuda.source == cpu.source
    assert float(cuda.solution_report.total[0, 0]) == pytest.approx(float(cpu.solution_report.total[0, 0]), abs=1e-2)
    assert float(cuda.solution_report.terms["collision"].value[0, 0]) == 0
    assert torch.allclose(cuda.solution_actions.cpu(), cpu.solution_actions, atol=1e-2)
