"""Scenarios from minilogs: a real minilog cut by the vehicle runtime from the simulated fleet, the
simulator's ground truth of the same moment, perception errors, and precise errors for bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fleetloop import topics
from fleetloop.replay.config import load_config
from fleetloop.replay.maps import PolylineMap, SimWorldMap
from fleetloop.replay.minilog import (
    TruthRecorder,
    from_ground_truth,
    from_minilog,
    perception_error,
    read_minilog,
    track_ids,
)
from fleetloop.replay.scenario import EGO, AgentClass, MapKind, ScenarioError
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.v1 import common_pb2, uploads_pb2
from fleetloop.vehicle import RingBuffer, Uploader, open_store, read_mcap, write_mcap
from fleetloop.vehicle.params import load_vehicle_params

from tests.support.fleetdata import T0_MS, drive

CFG = load_config()
VEHICLE = "veh-0001"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A simulated hard brake, recorded by the vehicle's ring buffer and uploaded as a minilog exactly as
    the vehicle runtime answers a case's upload request (10 s before, 5 s after the incident)."""
    sim = FleetSimulator(SimConfig(vehicles=2, duration_s=150, seed=3,
                                   incidents=[ScheduledIncident("hard_brake", 0, 60)]))
    recorder = TruthRecorder(sim, [VEHICLE])
    buffer = RingBuffer(load_vehicle_params().ring_capacity_s)
    for second in recorder.seconds():
        for topic, env in second.messages:
            if env.vehicle_id == VEHICLE:
                buffer.append(topic, env)
    (incident,) = [i for i in sim.ground_truth.incidents if i.vehicle_id == VEHICLE]
    store = open_store((tmp_path_factory.mktemp("objects")).as_uri())
    request = uploads_pb2.UploadRequest(request_id="req-1", case_id="case-hb", tier="minilog",
                                        window_start_ms=incident.start_ms - 10_000,
                                        window_end_ms=incident.start_ms + 5_000, attempt=1)
    _, complete = Uploader(store, load_vehicle_params()).answer(VEHICLE, buffer, request)
    assert complete.state == uploads_pb2.UPLOAD_STATE_COMPLETE
    return sim, recorder, incident, store.get(complete.uri)


@pytest.fixture(scope="module")
def world(fleet):
    return SimWorldMap.from_simulator(fleet[0])


@pytest.fixture(scope="module")
def perceived(fleet, world):
    return from_minilog(fleet[3], world, CFG)


def rotate(x, y, h):
    return math.cos(h) * x - math.sin(h) * y, math.sin(h) * x + math.cos(h) * y


def test_minilog_scenario_carries_case_vehicle_place_and_scene_context(fleet, perceived):
    _, _, incident, data = fleet
    perceived.validate()
    meta = perceived.meta[0]
    assert (meta.case_id, meta.vehicle_id, meta.city, meta.source) == ("case-hb", VEHICLE, "suzhou", "minilog")
    # the default decision point: the latest whose 8 s horizon the 15 s window covers, 3 s before the brake
    at_ms = meta.t0_ms + 100 * perceived.current_step
    assert incident.start_ms - at_ms == pytest.approx(3000, abs=100)
    _, messages = read_mcap(data)
    summary = max((e for c, t, e in messages if c == "/perception" and t <= at_ms), key=lambda e: e.event_time_ms)
    assert (meta.weather, meta.light, meta.road_type) == (summary.perception.weather, summary.perception.light,
                                                           summary.perception.road_type)
    assert f"maneuver:{summary.perception.maneuver}" in meta.tags
    assert perceived.planner_xy is None  # minilogs carry the planner's costs, not its path
    assert any(t.startswith("planner_gap:") for t in meta.tags)
    assert (float(perceived.length[0, EGO]), float(perceived.width[0, EGO])) == pytest.approx((4.6, 1.9))
    truck = from_minilog(data, ROAD, CFG, ego_size_m=(9.0, 2.5))  # the log does not say what drove it
    assert (float(truck.length[0, EGO]), float(truck.width[0, EGO])) == (9.0, 2.5)


def test_ego_follows_the_logged_pose_in_the_ego_frame(fleet, perceived):
    ego, _, _ = read_minilog(fleet[3])
    meta = perceived.meta[0]
    k0 = perceived.current_step
    assert bool(perceived.valid[0, EGO].all())  # the window is inside the log
    t = meta.t0_ms + 100 * np.arange(perceived.n_steps)
    rows = np.searchsorted(ego.t_ms, t)
    assert np.array_equal(ego.t_ms[rows], t)
    dx, dy = ego.x[rows] - meta.origin_x_m, ego.y[rows] - meta.origin_y_m
    lx, ly = rotate(dx, dy, -meta.origin_heading_rad)
    assert np.allclose(perceived.x[0, EGO].numpy(), lx, atol=2e-3)
    assert np.allclose(perceived.y[0, EGO].numpy(), ly, atol=2e-3)
    assert np.allclose(perceived.speed[0, EGO].numpy(), ego.speed[rows], atol=1e-4)
    assert abs(float(perceived.x[0, EGO, k0])) < 1e-6 and abs(float(perceived.heading[0, EGO, k0])) < 1e-6
    # the ego brakes hard 3 s in: the log, not a smoothed version of it
    accel = (perceived.speed[0, EGO, 1:] - perceived.speed[0, EGO, :-1]) / perceived.dt_s
    assert float(accel[k0:].min()) < -5.0


def test_detections_land_where_the_summary_put_them_and_the_rest_is_filled(fleet, perceived):
    _, messages = read_mcap(fleet[3])
    ego, _, _ = read_minilog(fleet[3])
    meta = perceived.meta[0]
    ids = track_ids(meta)
    t_grid = meta.t0_ms + 100 * np.arange(perceived.n_steps)
    seconds = [(t, e.perception) for c, t, e in messages if c == "/perception" and t_grid[0] <= t <= t_grid[-1]]
    checked = 0
    for t_ms, summary in seconds:
        k = int(np.flatnonzero(t_grid == t_ms)[0])
        row = int(np.flatnonzero(ego.t_ms == t_ms)[0])
        ex, ey, eh = ego.x[row], ego.y[row], ego.heading[row]
        for obj in summary.objects:
            if obj.track_id not in ids:
                continue
            slot = ids.index(obj.track_id)
            # the simulator sends bumper gaps: the box centre is half the two lengths further
            ego_l = summary.ego_length_m if summary.HasField("ego_length_m") else 4.6
            wx, wy = rotate(obj.rel_x_m + 0.5 * (obj.length_m + ego_l), obj.rel_y_m, eh)
            lx, ly = rotate(ex + wx - meta.origin_x_m, ey + wy - meta.origin_y_m, -meta.origin_heading_rad)
            assert float(perceived.x[0, slot, k]) == pytest.approx(lx, abs=2e-3)
            assert float(perceived.y[0, slot, k]) == pytest.approx(ly, abs=2e-3)
            assert bool(perceived.valid[0, slot, k]) and not bool(perceived.filled[0, slot, k])
            assert float(perceived.length[0, slot]) == pytest.approx(obj.length_m)
            checked += 1
    assert checked >= 20
    on_second = torch.from_numpy(np.isin(t_grid, [t for t, _ in seconds]))
    filled = perceived.filled[0]
    assert bool(filled.any()) and not bool(filled[:, on_second].any())
    assert bool((perceived.valid[0] | ~filled).all())  # filled is a subset of valid
    assert not bool(filled[EGO].any())
    # the braking lead the incident put in front of the ego is one of the tracks, in the ego's lane
    k0 = perceived.current_step
    lead = [s for s in range(1, perceived.n_agents) if perceived.valid[0, s, k0:].any()
            and float(perceived.y[0, s][perceived.valid[0, s]].abs().max()) < 1.0
            and int(perceived.agent_class[0, s]) in (AgentClass.CAR, AgentClass.TRUCK, AgentClass.TRICYCLE)]
    assert lead


def test_the_map_crop_comes_from_the_simulated_world(perceived):
    k0 = perceived.current_step
    lanes = perceived.map_kind[0] == MapKind.LANE_CENTRE
    a, b = perceived.map_xy[0, :, :-1], perceived.map_xy[0, :, 1:]
    ok = (perceived.map_valid[0, :, :-1] & perceived.map_valid[0, :, 1:]) & lanes[:, None]
    ab = b - a
    t = ((-a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-9)
    dist = torch.where(ok, (a + t.clamp(0, 1)[..., None] * ab).norm(dim=-1), torch.full_like(t, math.inf))
    nearest = int(dist.min(dim=1).values.argmin())
    assert float(dist.min()) < 0.3  # the ego drives a lane centre of the simulator's map
    limit = float(perceived.map_speed_limit_mps[0, nearest])
    assert limit in (8.0, 13.9) and float(perceived.speed[0, EGO, k0]) <= limit
    assert bool((perceived.map_kind[0] == MapKind.ROAD_EDGE).any())
    # lane centres run the ego's way: the nearest one's direction matches the ego heading
    seg = ab[nearest][ok[nearest]]
    assert float(seg[:, 0].sum()) > 0 and abs(float(seg[:, 1].sum())) < 0.1 * float(seg[:, 0].sum())


def test_ground_truth_of_the_same_moment_and_the_perception_error(fleet, world, perceived):
    _, recorder, _, _ = fleet
    meta = perceived.meta[0]
    truth = from_ground_truth(recorder.truth(VEHICLE), meta.t0_ms + 100 * perceived.current_step, world, CFG,
                              case_id="case-hb")
    truth.validate()
    assert truth.meta[0].source == "ground_truth" and not bool(truth.filled.any())
    assert "incident:hard_brake:inc-0000-hard_brake" in truth.meta[0].tags
    assert (truth.meta[0].origin_x_m, truth.meta[0].origin_y_m) == pytest.approx((meta.origin_x_m, meta.origin_y_m))
    (err,) = perception_error(perceived, truth)
    assert err.missed == [] and err.phantom == [] and len(err.track_ids) >= 5
    # the simulator's perception is exact at the seconds it reports (float32 on the wire) ...
    assert err.observed_position_error_m < 1e-3
    # ... and the 1 Hz log loses what happens between them: interpolation is not the simulator's motion
    assert 0.05 < err.filled_position_error_m < 2.0


def test_perception_error_names_missed_and_phantom_tracks(fleet, world, perceived):
    """A minilog whose perception dropped one real object and reported one that is not there."""
    _, recorder, _, data = fleet
    metadata, messages = read_mcap(data)
    ids = [i for i in track_ids(perceived.meta[0]) if i >= 0]
    dropped = ids[0]
    items = []
    for channel, t_ms, env in messages:
        topic = {"/pose": topics.POSE, "/heartbeat": topics.HEARTBEAT, "/perception": topics.PERCEPTION,
                 "/events": topics.EVENTS}[channel]
        if channel == "/perception":
            kept = [o for o in env.perception.objects if o.track_id != dropped]
            del env.perception.objects[:]
            env.perception.objects.extend(kept)
            env.perception.objects.add(track_id=9999, object_class=common_pb2.OBJECT_CLASS_UNKNOWN, rel_x_m=25.0,
                                       rel_y_m=0.0, rel_vx_mps=0.0, length_m=1.2, width_m=0.9, confidence=0.4)
        items.append((t_ms, topic, env))
    faulty = from_minilog(write_mcap(items, metadata).data, world, CFG)
    meta = perceived.meta[0]
    truth = from_ground_truth(recorder.truth(VEHICLE), meta.t0_ms + 100 * perceived.current_step, world, CFG)
    (err,) = perception_error(faulty, truth)
    assert err.missed == [dropped] and err.phantom == [9999]
    with pytest.raises(ScenarioError, match="not the same moment"):
        other = from_ground_truth(recorder.truth(VEHICLE), meta.t0_ms + 100 * perceived.current_step + 2000,
                                  world, CFG)
        perception_error(faulty, other)


ROAD = PolylineMap([])  # hand-built files below need no map


def hand_minilog(detections: dict[int, list[tuple]], *, poses: bool = True, seconds: int = 12,
                 window: tuple[int, int] | None = None, events: dict[int, int] | None = None,
                 reference: int = common_pb2.POSITION_REFERENCE_UNSPECIFIED,
                 ego_length_m: float | None = None) -> bytes:
    """Straight driving at 10 m/s along +x (tests/support/fleetdata), a perception summary per second with the
    given objects {second: [(track, rel_x, rel_y, rel_vx, length, width)]}, their rel_x read by `reference`,
    the summaries sending `ego_length_m` when given; vehicle events {second: kind}."""
    items = []
    for s, kind in (events or {}).items():
        t = T0_MS + 1000 * s + 300
        items.append((t, topics.EVENTS, common_pb2.Envelope(
            schema_version=1, vehicle_id="veh-h", event_time_ms=t, message_id=f"veh-h/ev/{t}",
            event=common_pb2.VehicleEvent(kind=kind, source="system"))))
    for topic, env in drive("veh-h", seconds, speed=10.0, city="hand-city"):
        if topic == topics.POSE and not poses:
            continue
        items.append((env.event_time_ms, topic, env))
    for s in range(seconds):
        t = T0_MS + 1000 * s
        env = common_pb2.Envelope(schema_version=1, vehicle_id="veh-h", event_time_ms=t, message_id=f"veh-h/pe/{t}")
        env.perception.weather = common_pb2.WEATHER_FOG
        env.perception.light = common_pb2.LIGHT_NIGHT
        env.perception.position_reference = reference
        if ego_length_m is not None:
            env.perception.ego_length_m = ego_length_m
        for track, x, y, vx, length, width in detections.get(s, []):
            env.perception.objects.add(track_id=track, object_class=common_pb2.OBJECT_CLASS_CAR, rel_x_m=x, rel_y_m=y,
                                       rel_vx_mps=vx, length_m=length, width_m=width, confidence=0.9)
        items.append((t, topics.PERCEPTION, env))
    start, end = window or (T0_MS, T0_MS + 1000 * seconds)
    return write_mcap(sorted(items, key=lambda i: i[0]), {
        "case_id": "case-hand", "vehicle_id": "veh-h", "tier": "minilog", "window_start_ms": str(start),
        "window_end_ms": str(end)}).data


def test_tracks_are_interpolated_across_one_missed_second_not_two():
    # a car 30 m ahead at 4 m/s (relative -6 m/s): its map position is 30 + 4 t. Seen at seconds
    # 1, 2, 4 (one miss) and 7 (two misses): filled from 2 to 4, a gap from 4 to 7.
    car = {s: [(77, 30.0 + (4.0 - 10.0) * s, 0.0, -6.0, 4.6, 1.9)] for s in (1, 2, 4, 7)}
    events = {5: common_pb2.EVENT_KIND_CONTACT, 11: common_pb2.EVENT_KIND_TAKEOVER}  # the takeover is after the window
    scen = from_minilog(hand_minilog(car, events=events), ROAD, CFG, at_ms=T0_MS + 2000)
    meta = scen.meta[0]
    assert (meta.city, meta.weather, meta.light) == ("hand-city", common_pb2.WEATHER_FOG, common_pb2.LIGHT_NIGHT)
    assert "event:contact" in meta.tags and "event:takeover" not in meta.tags
    slot = track_ids(meta).index(77)
    t_s = (meta.t0_ms - T0_MS) / 1000 + 0.1 * np.arange(scen.n_steps)
    valid, filled = scen.valid[0, slot].numpy(), scen.filled[0, slot].numpy()
    expect_valid = ((t_s >= 1 - 1e-6) & (t_s <= 4 + 1e-6)) | (np.abs(t_s - 7) < 1e-6)
    assert np.array_equal(valid, expect_valid)
    detected = np.any([np.abs(t_s - d) < 1e-6 for d in (1, 2, 4, 7)], axis=0)
    assert np.array_equal(filled, expect_valid & ~detected)
    # box centres in the ego frame of t = 2 s (the ego at x = 20 m): the bumper gap 30 + 4 t - 20 plus the
    # two half lengths (4.6 m car, 4.6 m ego), exact when motion is uniform
    x = scen.x[0, slot].numpy()
    assert np.allclose(x[valid], (30.0 + 4.0 * t_s - 20.0 + 4.6)[valid], atol=1e-3)
    assert np.allclose(scen.speed[0, slot].numpy()[valid], 4.0, atol=1e-4)
    assert np.allclose(scen.vx[0, slot].numpy()[valid], 4.0, atol=1e-4)


def test_one_scene_in_either_position_reference_is_one_scenario():
    # A 9 m truck closing on the ego and a car beside it, sent as bumper gaps (unset and BUMPER_GAP) and as box
    # centres (gap + half the two lengths: the 4.6 m van, or the 9 m ego a summary says it has): the same
    # scenario tensors, the truck's centre 20 + (9 + 4.6) / 2 m ahead of the ego's at the current step.
    def objects(shift):
        return {s: [(3, 20.0 - 4.0 * (s - 2) + shift(9.0), 0.2, -4.0, 9.0, 2.5),
                    (4, 6.0 + shift(4.6), 3.5, 0.0, 4.6, 1.9)] for s in range(12)}

    def build(data: bytes):
        return from_minilog(data, ROAD, CFG, at_ms=T0_MS + 2000)

    same = build(hand_minilog(objects(lambda length: 0.0)))
    cases = {
        "bumper gap": build(hand_minilog(objects(lambda length: 0.0),
                                         reference=common_pb2.POSITION_REFERENCE_BUMPER_GAP)),
        "centre": build(hand_minilog(objects(lambda length: 0.5 * (length + 4.6)),
                                     reference=common_pb2.POSITION_REFERENCE_BOX_CENTRE)),
        "gap, ego box sent": build(hand_minilog(objects(lambda length: 0.0), ego_length_m=9.0)),
    }
    truck_slot = track_ids(same.meta[0]).index(3)
    assert float(same.x[0, truck_slot, same.current_step]) == pytest.approx(20.0 + 0.5 * (9.0 + 4.6), abs=1e-4)
    for name, scen in cases.items():
        for field in ("x", "y", "vx", "vy", "speed", "heading", "valid", "filled", "length", "width", "agent_class"):
            if name == "gap, ego box sent" and field == "x":
                continue
            torch.testing.assert_close(getattr(scen, field), getattr(same, field), atol=2e-5, rtol=0, msg=name)
        assert track_ids(scen.meta[0]) == track_ids(same.meta[0]), name
    # the ego box the summary sends reads its gaps: the truck's centre is (9 − 4.6) / 2 m further
    sent = cases["gap, ego box sent"]
    torch.testing.assert_close(sent.x[0, truck_slot][sent.valid[0, truck_slot]],
                               same.x[0, truck_slot][same.valid[0, truck_slot]] + 2.2, atol=2e-5, rtol=0)
    centre_9m = build(hand_minilog(objects(lambda length: 0.5 * (length + 9.0)), ego_length_m=9.0,
                                   reference=common_pb2.POSITION_REFERENCE_BOX_CENTRE))
    torch.testing.assert_close(centre_9m.x, sent.x, atol=2e-5, rtol=0)


def test_bad_minilogs_get_precise_errors():
    car = {s: [(5, 20.0, 0.0, 0.0, 4.6, 1.9)] for s in range(12)}
    with pytest.raises(ScenarioError, match="minilog case-hand: no ego pose"):
        from_minilog(hand_minilog(car, poses=False), ROAD, CFG)
    with pytest.raises(ScenarioError, match="minilog case-hand: empty window"):
        from_minilog(hand_minilog(car, window=(T0_MS + 5000, T0_MS + 5000)), ROAD, CFG)
    with pytest.raises(ScenarioError, match="empty window: the ego is logged"):
        from_minilog(hand_minilog(car), ROAD, CFG, at_ms=T0_MS + 60_000)
    flat = {3: [(6, 20.0, 0.0, 0.0, 0.0, 1.9)]}
    with pytest.raises(ScenarioError, match=r"track 6 at \d+ ms has zero or unknown size"):
        from_minilog(hand_minilog(flat), ROAD, CFG)
    with pytest.raises(KeyError, match="not in the simulated fleet"):
        TruthRecorder(FleetSimulator(SimConfig(vehicles=1, duration_s=5)), ["veh-9999"])
