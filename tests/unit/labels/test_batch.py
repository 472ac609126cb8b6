"""`label_seconds` (vectorised) equals `label_second` row by row, bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pytest
from fleetloop import topics
from fleetloop.labels import load_taxonomy
from fleetloop.labels.batch import SecondParts, label_seconds
from fleetloop.sim import FleetSimulator, SimConfig
from fleetloop.v1 import common_pb2 as pb

from tests.oracles.labelers import label_second
from tests.unit.labels.test_row import T0, heartbeat, obj, perception, pose

TX = load_taxonomy()
KIND = {topics.HEARTBEAT: "heartbeat", topics.POSE: "pose", topics.PERCEPTION: "perception"}


def assert_same(seconds: list[SecondParts]) -> None:
    batch = label_seconds(seconds, TX)
    assert len(batch) == len(seconds)
    for parts, row in zip(seconds, batch.rows(TX), strict=True):
        want = label_second(parts.vehicle_id, parts.second_ms, parts.heartbeat, parts.pose, parts.perception, TX)
        assert row == want, parts
    table = batch.to_arrow(TX)
    assert table.num_rows == len(seconds) and table.column("t1").to_pylist() == batch.t[:, 1].tolist()


def test_simulated_fleet_with_missing_parts():
    sim = FleetSimulator(SimConfig(vehicles=20, duration_s=240, seed=5, incidents_per_vehicle_hour=30))
    parts: dict[tuple[str, int], dict] = {}
    for second in sim.seconds():
        for topic, env in second.messages:
            if topic in KIND:
                parts.setdefault((env.vehicle_id, env.event_time_ms), {})[KIND[topic]] = getattr(env, KIND[topic])
    rng = random.Random(2)
    seconds = [SecondParts(v, t, *(p.get(k) if rng.random() > 0.15 else None
                                   for k in ("heartbeat", "pose", "perception")))
               for (v, t), p in parts.items()]
    assert_same(seconds)


def test_hand_built_edge_cases():
    cases = [
        (heartbeat(), pose(), perception()),
        (None, None, None),
        (heartbeat(speed_mps=0.0), None, perception(maneuver="turn_left")),
        (None, pose(speed=0.0), perception(maneuver="u_turn", junction_type=pb.JUNCTION_TYPE_SIGNALIZED)),
        (heartbeat(mode=pb.DRIVING_MODE_MANUAL), pose(yaw=-0.3, accel=-5.0, gear=-1), None),
        (None, pose(modes=np.array([1, 1, 1, 2, 2], np.uint8), n=5), perception(lane_count=0, speed_limit_mps=0)),
        (heartbeat(), pose(speed=12.0), perception(
            [obj(pb.OBJECT_CLASS_CAR, 10.0, 0.5, vx=-2.0), obj(pb.OBJECT_CLASS_CAR, 10.0, -0.5, vx=-9.0),
             obj(pb.OBJECT_CLASS_PEDESTRIAN, 8.0, 1.0, vy=-1.5, occluded=True, conf=0.3),
             obj(pb.OBJECT_CLASS_TRUCK, 20.0, 3.0, vy=-1.0), obj(pb.OBJECT_CLASS_UNKNOWN, 40.0, 8.0, vx=-30.0)],
            planner_top_costs=[1.0, 1.01, 3.0], junction_type=pb.JUNCTION_TYPE_ROUNDABOUT)),
        (heartbeat(road_type=pb.ROAD_TYPE_UNSPECIFIED), None,
         perception([obj(pb.OBJECT_CLASS_PEDESTRIAN, 3.0, float(i)) for i in range(6)], road_type=pb.ROAD_TYPE_PARK,
                    planner_top_costs=[0.0, 0.0])),
        # Exactly the crowd's minimum of pedestrians: the threshold's boundary, where >= and > differ.
        (None, None, perception([obj(pb.OBJECT_CLASS_PEDESTRIAN, 3.0, float(i))
                                 for i in range(int(TX.thresholds["crowd_min_pedestrians"]))])),
    ]
    assert_same([SecondParts("veh-x", T0 + 1000 * i + 17, *c) for i, c in enumerate(cases)])


def test_lead_ttc_band_uses_the_shared_definition_with_the_leads_braking():
    # A lead 12 m ahead at our speed braking at 6 m/s² (the contract's accel_x_mps2): no TTC at constant
    # velocity, sqrt(2 × 12 / 6) = 2 s by criticality.longitudinal_ttc, inside the 3 s "lead close" band.
    # Without the estimate the band is what it always was (no TTC for an unchanging gap).
    braking = pb.PerceivedObject(object_class=pb.OBJECT_CLASS_CAR, rel_x_m=12.0, rel_y_m=0.2, confidence=0.9,
                                 accel_x_mps2=-6.0)
    steady = pb.PerceivedObject(object_class=pb.OBJECT_CLASS_CAR, rel_x_m=12.0, rel_y_m=0.2, confidence=0.9)
    batch = label_seconds([SecondParts("veh-1", T0, heartbeat(), pose(speed=10.0), perception([o]))
                           for o in (braking, steady)], TX)
    rows = batch.rows(TX)
    assert rows[0].values["agent.lead_ttc_s"] == pytest.approx(2.0, abs=1e-6)
    assert "agent.lead_ttc_s" not in rows[1].values
    close = TX.tag("agent.lead_close").bit
    assert rows[0].tags >> close & 1 and not rows[1].tags >> close & 1


def test_lead_band_reads_the_summarys_position_reference():
    # One scene sent both ways: a 9 m truck whose rear is 10 m ahead of a 4.6 m ego's front bumper, closing at
    # 4 m/s (TTC 2.5 s, lead_close), and a car beside it. Legacy bumper gaps say rel_x_m = 10; box centres say
    # 10 + (9 + 4.6) / 2 = 16.8 m, and from an ego that sends its own 9 m box 10 + (9 + 9) / 2 = 19 m. Every
    # reading gives the same lead distance (bumper gap), TTC and band; read as a gap the centre would say 4.2 s.
    def scene(truck_x: float, car_x: float, **kw) -> pb.PerceptionSummary:
        return perception([pb.PerceivedObject(object_class=pb.OBJECT_CLASS_TRUCK, rel_x_m=truck_x, rel_y_m=0.3,
                                              rel_vx_mps=-4.0, length_m=9.0, width_m=2.5, confidence=0.9),
                           pb.PerceivedObject(object_class=pb.OBJECT_CLASS_CAR, rel_x_m=car_x, rel_y_m=3.5,
                                              length_m=4.6, width_m=1.9, confidence=0.9)], **kw)

    summaries = [scene(10.0, 5.0), scene(10.0, 5.0, position_reference=pb.POSITION_REFERENCE_BUMPER_GAP),
                 scene(16.8, 9.6, position_reference=pb.POSITION_REFERENCE_BOX_CENTRE),
                 scene(19.0, 11.8, position_reference=pb.POSITION_REFERENCE_BOX_CENTRE, ego_length_m=9.0)]
    rows = label_seconds([SecondParts("veh-1", T0 + 1000 * i, heartbeat(), pose(speed=10.0), s)
                          for i, s in enumerate(summaries)], TX).rows(TX)
    for row in rows:
        assert row.values["agent.lead_distance_m"] == pytest.approx(10.0, abs=1e-5)
        assert row.values["agent.lead_ttc_s"] == pytest.approx(2.5, abs=1e-5)
        assert row.tag_value(TX.tag("agent.lead_close")) and row.tag_value(TX.tag("agent.lead_vehicle"))
    # the legacy rows are the reference's, bit for bit
    assert_same([SecondParts("veh-1", T0 + 1000 * i, heartbeat(), pose(speed=10.0), s)
                 for i, s in enumerate(summaries[:2])])
