"""The one criticality definition: hand-computed known answers, numpy and torch alike, and near_miss
built on it (including the in-second minima of the contract and the hand-over to hard_brake)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fleetloop.triggers import TriggerRunner, detect_recording, load_config
from fleetloop.triggers import criticality as cr
from fleetloop.triggers import synthetic as syn
from fleetloop.v1 import common_pb2

GAP = [10.0, 10.0, 10.0, 4.0, -1.0, 0.0]
CLOSING = [5.0, 0.4, -3.0, 0.5, 2.0, 0.0]
EXPECTED = [2.0, math.inf, math.inf, 8.0, 0.0, math.inf]  # 0.4 < min closing 0.5; opening; overlap = 0 gap
CAR = (4.6, 1.9)  # the ego and the other cars: length, width (m)
PED = (0.5, 0.5)


def box(gap_m: float, y_m: float, other: tuple[float, float] = CAR) -> tuple[float, float, float, float]:
    """Centre offsets and summed half extents of an object `gap_m` ahead (bumper gap) of a CAR-sized ego."""
    hx, hy = 0.5 * (other[0] + CAR[0]), 0.5 * (other[1] + CAR[1])
    return gap_m + hx, y_m, hx, hy


def ttc(gap_m: float, y_m: float, vx: float, vy: float, other=CAR, horizon_s: float = 10.0, ax: float = 0.0,
        ay: float = 0.0) -> float:
    cx, cy, hx, hy = box(gap_m, y_m, other)
    return float(cr.time_to_collision(cx, cy, vx, vy, hx, hy, horizon_s, 0.5, ax, ay))


def test_longitudinal_known_answers_numpy() -> None:
    out = cr.longitudinal_ttc(np.array(GAP), np.array(CLOSING), 0.5)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, EXPECTED)


def test_longitudinal_torch_matches_numpy() -> None:
    out = cr.longitudinal_ttc(torch.tensor(GAP), torch.tensor(CLOSING), 0.5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), np.array(EXPECTED, dtype=np.float32))


def test_zero_min_closing_never_negative() -> None:
    # A standing object with min closing 0 is not on a collision course (no −inf from −0.0).
    assert cr.longitudinal_ttc(np.array([5.0]), -np.array([0.0]), 0.0)[0] == math.inf


def test_in_lane_following() -> None:
    # A car 20 m ahead (bumper gap), closing at 5 m/s, centred: contact when the gap is gone, 20 / 5 = 4 s;
    # beyond a 3 s horizon it is no collision course at all.
    assert ttc(20.0, 0.3, -5.0, 0.0) == pytest.approx(4.0)
    assert ttc(20.0, 0.3, -5.0, 0.0, horizon_s=3.0) == math.inf


def test_cut_in() -> None:
    # A car in the left lane (3.5 m), 3 m ahead, closing at 6 m/s and moving right at 1.5 m/s. Along x
    # the boxes meet from 3 / 6 = 0.5 s; across, |3.5 − 1.5 t| ≤ 1.9 from t = 1.6 / 1.5 = 1.0667 s: the
    # lateral entry decides. The old instantaneous 2 m corridor saw nothing (|y| = 3.5).
    assert ttc(3.0, 3.5, -6.0, -1.5) == pytest.approx(1.6 / 1.5)
    # The same car holding its lane never collides.
    assert ttc(3.0, 3.5, -6.0, 0.0) == math.inf


def test_crossing_that_clears() -> None:
    # A pedestrian 15 m ahead (bumper gap) and 1 m to the right, the ego at 10 m/s, crossing leftward at
    # 3 m/s: it is inside |y| ≤ 1.2 m only until (1.2 + 1) / 3 = 0.733 s, the ego's box reaches its x
    # from 15 / 10 = 1.5 s: no collision (the old TTC said 1.5 s). Post-encroachment: 1.5 − 0.733 s.
    assert ttc(15.0, -1.0, -10.0, 3.0, other=PED) == math.inf
    cx, cy, hx, hy = box(15.0, -1.0, PED)
    pet = cr.post_encroachment_time(cx, cy, 0.0, 3.0, hx, hy, 10.0)
    assert float(pet) == pytest.approx(1.5 - 2.2 / 3.0)
    # Walking at 1 m/s it is still in the path when the ego arrives: a collision course at 1.5 s, PET 0.
    assert ttc(15.0, -1.0, -10.0, 1.0, other=PED) == pytest.approx(1.5)
    assert float(cr.post_encroachment_time(cx, cy, 0.0, 1.0, hx, hy, 10.0)) == 0.0


def test_braking_lead() -> None:
    # A lead 20 m ahead at our speed brakes at 6 m/s²: constant velocity says never; with its
    # acceleration the gap closes as 3 t²: t = sqrt(20 / 3) = 2.582 s, inside the 3 s horizon.
    assert ttc(20.0, 0.0, 0.0, 0.0, horizon_s=3.0) == math.inf
    assert ttc(20.0, 0.0, 0.0, 0.0, horizon_s=3.0, ax=-6.0) == pytest.approx(math.sqrt(20.0 / 3.0))
    # Required deceleration, both at 15 m/s: the lead stops in 15² / 12 = 18.75 m, so the ego must stop
    # within 38.75 m: 225 / 77.5 = 2.903 m/s². A stopped lead 20 m ahead of an ego at 10 m/s: 100 / 40.
    assert float(cr.required_deceleration(20.0, 15.0, 15.0, -6.0)) == pytest.approx(225.0 / 77.5)
    assert float(cr.required_deceleration(20.0, 10.0, 0.0)) == pytest.approx(2.5)
    assert float(cr.required_deceleration(20.0, 10.0, 12.0)) == 0.0
    # A lead braking gently while the ego closes fast: speeds match before it stops, DRAC − its accel.
    assert float(cr.required_deceleration(20.0, 20.0, 10.0, -1.0)) == pytest.approx(100.0 / 40.0 + 1.0)


def test_closing_at_55_m() -> None:
    # Highway: 55 m to a slow truck, closing at 28 m/s: TTC 55 / 28 = 1.96 s, beyond the old 40 m lookahead.
    assert ttc(55.0, 0.0, -28.0, 0.0, other=(12.0, 2.5), horizon_s=3.0) == pytest.approx(55.0 / 28.0)
    assert float(cr.lookahead_m(33.0, 3.0, 40.0)) == pytest.approx(99.0)
    assert float(cr.lookahead_m(5.0, 3.0, 40.0)) == 40.0


def test_headway_and_box_offsets() -> None:
    np.testing.assert_allclose(cr.time_headway(np.array([20.0, 20.0, -1.0]), np.array([10.0, 0.5, 10.0]), 1.0),
                               [2.0, math.inf, math.inf])
    # A bumper gap of 10 m between two 4.6 m cars is 14.6 m between their centres; a centre stays one.
    np.testing.assert_allclose(cr.box_offsets(np.array([10.0, 10.0]), 4.6, 4.6, np.array([True, False])),
                               [14.6, 10.0])
    # ... and back: the bumper gap of a centre 14.6 m ahead is 10 m; a gap stays as sent, bit for bit.
    gap = np.array([10.3, 14.9])
    assert cr.box_offsets(gap, 4.6, 4.6, np.array([True, False]), to_gap=True).tolist() == [10.3, 14.9 - 4.6]
    assert cr.box_offsets(gap, 4.6, 4.6, True, to_gap=True).tolist() == gap.tolist()
    t = torch.tensor([14.6, 10.0], dtype=torch.float64)
    assert cr.box_offsets(t, torch.tensor([4.6, 9.0], dtype=torch.float64), 4.6, torch.tensor([False, True]),
                          to_gap=True).tolist() == pytest.approx([10.0, 10.0])


def test_torch_matches_numpy_in_two_dimensions() -> None:
    rng = np.random.default_rng(5)
    args = [rng.uniform(-30, 30, 256), rng.uniform(-6, 6, 256), rng.uniform(-15, 5, 256), rng.uniform(-3, 3, 256),
            rng.uniform(1, 6, 256), rng.uniform(0.5, 2.5, 256)]
    acc = rng.uniform(-6, 3, 256)
    ref = cr.time_to_collision(*args, 3.0, 0.5, acc, 0.0)
    out = cr.time_to_collision(*[torch.tensor(a) for a in args], 3.0, 0.5, torch.tensor(acc), 0.0)
    assert isinstance(out, torch.Tensor)
    assert np.isfinite(ref).sum() > 20
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9, atol=1e-9)
    # Sampled at 1 ms, the first overlap is never earlier than the analytic one.
    t = np.arange(0, 3.0005, 0.001)[:, None]
    cx, cy, vx, vy, hx, hy = args
    hit = (np.abs(cx + vx * t + 0.5 * acc * t * t) <= hx) & (np.abs(cy + vy * t) <= hy)
    sampled = np.where(hit.any(axis=0), t[np.argmax(hit, axis=0), 0], np.inf)
    closing = np.isfinite(ref)
    np.testing.assert_allclose(ref[closing], sampled[closing], atol=2e-3)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_closed_form_along_x_is_the_general_answer(lib: str) -> None:
    # Objects without lateral motion or acceleration take a closed form: the same numbers as the nine roots.
    rng = np.random.default_rng(9)
    cx, cy, vx = rng.uniform(-40, 60, 4096), rng.uniform(-4, 4, 4096), rng.uniform(-20, 8, 4096)
    cx[:64], vx[64:128] = 0.0, 0.0  # overlapping now; standing still
    hx, hy = rng.uniform(1, 7, 4096), rng.uniform(0.5, 2.5, 4096)
    arrays = [cx, cy, vx, np.zeros(4096), hx, hy, np.zeros(4096), np.zeros(4096)]
    if lib == "torch":
        arrays = [torch.tensor(a) for a in arrays]
    ops = cr._ops(*arrays)
    fast = cr._along_x(ops, arrays[0], arrays[1], arrays[2], arrays[4], arrays[5], 3.0, 0.5)
    general = cr._first_overlap(ops, *arrays, 3.0, 0.5)
    fast, general = (np.asarray(x) for x in (fast, general))
    assert np.isfinite(general).sum() > 300
    np.testing.assert_array_equal(fast, general)


def test_nan_inputs_give_no_collision() -> None:
    assert cr.time_to_collision(np.nan, 0.0, -5.0, 0.0, 2.0, 2.0, 3.0)[()] == math.inf


def near_miss_events(d: syn.SyntheticDrive, **overrides) -> list:
    cfg = load_config(overrides=overrides)
    return [e for e in detect_recording(d.envelopes(), cfg) if e.trigger in ("near_miss", "hard_brake", "phantom_stop")]


def test_near_miss_fires_through_the_shared_definition() -> None:
    # 9 m ahead closing at 6 m/s: TTC 1.5 s < 2 s fires; the same closing from 15 m (2.5 s) stays silent.
    d = syn.cruise("veh-1", 120, seed=3)
    syn.close_object(d, 50, rel_x_m=9.0, closing_mps=6.0)
    events = near_miss_events(d)
    assert [e.trigger for e in events] == ["near_miss"] and abs(events[0].measurements["min_ttc_s"] - 1.5) < 1e-5
    d = syn.cruise("veh-1", 120, seed=3)
    syn.close_object(d, 50, seconds=5, rel_x_m=15.0, closing_mps=6.0)
    assert not near_miss_events(d)


def test_near_miss_ignores_closing_below_its_minimum() -> None:
    # Creeping in a queue at 2 m/s (below min_speed_mps, so only TTC can fire): 0.9 m ahead closing at
    # 0.6 m/s (TTC 1.5 s) fires; 0.6 m ahead closing at 0.4 m/s (TTC 1.5 s too) is below min_closing_mps.
    d = syn.cruise("veh-1", 120, speed_mps=2.0, seed=3)
    syn.close_object(d, 50, rel_x_m=0.9, closing_mps=0.6)
    assert [e.trigger for e in near_miss_events(d)] == ["near_miss"]
    d = syn.cruise("veh-1", 120, speed_mps=2.0, seed=3)
    syn.close_object(d, 50, rel_x_m=0.6, closing_mps=0.4)
    assert not near_miss_events(d)


def test_near_miss_sees_closing_at_55_m_on_the_highway() -> None:
    d = syn.cruise("veh-1", 120, speed_mps=33.0, seed=3)
    syn.close_object(d, 50, rel_x_m=55.0, closing_mps=28.0, object_class=common_pb2.OBJECT_CLASS_TRUCK)
    events = near_miss_events(d)
    assert [e.trigger for e in events] == ["near_miss"]
    assert events[0].measurements["min_ttc_s"] == pytest.approx(55.0 / 28.0, abs=1e-4)


def test_near_miss_sees_a_cut_in_and_a_braking_lead() -> None:
    d = syn.cruise("veh-1", 120, seed=3)
    d.objects[50] = d.objects[50] + [common_pb2.PerceivedObject(
        track_id=5, object_class=common_pb2.OBJECT_CLASS_CAR, rel_x_m=3.0, rel_y_m=3.5, rel_vx_mps=-6.0,
        rel_vy_mps=-1.5, length_m=4.6, width_m=1.9, confidence=0.9)]
    events = near_miss_events(d)
    assert [e.trigger for e in events] == ["near_miss"]
    assert events[0].measurements["min_ttc_s"] == pytest.approx(1.6 / 1.5, abs=1e-4)
    d = syn.cruise("veh-1", 120, seed=3)
    for s in range(50, 52):  # the cruise's own lead (30 m ahead, our speed) brakes at 8 m/s²
        d.objects[s][0] = common_pb2.PerceivedObject(
            track_id=1, object_class=common_pb2.OBJECT_CLASS_CAR, rel_x_m=12.0, rel_y_m=0.2, rel_vx_mps=0.0,
            length_m=4.5, width_m=1.8, confidence=0.95, accel_x_mps2=-8.0)
    events = near_miss_events(d)
    assert [e.trigger for e in events] == ["near_miss"]
    assert events[0].measurements["min_ttc_s"] == pytest.approx(math.sqrt(12.0 / 4.0), abs=1e-4)


def test_crossing_that_clears_raises_no_alarm() -> None:
    d = syn.cruise("veh-1", 120, seed=3)
    d.objects[50] = d.objects[50] + [common_pb2.PerceivedObject(
        track_id=5, object_class=common_pb2.OBJECT_CLASS_PEDESTRIAN, rel_x_m=15.0, rel_y_m=-1.0,
        rel_vx_mps=-10.0, rel_vy_mps=3.0, length_m=0.5, width_m=0.5, confidence=0.9)]
    assert not near_miss_events(d)


def test_braking_for_a_truck_60_m_ahead_on_the_highway_is_no_phantom_stop() -> None:
    # At 33 m/s the path reaches 33 × 3 = 99 m: a slow truck 60 m ahead is what the ego brakes for.
    d = syn.cruise("veh-1", 120, speed_mps=33.0, seed=3)
    syn.hard_decel(d, 50.0, 5.0, 1.0, lead_m=None)
    for s in range(49, 53):
        d.objects[s] = d.objects[s] + [common_pb2.PerceivedObject(
            track_id=8, object_class=common_pb2.OBJECT_CLASS_TRUCK, rel_x_m=60.0, rel_y_m=0.2, rel_vx_mps=-8.0,
            length_m=12.0, width_m=2.5, confidence=0.9)]
    assert [e.trigger for e in near_miss_events(d)] == ["hard_brake"]
    d = syn.cruise("veh-1", 120, speed_mps=10.0, seed=3)  # at 10 m/s the path stops at the 40 m floor
    syn.hard_decel(d, 50.0, 5.0, 1.0, lead_m=None)
    for s in range(49, 53):
        d.objects[s] = d.objects[s] + [common_pb2.PerceivedObject(
            track_id=8, object_class=common_pb2.OBJECT_CLASS_TRUCK, rel_x_m=60.0, rel_y_m=0.2, rel_vx_mps=-2.0,
            length_m=12.0, width_m=2.5, confidence=0.9)]
    assert [e.trigger for e in near_miss_events(d)] == ["phantom_stop"]


def test_in_second_minima_reach_the_cloud() -> None:
    # An encounter between two summaries: the vehicle's 10 Hz tracks saw TTC 0.8 s in the second, gone
    # by the summary (window minimum), or on an object still listed (its own minimum).
    d = syn.cruise("veh-1", 120, seed=3)
    d.window_min_ttc_s = {50: 0.8}
    events = near_miss_events(d)
    assert [e.trigger for e in events] == ["near_miss"] and events[0].measurements["min_ttc_s"] == pytest.approx(0.8)
    d = syn.cruise("veh-1", 120, seed=3)
    lead = common_pb2.PerceivedObject()
    lead.CopyFrom(d.objects[60][0])
    lead.min_ttc_s = 1.2
    d.objects[60] = [lead, d.objects[60][1]]
    events = near_miss_events(d)
    assert [e.trigger for e in events] == ["near_miss"] and events[0].measurements["min_ttc_s"] == pytest.approx(1.2)


def test_box_centre_positions_and_the_ego_box_the_summary_sends() -> None:
    # A truck's vehicle (ego 9 m long) reports box centres: a car 16.8 m ahead centre to centre is a
    # bumper gap of 16.8 − (9 + 4.6) / 2 = 10 m; closing at 6 m/s: TTC 1.667 s. Read as a legacy bumper
    # gap the same numbers say 2.8 s: nothing.
    d = syn.cruise("veh-1", 120, seed=3)
    d.objects[50] = d.objects[50] + [common_pb2.PerceivedObject(
        track_id=5, object_class=common_pb2.OBJECT_CLASS_CAR, rel_x_m=16.8, rel_y_m=0.0, rel_vx_mps=-6.0,
        length_m=4.6, width_m=1.9, confidence=0.9)]
    envelopes = d.envelopes()
    legacy = [e.trigger for e in detect_recording(envelopes, load_config())]
    for env in envelopes:
        if env.WhichOneof("payload") == "perception":
            env.perception.position_reference = common_pb2.POSITION_REFERENCE_BOX_CENTRE
            env.perception.ego_length_m, env.perception.ego_width_m = 9.0, 2.5
    events = [e for e in detect_recording(envelopes, load_config()) if e.trigger == "near_miss"]
    assert "near_miss" not in legacy
    assert len(events) == 1 and events[0].measurements["min_ttc_s"] == pytest.approx(10.0 / 6.0, abs=1e-4)


def test_near_miss_reads_one_scene_the_same_in_either_position_reference() -> None:
    # The same drive sent with bumper gaps and with box centres (each object's rel_x_m + half the two lengths,
    # from a 9 m ego that says so in both): the same events with the same TTC and distance.
    d = syn.cruise("veh-1", 120, seed=3)
    syn.close_object(d, 50, rel_x_m=9.0, closing_mps=6.0)
    gaps = d.envelopes()
    centres = d.envelopes()
    for g, c in zip(gaps, centres, strict=True):
        if g.WhichOneof("payload") != "perception":
            continue
        for env in (g, c):
            env.perception.ego_length_m, env.perception.ego_width_m = 9.0, 2.5
        g.perception.position_reference = common_pb2.POSITION_REFERENCE_BUMPER_GAP
        c.perception.position_reference = common_pb2.POSITION_REFERENCE_BOX_CENTRE
        for o in c.perception.objects:
            o.rel_x_m = float(cr.box_offsets(np.float64(o.rel_x_m), np.float64(o.length_m), 9.0, True))
    by_gap = [e for e in detect_recording(gaps, load_config()) if e.trigger == "near_miss"]
    by_centre = [e for e in detect_recording(centres, load_config()) if e.trigger == "near_miss"]
    assert len(by_gap) == 1 and by_gap[0].measurements["min_ttc_s"] == pytest.approx(1.5, abs=1e-5)
    assert [(e.onset_ms, e.peak_ms, e.end_ms) for e in by_centre] == [(e.onset_ms, e.peak_ms, e.end_ms) for e in by_gap]
    for a, b in zip(by_gap, by_centre, strict=True):
        assert a.measurements.keys() == b.measurements.keys()
        for key, value in a.measurements.items():
            assert b.measurements[key] == pytest.approx(value, abs=1e-4), key


def braking_before_impact(decel_samples: int) -> syn.SyntheticDrive:
    """The issue's case: TTC 1.14 s then 0.05 s, the ego braking at 8 m/s² for `decel_samples` samples."""
    d = syn.cruise("veh-1", 120, seed=3)
    syn.close_object(d, 50, rel_x_m=1.14 * 8.0, closing_mps=8.0)
    syn.close_object(d, 51, rel_x_m=0.05 * 8.0, closing_mps=8.0)
    d.accel_lon_mps2[508:508 + decel_samples] = -8.0
    return d


def test_hand_over_never_loses_the_near_miss() -> None:
    # Two samples at 8 m/s² are no hard_brake (it needs ≥ 0.3 s): near_miss fires, once.
    assert [e.trigger for e in near_miss_events(braking_before_impact(2))] == ["near_miss"]
    # Braking 0.8 s is a hard_brake: that is the incident's one event.
    assert [e.trigger for e in near_miss_events(braking_before_impact(8))] == ["hard_brake"]
    # Without the hand-over both fire.
    no_yield = {"near_miss": {"params": {"yield_to_hard_brake": False}}}
    both = near_miss_events(braking_before_impact(8), triggers=no_yield)
    assert sorted(e.trigger for e in both) == ["hard_brake", "near_miss"]
    # With hard_brake disabled there is nothing to hand over to.
    alone = near_miss_events(braking_before_impact(8), triggers={"hard_brake": {"enabled": False}})
    assert [e.trigger for e in alone] == ["near_miss"]


@pytest.mark.parametrize("samples,expected", [(2, ["near_miss"]), (8, ["hard_brake"])])
def test_hand_over_is_the_same_fed_message_by_message_with_restarts(samples: int, expected: list[str]) -> None:
    cfg = load_config()
    runner = TriggerRunner(cfg, "veh-1")
    events = []
    for n, env in enumerate(braking_before_impact(samples).envelopes()):
        events += runner.feed(env)
        if n % 37 == 0:
            runner = TriggerRunner.restore(runner.snapshot(), cfg)
    events += runner.flush()
    assert [e.trigger for e in events if e.trigger in ("near_miss", "hard_brake", "phantom_stop")] == expected


def test_replay_ttc_term_reads_the_near_miss_numbers() -> None:
    # One definition needs one set of numbers: replay.yaml's TTC term repeats triggers.yaml's near_miss.
    from fleetloop.replay.config import load_config as load_replay_config

    replay = load_replay_config().section("costs")["terms"]["ttc"]["params"]
    triggers = load_config()
    near_miss = triggers.triggers["near_miss"].params
    assert replay["ttc_s"] == near_miss["ttc_s"] and replay["min_closing_mps"] == near_miss["min_closing_mps"]
    assert replay["lookahead_m"] == triggers.section("ego_path")["lookahead_m"]
    assert replay["horizon_s"] == triggers.section("criticality")["horizon_s"]
