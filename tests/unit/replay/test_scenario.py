"""ScenarioBatch: bad input gets a precise ScenarioError (no ego, NaN/inf states, an empty window,
zero-size objects, ...), select/to/concat keep the layout."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.generator import generate
from fleetloop.replay.scenario import EGO, AgentClass, ScenarioBatch, ScenarioError, concat

CFG = load_config()


@pytest.fixture(scope="module")
def base() -> ScenarioBatch:
    return generate("lead_brake", 3, seed=2, config=CFG)


def fresh(base: ScenarioBatch) -> ScenarioBatch:
    return replace(base, **{k: v.clone() for k, v in base.tensors().items()})


def test_a_generated_batch_is_valid_and_select_keeps_order(base):
    base.validate()
    two = base.select([2, 0])
    assert [m.scenario_id for m in two.meta] == [base.meta[2].scenario_id, base.meta[0].scenario_id]
    assert torch.equal(two.x[0], base.x[2]) and two.n_agents == base.n_agents and two.n_steps == base.n_steps
    assert base.to("cpu").device.type == "cpu"


def test_no_ego_in_slot_zero(base):
    scen = fresh(base)
    scen.agent_class[1, EGO] = AgentClass.CAR
    with pytest.raises(ScenarioError, match=rf"scenario {base.meta[1].scenario_id}: no ego in agent slot 0"):
        scen.validate()


def test_ego_unknown_at_the_current_step(base):
    scen = fresh(base)
    scen.valid[0, EGO, scen.current_step] = False
    with pytest.raises(ScenarioError, match="ego state unknown at the current step 10"):
        scen.validate()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["x", "speed", "vy"])
def test_nan_or_infinite_states_name_scenario_and_agent(base, name, value):
    scen = fresh(base)
    getattr(scen, name)[2, 1, 40] = value
    with pytest.raises(ScenarioError, match=rf"scenario {base.meta[2].scenario_id}: agent 1 has NaN or infinite"):
        scen.validate()


def test_nan_in_an_invalid_step_is_no_fault(base):
    scen = fresh(base)
    free = int((~scen.valid[0].any(dim=1)).nonzero()[0])  # an unused agent slot
    scen.x[0, free, :] = float("nan")
    scen.validate()


def test_empty_window_and_empty_batch(base):
    empty_t = replace(base, **{k: v[:, :, :0] for k, v in base.tensors().items()
                               if k in ("x", "y", "heading", "speed", "vx", "vy", "valid", "filled")},
                      planner_xy=None, planner_valid=None)
    with pytest.raises(ScenarioError, match=r"empty window: 32 agents × 0 steps"):
        empty_t.validate()
    none = base.select([])
    with pytest.raises(ScenarioError, match="no scenarios"):
        none.validate()
    with pytest.raises(ScenarioError, match="no scenarios to concatenate"):
        concat([])


@pytest.mark.parametrize("size", [0.0, -1.0, float("nan")])
def test_zero_or_unknown_size_of_a_present_object(base, size):
    scen = fresh(base)
    scen.width[1, 1] = size
    with pytest.raises(ScenarioError, match=rf"scenario {base.meta[1].scenario_id}: agent 1 has zero or unknown size"):
        scen.validate()


def test_shapes_metadata_and_map_faults(base):
    with pytest.raises(ScenarioError, match=r"speed has shape \(3, 32, 90\), expected \(3, 32, 91\)"):
        replace(base, speed=base.speed[..., :-1]).validate()
    with pytest.raises(ScenarioError, match="2 metadata entries for 3 scenarios"):
        replace(base, meta=base.meta[:2]).validate()
    with pytest.raises(ScenarioError, match="map_valid has shape"):
        replace(base, map_valid=base.map_valid[:, :-1]).validate()
    with pytest.raises(ScenarioError, match="current_step 91 outside the window of 91 steps"):
        replace(base, current_step=91).validate()
    scen = fresh(base)
    p, v = (scen.map_valid[0]).nonzero()[0].tolist()
    scen.map_xy[0, p, v, 0] = float("inf")
    with pytest.raises(ScenarioError, match="map crop has NaN or infinite vertices"):
        scen.validate()
    planner = replace(base, planner_xy=torch.zeros(3, 91, 2), planner_valid=None)
    with pytest.raises(ScenarioError, match="planner_xy and planner_valid come together"):
        planner.validate()


def test_concat_joins_batches_and_refuses_mismatches(base):
    other = generate("good_driving", 2, seed=2, config=CFG)
    both = concat([base, other])
    both.validate()
    assert both.n_scenarios == 5 and [m.family for m in both.meta] == ["lead_brake"] * 3 + ["good_driving"] * 2
    assert torch.equal(both.x[3:], other.x)
    with pytest.raises(ScenarioError, match="batch 1: dt_s"):
        concat([base, replace(other, dt_s=0.2)])
    with pytest.raises(ScenarioError, match=r"batch 1: x has shape \(2, 16, 91\)"):
        concat([base, replace(other, x=other.x[:, :16])])
    planned = replace(other, planner_xy=torch.zeros(2, 91, 2), planner_valid=torch.zeros(2, 91, dtype=torch.bool))
    with pytest.raises(ScenarioError, match="present in some batches only"):
        concat([base, planned])
