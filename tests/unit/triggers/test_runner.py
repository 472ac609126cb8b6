"""The runner finds each episode exactly once whatever the batching, and survives bad input:
boundaries, duplicates, out-of-order and late input, NaN/inf, implausible jumps, gaps, and a
checkpoint/restore in the middle of an episode."""

from __future__ import annotations

import math
import random

import pytest
from fleetloop.codec import pose_batch, pose_columns
from fleetloop.triggers import TriggerRunner, detect_recording, load_config
from fleetloop.triggers import synthetic as syn
from fleetloop.v1 import common_pb2 as pb
from fleetloop.v1 import triggers_pb2

CFG = load_config()


def ids(events: list[triggers_pb2.TriggerEvent]) -> list[tuple[str, str, int]]:
    return sorted((e.trigger_id, e.trigger, e.onset_ms) for e in events)


def per_message(envelopes: list[pb.Envelope], runner: TriggerRunner | None = None) -> list[triggers_pb2.TriggerEvent]:
    runner = runner or TriggerRunner(CFG, envelopes[0].vehicle_id)
    out = [e for env in envelopes for e in runner.feed(env)]
    return out + runner.flush()


@pytest.fixture(scope="module")
def drive() -> tuple[list[pb.Envelope], list[tuple[str, int]]]:
    d, expected = syn.incident_drive("veh-9", 1300, seed=5)
    return d.envelopes(), expected


@pytest.fixture(scope="module")
def drive_events(drive) -> list[tuple[str, str, int]]:
    return ids(detect_recording(drive[0], CFG))


def test_incident_drive_finds_every_incident_once(drive) -> None:
    envelopes, expected = drive
    events = detect_recording(envelopes, CFG)
    got = sorted((e.trigger, e.onset_ms) for e in events)
    assert len(got) == len(expected)
    for (name, slot_ms), (trigger, onset) in zip(sorted(expected), got, strict=True):
        assert trigger == name and slot_ms <= onset < slot_ms + syn.SLOT_S * 1000


def test_three_harnesses_give_identical_events(drive) -> None:
    envelopes, _ = drive
    recording = detect_recording(envelopes, CFG)
    rng = random.Random(7)
    runner = TriggerRunner(CFG, "veh-9")
    batched, i = [], 0
    while i < len(envelopes):
        n = rng.randint(1, 40)
        batched += runner.feed_many(envelopes[i:i + n])
        i += n
    batched += runner.flush()
    assert ids(per_message(envelopes)) == ids(batched) == ids(recording)
    assert [e.SerializeToString(deterministic=True) for e in sorted(batched, key=lambda e: e.trigger_id)] == [
        e.SerializeToString(deterministic=True) for e in sorted(recording, key=lambda e: e.trigger_id)]


def test_episode_spanning_pose_batches_is_found_once() -> None:
    d = syn.cruise("veh-1", 400, seed=1)
    syn.hard_decel(d, 40.6, 5.5, 1.0, lead_m=12.0)   # 40.6 s - 41.6 s: half in each pose batch
    syn.stop(d, 100, 280)                             # minutes long
    events = per_message(d.envelopes())
    assert [(e.trigger, e.onset_ms - d.start_ms) for e in events] == [("hard_brake", 40_800),
                                                                       ("stop_not_go", 100_000)]


def test_duplicates_never_double_an_event(drive, drive_events) -> None:
    envelopes, expected = drive
    doubled = [e for env in envelopes for e in (env, env)]
    runner = TriggerRunner(CFG, "veh-9")
    events = per_message(doubled, runner)
    assert ids(events) == drive_events
    assert runner.stats["duplicate"] == len(envelopes)
    # A re-send long after (its second already evaluated) is stale, not a second event.
    runner = TriggerRunner(CFG, "veh-9")
    first = [e for env in envelopes[:2000] for e in runner.feed(env)]
    again = [e for env in envelopes[:2000] for e in runner.feed(env)]
    assert first and again == [] and runner.stats["stale"] > 1900


def test_out_of_order_batch_is_skipped_and_reported() -> None:
    d = syn.cruise("veh-1", 120, seed=1)
    syn.hard_decel(d, 40.3, 5.5, 1.0, lead_m=12.0)
    envelopes = d.envelopes()
    late = next(e for e in envelopes if e.WhichOneof("payload") == "pose" and e.event_time_ms == d.start_ms + 41_000)
    moved = [e for e in envelopes if e is not late]
    at = next(i for i, e in enumerate(moved) if e.event_time_ms >= d.start_ms + 60_000)
    moved.insert(at, late)                             # arrives ~19 s late
    runner = TriggerRunner(CFG, "veh-1")
    events = per_message(moved, runner)
    assert runner.stats["stale"] == 1
    assert [e.trigger for e in events] == ["hard_brake"]   # the first half alone still qualifies
    # Within the allowed lateness, reordering changes nothing.
    swapped = list(envelopes)
    k = swapped.index(late)
    swapped[k], swapped[k + 3] = swapped[k + 3], swapped[k]
    assert ids(per_message(swapped)) == ids(per_message(envelopes))


def test_nan_inf_and_implausible_values_are_masked() -> None:
    d = syn.cruise("veh-1", 200, seed=1)
    syn.hard_decel(d, 40.3, 5.5, 1.2, lead_m=12.0)
    d.accel_lon_mps2[406] = math.nan                   # inside the brake: must not split it
    d.accel_lon_mps2[1000] = -40.0                     # one 4 g spike: a sensor fault, not a brake
    d.accel_lon_mps2[1001:1003] = -math.inf
    d.yaw_rate_rps[1200:1300:2] = math.nan
    d.speed_mps[1500] = math.inf
    envelopes = d.envelopes()
    pose = next(e for e in envelopes if e.WhichOneof("payload") == "pose" and e.event_time_ms == d.start_ms + 150_000)
    cols = {k: v.copy() for k, v in pose_columns(pose.pose).items()}
    cols["x_m"][5] += 1000.0                           # a 1 km jump in 100 ms
    cols["y_m"][6] = math.nan
    pose.pose.CopyFrom(pose_batch(cols))
    runner = TriggerRunner(CFG, "veh-1")
    events = per_message(envelopes, runner)
    assert [e.trigger for e in events] == ["hard_brake"]
    assert events[0].onset_ms == d.start_ms + 40_500   # the ramp passes 4 m/s² on its third sample
    assert runner.stats["masked_values"] >= 1 + 3 + 50 + 1 + 2


def test_pose_gaps_bridge_a_stop_but_reset_dynamics() -> None:
    d = syn.cruise("veh-1", 700, seed=1)
    syn.stop(d, 100, 300)
    syn.hard_decel(d, 500.3, 5.5, 2.5, lead_m=12.0)
    gone = set(range(d.start_ms + 150_000, d.start_ms + 210_000, 1000))   # 60 s offline, standing still
    gone |= {d.start_ms + 501_000}                                         # the middle of the brake
    envelopes = [e for e in d.envelopes() if e.WhichOneof("payload") != "pose" or e.event_time_ms not in gone]
    events = per_message(envelopes)
    stop = [e for e in events if e.trigger == "stop_not_go"]
    assert [e.onset_ms - d.start_ms for e in stop] == [100_000]
    brakes = [e for e in events if e.trigger == "hard_brake"]
    assert [e.onset_ms - d.start_ms for e in brakes] == [500_500, 502_000]  # one episode per side of the gap
    # Driving on while offline (positions jump across the gap) is nothing.
    drive = syn.cruise("veh-2", 300, seed=2)
    hole = set(range(drive.start_ms + 100_000, drive.start_ms + 250_000, 1000))
    assert per_message([e for e in drive.envelopes() if e.event_time_ms // 1000 * 1000 not in hole]) == []


@pytest.mark.parametrize("cut", [1, 163, 2399, 3700])
def test_checkpoint_mid_episode_resumes_without_loss_or_repeat(drive, drive_events, cut: int) -> None:
    envelopes, _ = drive
    runner = TriggerRunner(CFG, "veh-9")
    before = [e for env in envelopes[:cut] for e in runner.feed(env)]
    state = runner.snapshot()
    assert len(state) < 8_000
    restored = TriggerRunner.restore(state, CFG)
    after = [e for env in envelopes[cut:] for e in restored.feed(env)] + restored.flush()
    assert ids(before + after) == drive_events
    assert restored.stats["accepted"] == len(envelopes)


def test_checkpoint_inside_a_hard_brake_and_a_long_stop() -> None:
    d = syn.cruise("veh-1", 500, seed=3)
    syn.hard_decel(d, 40.3, 5.5, 1.5, lead_m=12.0)
    syn.stop(d, 100, 300)
    envelopes = d.envelopes()
    cuts = [i for i, e in enumerate(envelopes) if e.event_time_ms in (d.start_ms + 44_000, d.start_ms + 200_000)]
    runner = TriggerRunner(CFG, "veh-1")
    out, last = [], 0
    for cut in cuts + [len(envelopes)]:
        out += [e for env in envelopes[last:cut] for e in runner.feed(env)]
        runner = TriggerRunner.restore(runner.snapshot(), CFG)   # crash and resume
        last = cut
    out += runner.flush()
    assert [e.trigger for e in out] == ["hard_brake", "stop_not_go"]
    assert ids(out) == ids(detect_recording(envelopes, CFG))


def test_foreign_and_empty_messages_are_skipped() -> None:
    runner = TriggerRunner(CFG, "veh-1")
    assert runner.feed(pb.Envelope(vehicle_id="veh-2", event_time_ms=1, heartbeat=pb.Heartbeat())) == []
    assert runner.feed(pb.Envelope(vehicle_id="veh-1", event_time_ms=1)) == []
    assert runner.stats == {"wrong_vehicle": 1, "empty": 1}
    with pytest.raises(ValueError, match="state version"):
        TriggerRunner.restore(triggers_pb2.TriggerRunnerState(state_version=99).SerializeToString(), CFG)


def test_malformed_pose_batch_is_dropped_and_counted() -> None:
    d = syn.cruise("veh-1", 100, seed=1)
    syn.hard_decel(d, 40.3, 5.5, 1.2, lead_m=12.0)
    envelopes = d.envelopes()
    bad = next(e for e in envelopes if e.WhichOneof("payload") == "pose" and e.event_time_ms == d.start_ms + 70_000)
    bad.pose.speed_mps = bad.pose.speed_mps[:-4]        # 9 speeds for 10 samples
    runner = TriggerRunner(CFG, "veh-1")
    assert [e.trigger for e in per_message(envelopes, runner)] == ["hard_brake"]
    assert runner.stats["malformed_pose"] == 1
