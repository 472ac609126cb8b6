"""Fleet simulator: determinism, message shape, kinematics, ground truth (pure, no servers)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np
import pytest
from fleetloop import topics
from fleetloop.codec import pose_arrays, pose_columns
from fleetloop.sim import FleetSimulator, GroundTruth, ScheduledIncident, SimConfig
from fleetloop.v1 import common_pb2

from tests.support.simdata import run, window

AUTO = common_pb2.DRIVING_MODE_AUTONOMOUS


def test_same_config_gives_identical_bytes_and_ground_truth(tmp_path):
    incidents = [ScheduledIncident("hard_brake", 0, 30.0), ScheduledIncident("offline", 1, 20.0, 40.0),
                 ScheduledIncident("takeover", 2, 25.0, 30.0), ScheduledIncident("error_code", 3, 10.0)]
    cfg = SimConfig(vehicles=6, duration_s=200, seed=11, incidents=incidents)
    runs = []
    for k in range(2):
        sim = FleetSimulator(cfg)
        blob = [(topic, env.SerializeToString()) for sec in sim.seconds() for topic, env in sec.messages]
        sim.ground_truth.write_jsonl(tmp_path / f"gt{k}.jsonl")
        runs.append(blob)
    assert runs[0] == runs[1]
    assert (tmp_path / "gt0.jsonl").read_bytes() == (tmp_path / "gt1.jsonl").read_bytes()
    other = FleetSimulator(SimConfig(vehicles=6, duration_s=200, seed=12, incidents=incidents))
    assert [env.SerializeToString() for sec in other.seconds() for _, env in sec.messages] != [b for _, b in runs[0]]


def test_every_vehicle_second_has_one_heartbeat_pose_and_perception():
    cfg = SimConfig(vehicles=8, duration_s=90, seed=5, incidents=[])
    sim = FleetSimulator(cfg)
    ids = set()
    for sec in sim.seconds():
        per = defaultdict(lambda: defaultdict(int))
        for topic, env in sec.messages:
            assert env.schema_version == 1
            assert env.message_id not in ids
            ids.add(env.message_id)
            per[env.vehicle_id][topic] += 1
            if topic == topics.POSE:
                assert env.event_time_ms == sec.t_ms
                cols = pose_arrays(env.pose)  # the ingest's own checks: shapes, finiteness, no jumps
                assert cols["t_ms"].tolist() == [sec.t_ms + 100 * k for k in range(10)]
            elif topic in (topics.HEARTBEAT, topics.PERCEPTION):
                assert env.event_time_ms == sec.t_ms
            else:
                assert topic == topics.EVENTS and sec.t_ms <= env.event_time_ms < sec.t_ms + 1000
        assert len(per) == 8
        for counts in per.values():
            assert counts[topics.HEARTBEAT] == counts[topics.POSE] == counts[topics.PERCEPTION] == 1


def test_ground_truth_round_trips_through_jsonl(tmp_path):
    sim = FleetSimulator(SimConfig(vehicles=4, duration_s=120, seed=2,
                                   incidents=[ScheduledIncident("operator_speech", 1, 10.0)]))
    for _ in sim.seconds():
        pass
    path = tmp_path / "gt.jsonl"
    sim.ground_truth.write_jsonl(path)
    back = GroundTruth.read_jsonl(path)
    assert back == sim.ground_truth
    assert [v.kind for v in back.vehicles].count("truck") == 1
    assert back.incidents[0].expected_triggers == ("operator_speech",)


# ---------------------------------------------------------------- mileage and offline


@pytest.fixture(scope="module")
def offline_run():
    incidents = [ScheduledIncident("offline", 0, 100.0, 120.0), ScheduledIncident("offline", 3, 150.0, 60.0),
                 ScheduledIncident("takeover", 1, 60.0, 40.0), ScheduledIncident("call_for_help", 2, 60.0, 40.0)]
    return run(SimConfig(vehicles=8, duration_s=600, seed=9, incidents=incidents))


def test_mileage_equals_what_the_emitted_messages_show(offline_run):
    sim, traces, messages = offline_run
    hb = {}
    for topic, env in messages:
        if topic == topics.HEARTBEAT:
            hb[(env.vehicle_id, env.event_time_ms)] = env.heartbeat
    expect = defaultdict(lambda: [0.0, 0, 0])
    for topic, env in messages:
        if topic != topics.POSE:
            continue
        h = hb[(env.vehicle_id, env.event_time_ms)]
        day = datetime.fromtimestamp(env.event_time_ms / 1000, tz=UTC).strftime("%Y-%m-%d")
        key = (env.vehicle_id, day, h.park, h.city, h.route, h.road_type, h.software_version)
        expect[key][0] += float((pose_columns(env.pose)["speed_mps"].astype(np.float64) * 0.1).sum())
        if h.task_state in (common_pb2.TASK_STATE_RUNNING, common_pb2.TASK_STATE_PAUSED):
            expect[key][1] += 1
            expect[key][2] += h.mode == AUTO
    got = {(m.vehicle_id, m.day, m.park, m.city, m.route, m.road_type, m.software_version):
           [m.distance_m, m.operating_s, m.autonomous_s] for m in sim.ground_truth.mileage}
    assert got.keys() == expect.keys()
    for key, (dist, oper, auto) in expect.items():
        assert got[key][0] == pytest.approx(dist, rel=1e-9, abs=1e-6)
        assert got[key][1:] == [oper, auto]
    total = defaultdict(lambda: [0, 0])
    for m in sim.ground_truth.mileage:
        total[m.vehicle_id][0] += m.operating_s
        total[m.vehicle_id][1] += m.autonomous_s
    # the takeover and the remote drive are operating time that is not autonomous
    assert total["veh-0002"][1] <= total["veh-0002"][0] - 40
    assert total["veh-0003"][1] <= total["veh-0003"][0] - 30


def test_offline_vehicle_sends_nothing_but_keeps_driving(offline_run):
    sim, traces, _ = offline_run
    rows = [i for i in sim.ground_truth.incidents if i.kind == "offline"]
    assert {r.vehicle_id for r in rows} == {"veh-0001", "veh-0004"}
    for r in rows:
        assert r.expected_triggers == ()
        tr = traces[r.vehicle_id]
        times = [t for t, _ in tr.heartbeats] + tr.pose_t + [t for t, _ in tr.perception] + [t for t, _ in tr.events]
        assert not [t for t in times if r.start_ms <= t < r.end_ms]
        before = max(h.odometer_m for t, h in tr.heartbeats if t < r.start_ms)
        after = min(h.odometer_m for t, h in tr.heartbeats if t >= r.end_ms)
        assert any(t == r.end_ms for t, _ in tr.heartbeats)
        assert after > before  # it kept driving while silent


# ---------------------------------------------------------------- incidents

ALL_KINDS = [("hard_brake", 0), ("phantom_stop", 1), ("near_miss", 2), ("contact", 4), ("weaving", 6),
             ("stop_not_go", 8), ("takeover", 10), ("call_for_help", 12), ("error_code", 14),
             ("operator_speech", 16), ("planner_uncertainty", 18), ("scene_complexity", 20), ("offline", 22)]


@pytest.fixture(scope="module")
def incident_run():
    incidents = [ScheduledIncident(kind, vehicle, 30.0 + 3 * n) for n, (kind, vehicle) in enumerate(ALL_KINDS)]
    incidents += [ScheduledIncident("park_blockage", 24, 40.0), ScheduledIncident("error_burst", 26, 40.0),
                  ScheduledIncident("hard_brake", 0, 200.0), ScheduledIncident("phantom_stop", 1, 200.0)]
    return run(SimConfig(vehicles=30, duration_s=1500, seed=4, incidents=incidents))


def test_every_scheduled_incident_is_in_the_ground_truth(incident_run):
    sim, _, _ = incident_run
    rows = sim.ground_truth.incidents
    kinds = defaultdict(list)
    for r in rows:
        kinds[r.kind].append(r)
    for kind, _ in ALL_KINDS:
        assert kinds[kind], kind
        expected = () if kind == "offline" else (kind,)
        assert all(r.expected_triggers == expected for r in kinds[kind] if "park_incident" not in r.detail)
    assert len(kinds["hard_brake"]) == 2 and len(kinds["phantom_stop"]) == 2
    vehicles = {v.vehicle_id: v for v in sim.ground_truth.vehicles}
    for kind, _ in ALL_KINDS:
        for r in kinds[kind]:
            assert r.start_ms <= r.end_ms and r.park == vehicles[r.vehicle_id].park
    # incidents of one vehicle stand alone: >= 60 s apart
    by_vehicle = defaultdict(list)
    for r in rows:
        if r.vehicle_id:
            by_vehicle[r.vehicle_id].append(r)
    for vrows in by_vehicle.values():
        vrows.sort(key=lambda r: r.start_ms)
        for a, b in zip(vrows, vrows[1:], strict=False):
            assert b.start_ms - a.end_ms >= 60_000


def test_park_level_incidents(incident_run):
    sim, traces, _ = incident_run
    rows = sim.ground_truth.incidents
    (blockage,) = [r for r in rows if r.kind == "park_blockage"]
    members = [r for r in rows if r.detail.get("park_incident") == blockage.incident_id]
    assert blockage.expected_triggers == () and blockage.vehicle_id == ""
    assert len(members) >= 4 and all(m.kind == "stop_not_go" and m.park == blockage.park for m in members)
    starts = [m.start_ms for m in members]
    assert max(starts) - min(starts) <= 300_000
    for m in members:
        assert 300_000 <= m.end_ms - m.start_ms <= 720_000
    (burst,) = [r for r in rows if r.kind == "error_burst"]
    code_events = []
    for vid in burst.detail["members"]:
        code_events += [t for t, e in traces[vid].events
                        if e.kind == common_pb2.EVENT_KIND_ERROR_CODE and e.code == burst.detail["code"]]
    assert len(code_events) >= 10 and max(code_events) - min(code_events) <= 120_000
    bursting = {r.vehicle_id for r in rows if r.detail.get("park_incident") == burst.incident_id}
    assert bursting == {v for v, c in burst.detail["counts"].items() if c >= 3}
    assert all(r.expected_triggers == ("error_code",) for r in rows if r.vehicle_id in bursting
               and r.detail.get("park_incident") == burst.incident_id)


def _rows(sim, kind):
    return [r for r in sim.ground_truth.incidents if r.kind == kind]


def _summary_at(trace, t_ms):
    return next(s for t, s in trace.perception if t == t_ms)


def test_hard_brake_and_phantom_stop_shapes(incident_run):
    sim, traces, _ = incident_run
    for kind in ("hard_brake", "phantom_stop"):
        for r in _rows(sim, kind):
            cols = window(traces[r.vehicle_id].columns(), r.start_ms - 1000, r.end_ms)
            decel = -cols["accel_lon_mps2"]
            assert 5.0 <= decel.max() <= 7.0
            assert (decel > 4.0).sum() >= 6  # >= 0.6 s of 10 Hz samples beyond 4 m/s^2
            objs = _summary_at(traces[r.vehicle_id], r.start_ms).objects
            in_path = [o for o in objs if abs(o.rel_y_m) <= 1.5 and 6.0 <= o.rel_x_m <= 25.0]
            if kind == "hard_brake":
                assert in_path
            for t in range(r.start_ms - 1000, r.end_ms, 1000):
                clear = all(not (abs(o.rel_y_m) <= 2.0 and 0 < o.rel_x_m <= 40.0)
                            for o in _summary_at(traces[r.vehicle_id], t).objects)
                assert clear or kind == "hard_brake"


def test_near_miss_weaving_and_stop_shapes(incident_run):
    sim, traces, _ = incident_run
    for r in _rows(sim, "near_miss"):
        tr = traces[r.vehicle_id]
        cols = window(tr.columns(), r.start_ms, r.end_ms)
        assert -cols["accel_lon_mps2"].max() <= 3.5 and -cols["accel_lon_mps2"].min() <= 3.5
        low_ttc = 0
        for t in range(r.start_ms, r.end_ms, 1000):
            for o in _summary_at(tr, t).objects:
                if abs(o.rel_y_m) <= 2.0 and o.rel_x_m > 0 and o.rel_vx_mps < 0 and o.rel_x_m / -o.rel_vx_mps < 1.5:
                    low_ttc += 1
        assert low_ttc >= 2
    for r in _rows(sim, "weaving"):
        cols = window(traces[r.vehicle_id].columns(), r.start_ms, r.end_ms)
        yaw = cols["yaw_rate_rps"]
        assert 0.15 <= np.abs(yaw).max() <= 0.3
        assert cols["speed_mps"].min() > 4.0
        big = yaw[np.abs(yaw) > 0.11]
        assert (np.diff(np.sign(big)) != 0).sum() >= 3
        assert 6_000 <= r.end_ms - r.start_ms <= 11_000
    for r in _rows(sim, "stop_not_go"):
        hbs = [(t, h) for t, h in traces[r.vehicle_id].heartbeats if r.start_ms <= t < r.end_ms]
        assert all(h.speed_mps == 0.0 and h.task_state == common_pb2.TASK_STATE_RUNNING for _, h in hbs)
        assert len({(h.x_m, h.y_m) for _, h in hbs}) == 1
        assert 240_000 <= r.end_ms - r.start_ms <= 720_000


def test_takeover_and_call_for_help_events(incident_run):
    sim, traces, _ = incident_run
    (tk,) = _rows(sim, "takeover")
    events = [(t, e) for t, e in traces[tk.vehicle_id].events if tk.start_ms <= t <= tk.end_ms]
    first = events[0][1]
    assert first.kind == common_pb2.EVENT_KIND_TAKEOVER and first.to_mode == common_pb2.DRIVING_MODE_MANUAL
    assert events[-1][1].kind == common_pb2.EVENT_KIND_MODE_CHANGE and events[-1][1].to_mode == AUTO
    assert 20_000 <= tk.end_ms - tk.start_ms <= 121_000
    (cfh,) = _rows(sim, "call_for_help")
    kinds = [e.kind for t, e in traces[cfh.vehicle_id].events if cfh.start_ms <= t <= cfh.end_ms]
    assert kinds == [common_pb2.EVENT_KIND_CALL_FOR_HELP, common_pb2.EVENT_KIND_MODE_CHANGE,
                     common_pb2.EVENT_KIND_MODE_CHANGE]
    remote = [h for t, h in traces[cfh.vehicle_id].heartbeats if h.mode == common_pb2.DRIVING_MODE_REMOTE]
    assert 30 <= len(remote) <= 180


# Golden fingerprint of one fixed-seed run with every random incident kind that fires in 10 minutes.
# Refactors of the simulator must keep its output bit-identical; a deliberate behaviour change
# updates these two digests in the same commit (and says why).
GOLDEN_MESSAGES_SHA256 = "dc342fdf5b7aed2eb7a2f7b267cf5d390e2c02df401556c83f7c9ea7788c6611"
GOLDEN_GROUND_TRUTH_SHA256 = "9ab9a2be47833cae8b354fd5fc911bdb4f18658cce84450b864f34f5e38ed313"


def _fingerprint(tmp_path) -> tuple[int, str, str]:
    """Run the pinned config; returns (message count, sha256 of topic+bytes of every message, sha256 of the
    ground-truth JSONL)."""
    sim = FleetSimulator(SimConfig(vehicles=12, duration_s=600, seed=3, incidents_per_vehicle_hour=40.0))
    digest = hashlib.sha256()
    count = 0
    for sec in sim.seconds():
        for topic, env in sec.messages:
            digest.update(topic.encode())
            digest.update(env.SerializeToString())
            count += 1
    sim.ground_truth.write_jsonl(tmp_path / "gt.jsonl")
    return count, digest.hexdigest(), hashlib.sha256((tmp_path / "gt.jsonl").read_bytes()).hexdigest()


def test_fixed_seed_output_matches_golden_fingerprint(tmp_path):
    count, messages, truth = _fingerprint(tmp_path)
    assert count == 21620
    assert messages == GOLDEN_MESSAGES_SHA256
    assert truth == GOLDEN_GROUND_TRUTH_SHA256
