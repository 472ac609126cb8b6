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
    assert_same(fleet_seconds())


def as_box_centres(summary: pb.PerceptionSummary, ego_length_m: float | None = None) -> pb.PerceptionSummary:
    """`summary` sent as BOX_CENTRE: each bumper gap plus half the object's and the ego's lengths (the ego's:
    `ego_length_m`, sent with it, else the summary's own, else triggers.yaml's 4.6 m van)."""
    out = pb.PerceptionSummary()
    out.CopyFrom(summary)
    if ego_length_m is not None:
        out.ego_length_m = ego_length_m
    ego_l = out.ego_length_m if out.HasField("ego_length_m") else 4.6
    out.position_reference = pb.POSITION_REFERENCE_BOX_CENTRE
    for o in out.objects:
        o.rel_x_m += 0.5 * (o.length_m + ego_l)
    return out


def fleet_seconds() -> list[SecondParts]:
    sim = FleetSimulator(SimConfig(vehicles=20, duration_s=240, seed=5, incidents_per_vehicle_hour=30))
    parts: dict[tuple[str, int], dict] = {}
    for second in sim.seconds():
        for topic, env in second.messages:
            if topic in KIND:
                parts.setdefault((env.vehicle_id, env.event_time_ms), {})[KIND[topic]] = getattr(env, KIND[topic])
    rng = random.Random(2)
    return [SecondParts(v, t, *(p.get(k) if rng.random() > 0.15 else None for k in ("heartbeat", "pose", "perception")))
            for (v, t), p in parts.items()]


def test_simulated_fleet_sent_as_box_centres():
    # The same comparison with every summary sent as BOX_CENTRE (half of them with a 9 m ego box): batch and
    # reference read rel_x_m the same way, bit for bit.
    seconds = [SecondParts(s.vehicle_id, s.second_ms, s.heartbeat, s.pose,
                           None if s.perception is None else as_box_centres(s.perception, 9.0 if i % 2 else None))
               for i, s in enumerate(fleet_seconds())]
    assert sum(s.perception is not None and len(s.perception.objects) > 0 for s in seconds) > 100
    assert_same(seconds)


def test_object_labels_read_one_scene_the_same_in_either_position_reference():
    # One scene with every object label in play (lead, cut-in, oncoming, crossing pedestrian, crowd, VRU close,
    # low confidence, minimum distance), sent as bumper gaps and as box centres from 5 m and 9 m egos: the same
    # labels. Lengths, gaps and egos are chosen so the centres are exact in float32, so the rows are equal.
    def box(cls: int, gap: float, y: float, length: float, vx: float = 0.0, vy: float = 0.0,
            conf: float = 0.9) -> pb.PerceivedObject:
        return pb.PerceivedObject(object_class=cls, rel_x_m=gap, rel_y_m=y, rel_vx_mps=vx, rel_vy_mps=vy,
                                  length_m=length, width_m=1.5, confidence=conf)

    objects = [box(pb.OBJECT_CLASS_CAR, 12.0, 0.25, 4.5, vx=-6.0),
               box(pb.OBJECT_CLASS_CAR, 9.0, 2.5, 4.5, vy=-1.5),
               box(pb.OBJECT_CLASS_TRUCK, 30.0, 3.5, 9.0, vx=-22.0),
               box(pb.OBJECT_CLASS_PEDESTRIAN, 6.0, 1.5, 0.5, vy=-1.25, conf=0.25),
               *(box(pb.OBJECT_CLASS_PEDESTRIAN, 3.5, -4.0 - i, 0.5) for i in range(6)),
               box(pb.OBJECT_CLASS_CYCLIST, 2.0, -1.75, 2.0)]
    gaps = perception(objects, position_reference=pb.POSITION_REFERENCE_BUMPER_GAP, ego_length_m=5.0)
    sent = [gaps, as_box_centres(gaps), as_box_centres(gaps, 9.0)]
    seconds = [SecondParts("veh-1", T0 + 1000 * i, heartbeat(), pose(speed=10.0), s) for i, s in enumerate(sent)]
    rows = label_seconds(seconds, TX).rows(TX)
    for name in ("agent.lead_vehicle", "agent.lead_close", "agent.cut_in", "agent.oncoming", "agent.crossing",
                 "agent.crowd", "agent.vru_close", "perception.low_confidence"):
        assert rows[0].tag_value(TX.tag(name)), name
    assert rows[0].values["agent.lead_distance_m"] == 12.0 and rows[0].values["agent.lead_ttc_s"] == 2.0
    assert rows[0].values["agent.min_distance_m"] == pytest.approx(np.hypot(2.0, 1.75))
    for row in rows[1:]:
        assert (row.tags, row.values) == (rows[0].tags, rows[0].values)
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
    # every reading's rows are the reference's, bit for bit (the reference reads rel_x_m the same way)
    assert_same([SecondParts("veh-1", T0 + 1000 * i, heartbeat(), pose(speed=10.0), s)
                 for i, s in enumerate(summaries)])
