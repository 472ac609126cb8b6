"""Family labelers and `label_second` over hand-built protobuf seconds."""

from __future__ import annotations

import numpy as np
import pytest
from fleetloop.codec import Rejected, pose_batch
from fleetloop.labels import LabelRow, load_taxonomy
from fleetloop.v1 import common_pb2 as pb

from tests.oracles.labelers import (
    SecondInputs,
    label_agents,
    label_ego,
    label_environment,
    label_mode,
    label_perception,
    label_road,
    label_second,
)

TX = load_taxonomy()
TH = TX.thresholds
T0 = 1_700_000_000_000


def heartbeat(**kw) -> pb.Heartbeat:
    base = dict(mode=pb.DRIVING_MODE_AUTONOMOUS, speed_mps=5.0, road_type=pb.ROAD_TYPE_URBAN,
                task_state=pb.TASK_STATE_RUNNING, park="park-a", city="city-x",
                connectivity=pb.CONNECTIVITY_CELLULAR, state_of_charge=0.7, compute_temp_c=55.0)
    base.update(kw)
    return pb.Heartbeat(**base)


def pose(speed=5.0, accel=0.0, accel_lat=0.0, yaw=0.0, gear=1, modes=None, n=10) -> pb.PoseBatch:
    def col(value):
        return np.broadcast_to(np.asarray(value, float), (n,))
    zeros = np.zeros(n)
    return pose_batch({
        "t_ms": T0 + 100 * np.arange(n), "x_m": zeros, "y_m": zeros, "lat_deg": zeros, "lon_deg": zeros,
        "speed_mps": col(speed), "accel_lon_mps2": col(accel), "accel_lat_mps2": col(accel_lat),
        "heading_rad": zeros, "yaw_rate_rps": col(yaw), "steering_rad": zeros, "throttle": zeros, "brake": zeros,
        "gear": np.broadcast_to(gear, (n,)),
        "mode": modes if modes is not None else np.full(n, pb.DRIVING_MODE_AUTONOMOUS),
    })


def obj(cls, x, y, vx=0.0, vy=0.0, conf=0.9, occluded=False) -> pb.PerceivedObject:
    return pb.PerceivedObject(object_class=cls, rel_x_m=x, rel_y_m=y, rel_vx_mps=vx, rel_vy_mps=vy,
                              confidence=conf, emerged_from_occlusion=occluded)


def perception(objects=(), **kw) -> pb.PerceptionSummary:
    base = dict(weather=pb.WEATHER_CLEAR, light=pb.LIGHT_DAY, junction_type=pb.JUNCTION_TYPE_NONE,
                lane_count=2, lane_index=0, speed_limit_mps=50 / 3.6, maneuver="cruise")
    base.update(kw)
    return pb.PerceptionSummary(objects=list(objects), **base)


def inputs(hb=None, ps=None, pc=None) -> SecondInputs:
    return SecondInputs.of(hb, ps, pc)


def test_environment_one_hot_and_unknown_when_missing():
    out = label_environment(inputs(pc=perception(weather=pb.WEATHER_RAIN, light=pb.LIGHT_NIGHT)), TH)
    assert out.tags["weather.rain"] and out.tags["light.night"]
    assert out.tags["weather.clear"] is False and out.tags["light.day"] is False
    unspecified = label_environment(inputs(pc=perception(weather=pb.WEATHER_UNSPECIFIED)), TH)
    assert "weather.rain" not in unspecified.tags and "light.day" in unspecified.tags
    assert label_environment(inputs(), TH).tags == {}


def test_road_prefers_heartbeat_then_perception_and_reads_map_context():
    out = label_road(inputs(hb=heartbeat(road_type=pb.ROAD_TYPE_TUNNEL),
                            pc=perception(road_type=pb.ROAD_TYPE_PARK,
                                          junction_type=pb.JUNCTION_TYPE_SIGNALIZED, crosswalk=True,
                                          lane_count=3, lane_index=2, speed_limit_mps=20 / 3.6)), TH)
    assert out.tags["road.tunnel"] and not out.tags["road.park"]
    assert out.tags["junction.signalized"] and out.tags["junction.any"] and not out.tags["junction.roundabout"]
    assert out.tags["crosswalk"] and out.tags["lanes.multi"] and out.tags["lane.leftmost"]
    assert not out.tags["lane.rightmost"] and out.tags["speed_limit.low"]
    assert out.values["road.lane_count"] == 3
    fallback = label_road(inputs(pc=perception(road_type=pb.ROAD_TYPE_PARK)), TH)
    assert fallback.tags["road.park"] and not fallback.tags["junction.any"]
    unknown = label_road(inputs(pc=perception(junction_type=pb.JUNCTION_TYPE_UNSPECIFIED, lane_count=0)), TH)
    assert "junction.any" not in unknown.tags and "lanes.single" not in unknown.tags
    assert "road.urban" not in unknown.tags


def test_agents_lead_vehicle_ttc_and_close():
    # Lead car 20 m ahead closing at 10 m/s: TTC 2 s < 3 s.
    out = label_agents(inputs(ps=pose(speed=10.0),
                              pc=perception([obj(pb.OBJECT_CLASS_CAR, 20.0, 0.3, vx=-10.0)])), TH)
    assert out.tags["agent.lead_vehicle"] and out.tags["agent.lead_close"] and out.tags["agent.car"]
    assert out.values["agent.lead_distance_m"] == pytest.approx(20.0)
    assert out.values["agent.lead_ttc_s"] == pytest.approx(2.0)
    assert not out.tags["agent.oncoming"]   # ground speed 0: a stopped car, not oncoming
    # A car in the next lane is no lead; an opening gap has no TTC.
    side = label_agents(inputs(ps=pose(), pc=perception([obj(pb.OBJECT_CLASS_CAR, 20.0, 3.5, vx=2.0)])), TH)
    assert not side.tags["agent.lead_vehicle"] and "agent.lead_ttc_s" not in side.values


def test_agents_cut_in_oncoming_crowd_occlusion_crossing():
    objects = [
        obj(pb.OBJECT_CLASS_CAR, 15.0, 2.5, vy=-1.0),              # moving into ego lane
        obj(pb.OBJECT_CLASS_TRUCK, 40.0, 3.5, vx=-20.0),           # oncoming at 10 m/s ground speed
        *[obj(pb.OBJECT_CLASS_PEDESTRIAN, 10.0, -6.0 - i) for i in range(5)],
        obj(pb.OBJECT_CLASS_PEDESTRIAN, 8.0, 3.0, vy=-1.2, occluded=True),
        obj(pb.OBJECT_CLASS_TRICYCLE, 3.0, 2.0),
    ]
    out = label_agents(inputs(ps=pose(speed=10.0), pc=perception(objects)), TH)
    for name in ("agent.cut_in", "agent.oncoming", "agent.crowd", "agent.pedestrian_from_occlusion",
                 "agent.crossing", "agent.vru_close", "agent.tricycle", "agent.truck"):
        assert out.tags[name], name
    assert not out.tags["agent.bus"] and not out.tags["agent.animal"]
    assert out.values["agent.pedestrian_count"] == 6 and out.values["agent.vehicle_count"] == 3
    assert out.values["agent.tricycle_count"] == 1 and out.values["agent.count"] == 9


def test_agents_empty_scene_is_known_false_and_oncoming_needs_ego_speed():
    out = label_agents(inputs(pc=perception([obj(pb.OBJECT_CLASS_CAR, 30.0, 0.0, vx=-20.0)])), TH)
    assert "agent.oncoming" not in out.tags   # no pose, no heartbeat: ego speed unknown
    empty = label_agents(inputs(pc=perception()), TH)
    assert not any(empty.tags.values())
    assert empty.values["agent.count"] == 0 and "agent.min_distance_m" not in empty.values
    assert label_agents(inputs(hb=heartbeat()), TH).tags == {}


# Pose speeds are float32, so bounds are probed just beside them (lower bounds are inclusive).
@pytest.mark.parametrize("speed_kph, band", [
    (0.0, "ego.speed.crawl"), (9.99, "ego.speed.crawl"), (10.01, "ego.speed.low"), (45.0, "ego.speed.medium"),
    (60.01, "ego.speed.high"), (89.0, "ego.speed.high"), (120.0, "ego.speed.very_high"),
])
def test_ego_speed_bands(speed_kph, band):
    out = label_ego(inputs(ps=pose(speed=speed_kph / 3.6)), TH)
    assert [name for name, on in out.tags.items() if on and name.startswith("ego.speed.")] == [band]


def test_ego_motion_from_pose():
    brake = label_ego(inputs(ps=pose(speed=8.0, accel=[-1.0] * 9 + [-4.0])), TH)
    assert brake.tags["ego.brake"] and brake.tags["ego.hard_brake"] and not brake.tags["ego.cruise"]
    assert brake.values["ego.min_accel_lon_mps2"] == pytest.approx(-4.0)
    left = label_ego(inputs(ps=pose(speed=5.0, yaw=0.3, accel_lat=3.5)), TH)
    assert left.tags["ego.turn_left"] and not left.tags["ego.turn_right"] and left.tags["ego.high_lateral_accel"]
    cruise = label_ego(inputs(ps=pose(speed=15.0)), TH)
    assert cruise.tags["ego.cruise"] and not cruise.tags["ego.stopped"] and not cruise.tags["ego.accelerate"]
    stopped = label_ego(inputs(ps=pose(speed=0.0)), TH)
    assert stopped.tags["ego.stopped"] and not stopped.tags["ego.cruise"]
    reverse = label_ego(inputs(ps=pose(speed=1.0, gear=-1)), TH)
    assert reverse.tags["ego.reversing"]


def test_ego_without_pose_uses_heartbeat_speed_and_maneuver_only():
    out = label_ego(inputs(hb=heartbeat(speed_mps=0.0), pc=perception(maneuver="u_turn")), TH)
    assert out.tags["ego.stopped"] and out.tags["ego.u_turn"] and out.tags["ego.speed.crawl"]
    assert "ego.brake" not in out.tags and "ego.cruise" not in out.tags
    assert label_ego(inputs(), TH).tags == {}


def test_perception_quality_and_planner_ties():
    objects = [obj(pb.OBJECT_CLASS_ANIMAL, 12.0, 1.0, conf=0.3), obj(pb.OBJECT_CLASS_CAR, 60.0, 0.0, conf=0.2)]
    out = label_perception(inputs(pc=perception(objects, planner_top_costs=[10.0, 10.2, 15.0])), TH)
    assert out.tags["perception.low_confidence"] and out.tags["perception.rare_object"]
    assert out.tags["planner.uncertain"] and not out.tags["perception.many_objects"]
    assert out.values["planner.top_cost_gap"] == pytest.approx(0.02)
    far_only = label_perception(inputs(pc=perception([obj(pb.OBJECT_CLASS_CAR, 60.0, 0.0, conf=0.2)])), TH)
    assert not far_only.tags["perception.low_confidence"] and "planner.uncertain" not in far_only.tags


def test_mode_from_last_pose_sample_then_heartbeat():
    modes = [pb.DRIVING_MODE_AUTONOMOUS] * 7 + [pb.DRIVING_MODE_MANUAL] * 3
    out = label_mode(inputs(hb=heartbeat(), ps=pose(modes=modes)), TH)
    assert out.tags["mode.manual"] and not out.tags["mode.autonomous"] and out.tags["mode.changed"]
    assert out.tags["task.running"] and out.tags["connectivity.cellular"] and not out.tags["vehicle.parked"]
    only_hb = label_mode(inputs(hb=heartbeat(mode=pb.DRIVING_MODE_REMOTE)), TH)
    assert only_hb.tags["mode.remote"] and "mode.changed" not in only_hb.tags


def test_label_second_with_everything_covers_every_family():
    row = label_second("veh-1", T0 + 437, heartbeat(), pose(speed=8.0),
                       perception([obj(pb.OBJECT_CLASS_TRICYCLE, 10.0, 0.5)], weather=pb.WEATHER_RAIN,
                                  light=pb.LIGHT_NIGHT, junction_type=pb.JUNCTION_TYPE_SIGNALIZED,
                                  planner_top_costs=[1.0, 2.0]), TX)
    assert isinstance(row, LabelRow) and row.ts_ms == T0 and row.park == "park-a"
    for name in ("weather.rain", "light.night", "junction.signalized", "agent.tricycle", "mode.autonomous"):
        assert row.tag_value(TX.tag(name)) is True, name
    assert row.tag_value(TX.tag("mode.manual")) is False
    assert row.tag_value(TX.tag("data.no_perception")) is False
    assert row.values["ego.speed_kph"] == pytest.approx(28.8)
    assert row.values["ego.speed_kph"] == float(np.float32(row.values["ego.speed_kph"]))
    # Every family produced something, and only tags of its own family (label_second checks).
    assert {t.family for t in TX.tags if row.tag_value(t) is not None} == {t.family for t in TX.tags}


def test_label_second_with_nothing_is_a_clear_partial_row():
    row = label_second("veh-1", T0, None, None, None, TX)
    known = [t.name for t in TX.tags if row.tag_value(t) is not None]
    assert sorted(known) == ["data.no_heartbeat", "data.no_perception", "data.no_pose"]
    assert all(row.tag_value(TX.tag(n)) for n in known)
    assert row.values == {} and row.park == ""


def test_label_second_with_empty_pose_counts_it_missing():
    row = label_second("veh-1", T0, heartbeat(), pb.PoseBatch(), None, TX)
    assert row.tag_value(TX.tag("data.no_pose")) is True
    assert row.tag_value(TX.tag("ego.speed.low")) is True   # 18 km/h from the heartbeat
    assert row.tag_value(TX.tag("ego.brake")) is None


def test_every_active_tag_is_produced_by_some_labeler():
    scenes = [
        label_second("v", T0, heartbeat(), pose(speed=8.0), perception(planner_top_costs=[1.0, 2.0]), TX),
        label_second("v", T0, None, None, None, TX),
    ]
    known = 0
    for row in scenes:
        known |= row.known
    missing = [t.name for t in TX.active_tags if not (known >> t.bit) & 1]
    assert missing == []


def test_label_row_rejects_true_but_unknown_bits_and_unaligned_seconds():
    with pytest.raises(ValueError):
        LabelRow("v", T0, tags=1, known=0)
    with pytest.raises(ValueError):
        LabelRow("v", T0 + 1, tags=0, known=0)


def test_a_malformed_pose_batch_is_rejected_not_mislabelled():
    broken = pose()
    broken.speed_mps = broken.speed_mps[:-4]
    with pytest.raises(Rejected, match="bad_shape"):
        label_second("veh-1", T0, None, broken, None, TX)
