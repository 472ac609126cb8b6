"""CPU and CUDA give the same answers: the world model's rollout (positions within 1 mm, speeds within
1 mm/s, the same validity), every cost term (within 1e-3 absolute or relative, the same gates) and a
small search (the same candidates, the solution's total within 1e-3, the same gates).
float32 transcendental functions differ by an ulp or so between the devices; over 80 steps that stays
orders of magnitude under these bounds. Skipped where no CUDA device is present."""

import pytest
import torch
from fleetloop.replay import costs
from fleetloop.replay.config import load_config
from fleetloop.replay.world import WorldModel

from tests.support.replaydata import scenario

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

POSITION_M, SPEED_MPS, COST = 1e-3, 1e-3, 1e-3


def candidates(scen, n: int) -> torch.Tensor:
    """A deterministic fan of ego actions [S, n, T, 2]: braking to accelerating × left to right."""
    acts = torch.zeros(scen.n_scenarios, n, scen.n_steps, 2)
    acts[..., scen.current_step:, 0] = torch.linspace(-5.0, 2.0, n)[:, None]
    acts[..., scen.current_step:, 1] = torch.linspace(-0.02, 0.02, n).flip(0)[:, None]
    return acts


@pytest.fixture(scope="module")
def case():
    config = load_config()
    scen = scenario([(-15.0, 0.0, 12.0), (25.0, 0.0, 6.0), (5.0, 3.5, 11.0), (60.0, 3.5, 0.0)], t=81, s=2,
                    ego_speed_mps=11.0)
    return config, scen, candidates(scen, 64)


def test_rollout_matches(case):
    config, scen, acts = case
    world = WorldModel(config)
    cpu = world.rollout(scen, acts)
    gpu = world.rollout(scen.to("cuda"), acts.cuda())
    assert gpu.x.device.type == "cuda"
    for name, tol in (("x", POSITION_M), ("y", POSITION_M), ("speed", SPEED_MPS), ("heading", 1e-4),
                      ("accel", 1e-3), ("curvature", 1e-4)):
        assert torch.allclose(getattr(gpu, name).cpu(), getattr(cpu, name), atol=tol, rtol=0), name
    assert torch.equal(gpu.valid.cpu(), cpu.valid)


def test_costs_match(case):
    config, scen, acts = case
    world = WorldModel(config)
    results = []
    for device in ("cpu", "cuda"):
        sc = scen.to(device)
        baseline = world.rollout(sc, world.baseline_actions(sc)[:, None])
        results.append(costs.evaluate(world.rollout(sc, acts.to(device)), sc, baseline, config))
    cpu, gpu = results
    assert torch.equal(gpu.gates_pass.cpu(), cpu.gates_pass)
    for name, value in cpu.terms.items():
        other = gpu.terms[name]
        assert torch.equal(other.valid.cpu(), value.valid), name
        assert torch.allclose(torch.where(value.valid, other.value.cpu(), 0), torch.where(value.valid, value.value, 0),
                              atol=COST, rtol=COST), name
    assert torch.allclose(gpu.total.cpu(), cpu.total, atol=COST, rtol=COST)
    assert torch.allclose(gpu.score.cpu(), cpu.score, atol=COST, rtol=COST)


def test_search_matches():
    """The search draws its noise from CPU generators, so both devices search the same candidates; the
    chosen solution's total and gates agree within the cost tolerance (a near-tie between candidates may
    pick a different one of equal cost)."""
    from fleetloop.replay.search import search

    config = load_config(overrides={"search": {"iterations": 2, "candidates_per_iteration": 64}})
    world = WorldModel(config)
    scen = scenario([(30.0, 0.0, 0.0), (-15.0, 0.0, 10.0)], t=61, ego_speed_mps=10.0)
    cpu, gpu = (search(scen.to(d), world, None, config, seed=3) for d in ("cpu", "cuda"))
    assert torch.equal(gpu.candidates.cpu(), cpu.candidates)
    assert torch.equal(gpu.solution_report.gates_pass.cpu(), cpu.solution_report.gates_pass)
    assert torch.allclose(gpu.solution_report.total.cpu(), cpu.solution_report.total, atol=COST, rtol=COST)
    assert torch.allclose(gpu.baseline_report.total.cpu(), cpu.baseline_report.total, atol=COST, rtol=COST)
