"""Trigger parity: hand-built rollouts become the trigger library's Frames and the fleet's own
trigger classes count their events (hard brake, phantom stop, near miss, weaving, nothing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fleetloop.replay.costs import ego_frame
from fleetloop.replay.parity import fired_triggers, rollout_frames
from fleetloop.triggers import load_config
from fleetloop.triggers.criticality import box_offsets, longitudinal_ttc

from tests.support.replaydata import DT, constant, drive, scenario

CFG = load_config()


def fired(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def test_hard_brake_with_a_car_ahead_and_gentle_driving_fires_nothing() -> None:
    # A stalled car 25 m ahead in the path (bumper gap; its centre 25 + (4.5 + 4.5) / 2 m), the ego at
    # 10 m/s: braking at 7 m/s² stops it in 7 m; braking at 3.5 m/s² (below the 4 m/s² threshold) stops it
    # in 14 m with the trigger's TTC never below 2.5 s.
    scen = scenario([(29.5, 0.3, 0.0)], t=60)
    r = drive(scen, constant(scen, [-7.0, -3.5]))
    counts = fired_triggers(r, scen, [(0, 0), (0, 1)])
    assert set(counts[0]) >= {"hard_brake", "phantom_stop", "near_miss", "weaving", "stop_not_go"}
    assert fired(counts[0]) == {"hard_brake": 1}
    assert fired(counts[1]) == {}


def test_a_near_miss_answered_by_a_hard_brake_is_one_incident() -> None:
    # The stalled car's centre 18 m ahead (bumper gap 13.5 m): TTC 1.35 s at the current step, a near
    # miss; braking at 7 m/s² answers it, so near_miss yields to hard_brake (the rollout's deceleration
    # reaches the trigger's summaries).
    scen = scenario([(18.0, 0.3, 0.0)], t=60)
    r = drive(scen, constant(scen, [-7.0]))
    assert fired(fired_triggers(r, scen, [(0, 0)])[0]) == {"hard_brake": 1}
    no_yield = load_config(overrides={"triggers": {"near_miss": {"params": {"yield_to_hard_brake": False}}}})
    assert fired(fired_triggers(r, scen, [(0, 0)], no_yield)[0]) == {"hard_brake": 1, "near_miss": 1}


def test_braking_for_an_empty_road_is_a_phantom_stop() -> None:
    scen = scenario([(10.0, 4.0, 10.0)], t=60)     # only a car in the other lane
    accel = constant(scen, [-7.0])
    accel[:, :, 25:] = 0.0
    assert fired(fired_triggers(drive(scen, accel), scen, [(0, 0)])[0]) == {"phantom_stop": 1}


def test_close_approach_fires_near_miss() -> None:
    # A car 20 m ahead (bumper gap; centre 24.5 m) at 2 m/s, the ego at 10 m/s keeps going: the trigger's
    # TTC (bumper gap / closing) falls below 2 s before contact. Braking gently at 2.5 m/s² keeps TTC above it.
    scen = scenario([(24.5, 0.0, 2.0)], t=40)
    r = drive(scen, constant(scen, [0.0, -2.5]))
    counts = fired_triggers(r, scen, [(0, 0), (0, 1)])
    assert fired(counts[0]) == {"near_miss": 1}
    assert fired(counts[1]) == {}


def test_weaving() -> None:
    scen = scenario([], t=110, current_step=10)
    k = torch.arange(scen.n_steps, dtype=torch.float32)
    curvature = (0.016 * torch.sin(2 * torch.pi * k * DT / 2.5))[None, None]   # ±0.16 rad/s at 10 m/s
    r = drive(scen, constant(scen, [0.0]), curvature)
    assert fired(fired_triggers(r, scen, [(0, 0)])[0]) == {"weaving": 1}


def test_frames_carry_time_and_the_ego_frame() -> None:
    scen = scenario([(20.0, 2.0, 4.0)], t=40)
    r = drive(scen, constant(scen, [-1.0]))
    (f,) = rollout_frames(r, scen, [(0, 0)], CFG.section("sanity"))
    t0 = scen.meta[0].t0_ms
    assert f.t_ms[0] == t0 + 1000 and np.all(np.diff(f.t_ms) == 100)     # from the current step (10 × 0.1 s)
    assert f.sec_ms.tolist() == [t0 + 1000 * s for s in range(1, 4)]
    assert np.all(f.has_perception) and np.all(f.task_running)
    # Second 0 of the batch is the current step: the car 20 m ahead, 2 m left, closing at 6 m/s.
    first = f.obj_row == 0
    assert np.allclose([f.obj_rel_x_m[first][0], f.obj_rel_y_m[first][0], f.obj_rel_vx_mps[first][0]],
                       [20.0, 2.0, -6.0], atol=1e-5)
    assert not f.accel_valid[-1] and np.allclose(f.accel_lon_mps2[:-1], -1.0)


def test_the_trigger_reads_the_replay_gap() -> None:
    # The same moment through both: the rollout's frames send the lead's box centre 25 m ahead (BOX_CENTRE,
    # with the boxes), which the trigger's one conversion reads as the bumper gap 25 − (2.25 + 2.25) m, the
    # replay's own gap: both TTCs are 20.5 / 5 = 4.1 s.
    scen = scenario([(30.0, 0.0, 5.0)], t=40)
    r = drive(scen, constant(scen, [0.0]))
    (f,) = rollout_frames(r, scen, [(0, 0)], CFG.section("sanity"))
    row = f.obj_row == 1                                  # one second after the current step
    assert f.obj_rel_x_m[row].tolist() == pytest.approx([25.0], abs=1e-5)
    assert not f.bumper_gap.any()
    assert (f.obj_length_m[row].tolist(), f.ego_length_m[1]) == ([4.5], 4.5)
    gap = box_offsets(f.obj_rel_x_m[row], f.obj_length_m[row], f.ego_length_m[f.obj_row[row]],
                      f.bumper_gap[f.obj_row[row]], to_gap=True)
    trigger_ttc = longitudinal_ttc(gap, -f.obj_rel_vx_mps[row], 0.5)
    g = ego_frame(r, scen)
    step = 10 - 1                                         # future steps start one after the current step
    replay_ttc = longitudinal_ttc(g.gap_x[0, 0, 0, step], g.closing[0, 0, 0, step], 0.5)
    assert trigger_ttc.tolist() == pytest.approx([5.0 - 4.5 / 5.0], abs=1e-5)
    assert float(replay_ttc) == pytest.approx(5.0 - 4.5 / 5.0, abs=1e-5)
