"""Non-dominated sorting with known fronts, batched per scenario; the solution rule step by step;
per-term attribution summing to the change of the total."""

from __future__ import annotations

import itertools

import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.costs import evaluate
from fleetloop.replay.pareto import attribute, choose_solution, non_dominated_ranks, settings

from tests.support.replaydata import constant, drive, scenario

CFG = load_config()


def brute_ranks(obj: torch.Tensor) -> list[int]:
    """Peel fronts by definition, O(N^3): the reference."""
    n = obj.shape[0]
    ranks = [-1] * n
    left, r = set(range(n)), 0
    while left:
        front = {j for j in left if not any(bool((obj[i] <= obj[j]).all() and (obj[i] < obj[j]).any())
                                            for i in left)}
        for j in front:
            ranks[j] = r
        left -= front
        r += 1
    return ranks


def test_known_fronts() -> None:
    obj = torch.tensor([[1.0, 5.0], [2.0, 2.0], [5.0, 1.0], [3.0, 3.0], [4.0, 4.0], [2.0, 2.0], [6.0, 6.0]])
    assert non_dominated_ranks(obj).tolist() == [0, 0, 0, 1, 2, 0, 3]   # equal points share a front


def test_matches_brute_force_and_batches() -> None:
    g = torch.Generator().manual_seed(7)
    obj = torch.randint(0, 5, (3, 40, 4), generator=g).float()          # many ties and chains
    ranks = non_dominated_ranks(obj)
    assert ranks.shape == (3, 40)
    for s in range(3):
        assert ranks[s].tolist() == brute_ranks(obj[s])
        assert non_dominated_ranks(obj[s]).tolist() == ranks[s].tolist()


def test_invalid_take_no_part() -> None:
    obj = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    ranks = non_dominated_ranks(obj, torch.tensor([False, True, True]))
    assert ranks.tolist() == [3, 0, 1]
    assert non_dominated_ranks(torch.tensor([[float("nan"), 1.0], [1.0, 1.0]])).tolist() == [1, 0]


def test_rule_front_then_no_trade_then_safety_then_total() -> None:
    base = torch.tensor([5.0, 1.0, 1.0, 1.0])
    obj = torch.tensor([
        [5.0, 1.0, 1.0, 1.0],   # 0 the baseline itself
        [0.0, 3.0, 1.0, 1.0],   # 1 safest, but trades comfort: dropped at step 2
        [1.0, 1.0, 1.0, 1.0],   # 2 no trade-off, safety 1.0
        [1.3, 0.5, 0.5, 1.0],   # 3 no trade-off, safety within 0.5 of 1.0, lower total: the solution
        [1.6, 0.0, 0.0, 0.0],   # 4 no trade-off, but safety beyond the tolerance: dropped at step 3
        [2.0, 2.0, 2.0, 2.0],   # 5 dominated: dropped at step 1
    ])
    assert int(choose_solution(obj, base)) == 3
    assert int(choose_solution(obj, base, safety_tolerance=0.0)) == 2
    assert int(choose_solution(obj, base, safety_tolerance=1.0)) == 4
    # Without any trade-off-free member, step 2 keeps the front: the safest one wins.
    assert int(choose_solution(obj[:2], torch.tensor([5.0, 1.0, 0.0, 0.0]))) == 1


def test_rule_steps_that_the_others_do_not_imply() -> None:
    # 1. Only the front, even where totals cannot tell (an unknown safety objective, NaN: +inf): 0 is
    # dominated by 1, and both totals are inf.
    inf = float("inf")
    assert int(choose_solution(torch.tensor([[inf, 1.0, 0.0, 0.0], [inf, 0.0, 0.0, 0.0]]), torch.zeros(4))) == 1
    # 2. "No worse than the baseline" within baseline_tolerance: 0 is 0.04 worse in comfort, still no
    # trade-off, and far the safest; without the tolerance only 1 is trade-off-free.
    obj = torch.tensor([[0.0, 1.04, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    base = torch.tensor([5.0, 1.0, 1.0, 1.0])
    assert int(choose_solution(obj, base)) == 0
    assert int(choose_solution(obj, base, baseline_tolerance=0.0)) == 1
    # 1. With no valid candidate all are considered.
    assert int(choose_solution(obj, base, valid=torch.zeros(2, dtype=torch.bool))) == 0


def test_rule_is_batched_and_ties_keep_the_first() -> None:
    obj = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
                        [[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    base = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    assert choose_solution(obj, base).tolist() == [0, 1]
    valid = torch.tensor([[False, True], [True, False]])
    assert choose_solution(obj, base, valid=valid).tolist() == [1, 0]


def test_every_permutation_gives_the_same_member() -> None:
    obj = torch.tensor([[0.2, 2.0, 0.0, 0.0], [0.4, 0.1, 0.5, 0.0], [3.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    base = torch.tensor([3.0, 0.0, 0.0, 0.0])
    chosen = obj[int(choose_solution(obj, base))].tolist()
    for perm in itertools.permutations(range(4)):
        p = torch.tensor(perm)
        assert obj[p][int(choose_solution(obj[p], base))].tolist() == chosen


def test_settings_match_the_defaults() -> None:
    assert settings(CFG) == {"safety_tolerance": 0.5, "baseline_tolerance": 0.05}


def test_attribution_on_a_stalled_car() -> None:
    scen = scenario([(20.0, 0.0, 0.0)])
    base = drive(scen, constant(scen, [0.0]))
    rep = evaluate(drive(scen, constant(scen, [0.0, -7.0])), scen, base, CFG)
    base_rep = evaluate(base, scen, base, CFG)
    attr = attribute(rep, base_rep, CFG)
    torch.testing.assert_close(attr.delta.sum(-1), rep.total - base_rep.total)
    better, worse = attr.better(0, 1), attr.worse(0, 1)
    assert better[0][0] == "collision" and better[0][1] == pytest.approx(-(100.0 + 10.0 * 2.0), rel=1e-4)
    assert {"progress", "comfort"} <= {name for name, _ in worse}
    assert attr.better(0, 0) == [] and attr.worse(0, 0) == []            # the baseline against itself
