"""Cost terms on hand-built rollouts with known answers: collision (oriented boxes, at-fault rule),
the shared TTC, clearance, drivable area, lane departure, speed limit, progress, comfort, kinematic
feasibility, log divergence; the weighted total, objectives and the published-style score."""

from __future__ import annotations

import math

import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.costs import COST_TERMS, OBJECTIVES, build_terms, evaluate
from fleetloop.replay.scenario import Rollout, ScenarioBatch, ScenarioError

from tests.support.replaydata import DT, constant, drive, scenario

CFG = load_config()
TERMS = {t.term.name: t for t in build_terms(CFG)}


def term(name: str, rollout: Rollout, scen: ScenarioBatch, baseline: Rollout | None = None):
    return TERMS[name].term.compute(rollout, scen, baseline or rollout)


def shifted(r: Rollout, dy: float) -> Rollout:
    """The same rollout with the ego moved `dy` metres to the left over the future."""
    y = r.y.clone()
    y[:, :, 0, r.current_step + 1:] += dy
    return Rollout(**{**vars(r), "y": y})


def test_collision_gate_and_at_fault_rule() -> None:
    scen = scenario([(20.0, 0.0, 0.0)])           # a stalled car 20 m ahead, the ego at 10 m/s
    r = drive(scen, constant(scen, [0.0, -7.0]))
    cv = term("collision", r, scen)
    # Nose to tail at 20 − 4.5 = 15.5 m: contact after 1.55 s, the step at 1.6 s, at 10 m/s.
    assert cv.measure[0, 0].item() == pytest.approx(1.6, abs=1e-5)
    assert cv.value[0, 0].item() == pytest.approx(1.0 + 10.0 / 10.0, abs=1e-4)
    assert cv.value[0, 1].item() == 0.0 and math.isinf(cv.measure[0, 1].item())  # 7 m/s² stops in 7.1 m
    rear = scenario([(-8.0, 0.0, 20.0)])           # hit from behind: not the ego's fault (nuPlan's rule)
    assert term("collision", drive(rear, constant(rear, [0.0])), rear).value.item() == 0.0


@pytest.mark.parametrize("rel,hit", [((4.2, 2.0), True), ((4.3, 2.9), False)])
def test_collision_is_oriented(rel: tuple[float, float], hit: bool) -> None:
    # An agent rotated 45° beside the ego's front corner: both placements overlap the ego's own axes
    # (its bounding box in the ego frame); only the agent's axes separate the second one.
    scen = scenario([(rel[0], rel[1], 10.0)])
    scen.heading[:, 1] = math.pi / 4
    r = drive(scen, constant(scen, [0.0]))
    assert (term("collision", r, scen).value.item() > 0) == hit
    assert term("clearance", r, scen).measure.item() == 0.0  # the box-to-box clearance bound is 0 for both


def test_ttc_is_the_shared_definition() -> None:
    # A lead 30 m ahead at 5 m/s, the ego at 10 m/s: bumper gap 30 − 4.5 − 5 τ m closing at 5 m/s;
    # at the last step (τ = 3.9 s) the TTC is (25.5 − 19.5) / 5 = 1.2 s. A car closing fast in the
    # other lane is not in the path.
    scen = scenario([(30.0, 0.0, 5.0), (40.0, 3.5, -10.0)])
    cv = term("ttc", drive(scen, constant(scen, [0.0])), scen)
    assert cv.measure.item() == pytest.approx(1.2, abs=1e-4)
    assert cv.value.item() == pytest.approx(2.0 - 1.2, abs=1e-4)
    free = scenario([(30.0, 0.0, 12.0)])          # pulling away: never closing
    assert math.isinf(term("ttc", drive(free, constant(free, [0.0])), free).measure.item())
    creep = scenario([(10.0, 0.0, 9.6)])          # closing at 0.4 m/s, below the trigger's 0.5 m/s: no TTC
    assert math.isinf(term("ttc", drive(creep, constant(creep, [0.0])), creep).measure.item())


def test_ttc_sees_an_agent_leaving_the_path_in_time() -> None:
    # A car standing across the lane 20 m ahead, 1.5 m left, the ego at 10 m/s: its box (rotated 90°) meets
    # the ego's after the bumper gap 20 − 0.9 − 2.25 = 16.85 m: at the first future step (0.1 s driven) the
    # TTC is 15.85 / 10 s, then it falls to 0 (the ego drives into it). Driving off to the left at 3 m/s it
    # leaves the ego's lane (|y| > 0.9 + 2.25) after 0.55 s, before the ego arrives: no TTC at any step.
    scen = scenario([(20.0, 1.5, 0.0)], t=12)
    scen.heading[:, 1] = math.pi / 2
    assert term("ttc", drive(scen, constant(scen, [0.0])), scen).measure.item() == pytest.approx(1.585, abs=1e-3)
    scen = scenario([(20.0, 1.5, 0.0)], t=40)
    scen.heading[:, 1] = math.pi / 2
    assert term("ttc", drive(scen, constant(scen, [0.0])), scen).measure.item() == 0.0
    time = (torch.arange(scen.n_steps) - scen.current_step) * DT
    scen.y[:, 1], scen.speed[:, 1] = 1.5 + 3.0 * time, 3.0
    assert math.isinf(term("ttc", drive(scen, constant(scen, [0.0])), scen).measure.item())


@pytest.mark.parametrize("y,clear", [(2.5, 0.7), (2.2, 0.4)])
def test_clearance(y: float, clear: float) -> None:
    scen = scenario([(0.0, y, 10.0)])             # alongside at our speed, lateral gap y − 1.8 m
    cv = term("clearance", drive(scen, constant(scen, [0.0])), scen)
    assert cv.measure.item() == pytest.approx(clear, abs=1e-5)
    assert cv.value.item() == pytest.approx(max(0.0, 0.5 - clear), abs=1e-5)


@pytest.mark.parametrize("dy,value", [(0.0, 0.0), (-1.0, 0.0), (-1.3, 0.15)])
def test_drivable_area_corners_against_edges(dy: float, value: float) -> None:
    # The right edge is at y = −1.75; the ego's right corners at dy − 0.9: 0.15 m over is within nuPlan's
    # 0.3 m tolerance, 0.45 m over fails the gate by 0.15 m.
    scen = scenario([])
    cv = term("drivable_area", shifted(drive(scen, constant(scen, [0.0])), dy), scen)
    assert cv.valid.item()
    assert cv.measure.item() == pytest.approx(1.75 + dy - 0.9, abs=1e-4)
    assert cv.value.item() == pytest.approx(value, abs=1e-4)


def test_drivable_area_off_the_road_entirely() -> None:
    scen = scenario([], t=60)
    r = drive(scen, constant(scen, [0.0]), constant(scen, [-0.02]))   # curving right off the road
    cv = term("drivable_area", r, scen)
    assert cv.value.item() > 5.0


def test_lane_departure_and_log_divergence() -> None:
    scen = scenario([])
    r = shifted(drive(scen, constant(scen, [0.0])), -1.3)
    lane = term("lane_departure", r, scen)
    assert lane.value.item() == pytest.approx(0.8, abs=1e-4)   # 1.3 m off the centre, 0.5 m tolerated
    assert lane.measure.item() == pytest.approx(39 * DT, abs=1e-5)  # the whole future: 39 steps
    assert term("log_divergence", r, scen).value.item() == pytest.approx(1.3, abs=1e-4)


def test_speed_limit() -> None:
    scen = scenario([], ego_speed_mps=15.0)       # 15 m/s on a 13.9 m/s road
    cv = term("speed_limit", drive(scen, constant(scen, [0.0])), scen)
    assert cv.value.item() == pytest.approx(1.1, abs=1e-4) and cv.measure.item() == pytest.approx(1.1, abs=1e-4)
    slow = scenario([], ego_speed_mps=12.0)
    assert term("speed_limit", drive(slow, constant(slow, [0.0])), slow).value.item() == 0.0


def test_progress_against_the_baseline() -> None:
    fast, slow = scenario([], ego_speed_mps=10.0), scenario([], ego_speed_mps=5.0)
    base = drive(fast, constant(fast, [0.0]))
    half = term("progress", drive(slow, constant(slow, [0.0])), fast, base)
    assert half.measure.item() == pytest.approx(0.5, abs=1e-4) and half.value.item() == pytest.approx(0.5, abs=1e-4)
    aside = term("progress", shifted(base, 1.0), fast, base)  # lateral motion is no progress
    assert aside.measure.item() == pytest.approx(1.0, abs=1e-5) and aside.value.item() == pytest.approx(0.0, abs=1e-5)


def test_comfort_bounds() -> None:
    scen = scenario([])
    r = drive(scen, constant(scen, [0.0, -2.0, -5.0, 0.0]), constant(scen, [0.0, 0.0, 0.0, 0.05]))
    cv = term("comfort", r, scen)
    assert cv.value[0, 0].item() == 0.0 and cv.measure[0, 0].item() == 0.0
    assert cv.measure[0, 1].item() == pytest.approx(2.0 / 4.05, abs=1e-4)      # within nuPlan's bounds
    assert cv.measure[0, 2].item() >= 5.0 / 4.05                                # braking beyond them
    assert cv.measure[0, 3].item() == pytest.approx(5.0 / 4.89, abs=1e-3)      # v²κ = 5 m/s² lateral
    assert 0 < cv.value[0, 1].item() < cv.value[0, 2].item()


def test_kinematic_feasibility() -> None:
    scen = scenario([])
    r = drive(scen, constant(scen, [0.0]))
    assert term("kinematic", r, scen).value.item() == 0.0
    jump = r.speed.clone()
    jump[:, :, 0, 20:] += 2.0                      # +2 m/s in one 0.1 s step: 20 m/s²
    cv = term("kinematic", Rollout(**{**vars(r), "speed": jump}), scen)
    assert cv.value.item() == pytest.approx(20.0 / 10.4 - 1.0, abs=1e-3)
    assert cv.measure.item() == pytest.approx(20.0, abs=1e-3)


def test_evaluate_total_objectives_and_score() -> None:
    scen = scenario([(20.0, 0.0, 0.0)])
    base = drive(scen, constant(scen, [0.0]))
    r = drive(scen, constant(scen, [0.0, -7.0, -4.0]))
    rep = evaluate(r, scen, base, CFG)
    assert set(rep.terms) == set(COST_TERMS)
    assert rep.gates_pass.tolist() == [[False, True, True]]
    weights = {n: t.weight for n, t in TERMS.items()}
    by_hand = sum(weights[n] * torch.where(v.valid, v.value, 0.0) for n, v in rep.terms.items()) + 100.0 * (
        ~rep.gates_pass).float()
    torch.testing.assert_close(rep.total, by_hand)
    torch.testing.assert_close(rep.objectives.sum(-1), rep.total)
    assert rep.objectives.shape == (1, 3, len(OBJECTIVES))
    assert rep.objectives[0, 0, OBJECTIVES.index("safety")] > 100.0   # the collision gate is a safety cost
    assert rep.score[0, 0].item() == 0.0                               # a collision multiplies the score by 0
    assert 0.0 < rep.score[0, 2].item() < 1.0


def test_clean_drive_scores_one() -> None:
    scen = scenario([(60.0, 0.0, 10.0)])
    base = drive(scen, constant(scen, [0.0]))
    rep = evaluate(base, scen, base, CFG)
    assert rep.gates_pass.item() and rep.score.item() == pytest.approx(1.0)
    assert rep.total.item() == pytest.approx(0.0, abs=1e-4)


def test_batch_has_no_cross_talk() -> None:
    # Two scenarios in one batch give what each gives alone.
    a, b = scenario([(20.0, 0.0, 0.0)]), scenario([(30.0, 0.0, 5.0)])
    both = scenario([(20.0, 0.0, 0.0)], s=2)
    for name in ("x", "speed"):
        getattr(both, name)[1] = getattr(b, name)[0]
    acts = constant(both, [0.0, -3.0])
    joint = evaluate(drive(both, acts), both, drive(both, acts[:, :1]), CFG)
    for i, one in enumerate((a, b)):
        act = constant(one, [0.0, -3.0])
        alone = evaluate(drive(one, act), one, drive(one, act[:, :1]), CFG)
        torch.testing.assert_close(joint.total[i:i + 1], alone.total)


def test_in_place_edit_recomputes_the_shared_geometry() -> None:
    scen = scenario([(20.0, 0.0, 0.0)])
    r = drive(scen, constant(scen, [0.0]))
    assert term("collision", r, scen).value.item() > 0
    r.y[:, :, 1] += 3.5                             # the stalled car moves to the other lane
    assert term("collision", r, scen).value.item() == 0.0


def test_config_errors() -> None:
    bad = load_config(overrides={"costs": {"terms": {"teleport": {"weight": 1.0}}}})
    with pytest.raises(KeyError, match="teleport"):
        build_terms(bad)
    wrong = load_config(overrides={"costs": {"terms": {"ttc": {"params": {"ttc_sec": 2.0}}}}})
    with pytest.raises(ValueError, match="ttc_sec"):
        build_terms(wrong)


def test_bad_input_is_named() -> None:
    scen = scenario([(20.0, 0.0, 0.0)])
    r = drive(scen, constant(scen, [0.0, -3.0]))
    with pytest.raises(ScenarioError, match="baseline has 2 candidates"):
        evaluate(r, scen, r, CFG)
    other = scenario([(20.0, 0.0, 0.0), (40.0, 3.5, 5.0)])
    with pytest.raises(ScenarioError, match="expected"):
        evaluate(drive(other, constant(other, [0.0])), scen, drive(scen, constant(scen, [0.0])), CFG)
    last = scenario([], t=20, current_step=19)
    still = drive(last, constant(last, [0.0]))
    with pytest.raises(ScenarioError, match="nothing to score"):
        evaluate(still, last, still, CFG)


def test_candidate_chunks_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetloop.replay import costs

    scen = scenario([(20.0, 0.0, 0.0), (8.0, 2.4, 9.0), (30.0, 0.0, 5.0)])
    accel = torch.linspace(-8.0, 2.0, 7)[None, :, None].expand(1, -1, scen.n_steps).clone()
    base = drive(scen, accel[:, :1])
    whole = evaluate(drive(scen, accel), scen, base, CFG)
    monkeypatch.setattr(costs, "_CHUNK_ELEMENTS", 2 * 3 * 39)      # two candidates per chunk (3 agents, 39 steps)
    assert len(costs.candidate_chunks((1, 7, 3, 39))) == 4
    chunked = evaluate(drive(scen, accel), scen, base, CFG)
    for name, cv in whole.terms.items():
        torch.testing.assert_close(chunked.terms[name].value, cv.value, msg=name)
    torch.testing.assert_close(chunked.total, whole.total)
