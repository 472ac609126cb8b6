"""The one decode path of the fleet topics: each poison message found by trying to break the loop
(issue 11) is rejected at decode with its own reason, and good fleet messages pass."""

from __future__ import annotations

import numpy as np
import pytest
from fleetloop import codec, topics
from fleetloop.v1 import common_pb2, triggers_pb2, uploads_pb2

from tests.support import fleetdata
from tests.support.fleetdata import T0_MS

VEHICLE = "veh-1"


def reason(topic: str, value: bytes | None, key: bytes | None = VEHICLE.encode()) -> str:
    with pytest.raises(codec.Rejected) as caught:
        codec.decode(topic, key, value)
    return caught.value.reason


def heartbeat(**fields) -> common_pb2.Envelope:
    env = fleetdata.heartbeat(VEHICLE, T0_MS)
    for name, value in fields.items():
        setattr(env.heartbeat, name, value)
    return env


def perception(**fields) -> common_pb2.Envelope:
    env = common_pb2.Envelope(schema_version=1, vehicle_id=VEHICLE, event_time_ms=T0_MS, message_id="p1")
    summary = {"lane_count": 2, "lane_index": 1, "maneuver": "cruise", **fields}
    env.perception.CopyFrom(common_pb2.PerceptionSummary(**summary))
    return env


def event(**fields) -> common_pb2.Envelope:
    env = common_pb2.Envelope(schema_version=1, vehicle_id=VEHICLE, event_time_ms=T0_MS, message_id="e1")
    env.event.CopyFrom(common_pb2.VehicleEvent(**{"kind": common_pb2.EVENT_KIND_OPERATOR_SPEECH, **fields}))
    return env


def test_good_messages_of_every_fleet_topic_decode() -> None:
    for topic, env in [(topics.HEARTBEAT, heartbeat()), (topics.POSE, fleetdata.pose(VEHICLE, T0_MS)),
                       (topics.PERCEPTION, perception()), (topics.EVENTS, event(text="all fine"))]:
        assert codec.decode(topic, VEHICLE.encode(), env.SerializeToString()) == env


def test_tombstone_is_rejected_not_a_type_error() -> None:
    for topic in (topics.HEARTBEAT, topics.POSE, topics.EVENTS, topics.PERCEPTION):
        assert reason(topic, None) == "tombstone"
    with pytest.raises(codec.Rejected, match="tombstone"):
        codec.decode_trigger(None, b"x")
    with pytest.raises(codec.Rejected, match="tombstone"):
        codec.decode_manifest(None, b"x")


def test_enums_beyond_their_declared_values_are_out_of_range() -> None:
    assert reason(topics.HEARTBEAT, heartbeat(mode=300).SerializeToString()) == "out_of_range"
    assert reason(topics.HEARTBEAT, heartbeat(connectivity=7).SerializeToString()) == "out_of_range"
    objects = [common_pb2.PerceivedObject(track_id=1, object_class=99)]
    assert reason(topics.PERCEPTION, perception(objects=objects).SerializeToString()) == "out_of_range"
    modes = np.full(10, 200)
    assert reason(topics.POSE, fleetdata.pose(VEHICLE, T0_MS, mode=modes).SerializeToString()) == "out_of_range"


def test_lane_numbers_beyond_the_narrow_column_are_out_of_range() -> None:
    assert reason(topics.PERCEPTION, perception(lane_count=300).SerializeToString()) == "out_of_range"
    assert reason(topics.PERCEPTION, perception(lane_index=300).SerializeToString()) == "out_of_range"


def test_a_5_mb_park_string_is_an_oversized_field() -> None:
    # Inside the message-size limit would need a bigger limit: check the field rule on its own too.
    huge = heartbeat(park="p" * 5_000_000).SerializeToString()
    assert reason(topics.HEARTBEAT, huge) == "oversized"
    long_park = heartbeat(park="p" * (codec.LIMITS.strings.default_max_chars + 1))
    assert reason(topics.HEARTBEAT, long_park.SerializeToString()) == "oversized_field"
    with pytest.raises(codec.Rejected, match="oversized_field"):
        codec.decode_envelope(huge, VEHICLE.encode(), "heartbeat")


def test_a_newline_in_the_vehicle_id_is_a_bad_vehicle_id() -> None:
    env = fleetdata.heartbeat("veh-1\nveh-2", T0_MS)
    assert reason(topics.HEARTBEAT, env.SerializeToString(), key=None) == "bad_vehicle_id"
    assert reason(topics.HEARTBEAT, env.SerializeToString(), key=env.vehicle_id.encode()) == "bad_vehicle_id"


def test_a_5_mb_event_is_oversized() -> None:
    assert reason(topics.EVENTS, event(text="x" * 5_000_000).SerializeToString()) == "oversized"
    too_long = event(text="x" * (codec.LIMITS.strings.chars("VehicleEvent", "text") + 1))
    assert reason(topics.EVENTS, too_long.SerializeToString()) == "oversized_field"


def test_too_many_objects_or_costs_are_oversized_fields() -> None:
    many = [common_pb2.PerceivedObject(track_id=i) for i in range(codec.LIMITS.perception.max_objects + 1)]
    assert reason(topics.PERCEPTION, perception(objects=many).SerializeToString()) == "oversized_field"
    costs = [1.0] * (codec.LIMITS.perception.max_planner_costs + 1)
    assert reason(topics.PERCEPTION, perception(planner_top_costs=costs).SerializeToString()) == "oversized_field"


def test_todays_envelope_reasons_stay() -> None:
    good = heartbeat()
    assert reason(topics.HEARTBEAT, b"\xff\xff\xff") == "decode_error"
    assert reason(topics.HEARTBEAT, good.SerializeToString(), key=b"other") == "key_mismatch"
    assert reason(topics.POSE, good.SerializeToString()) == "wrong_payload"
    for field, value, why in [("schema_version", 9, "unknown_schema_version"), ("vehicle_id", "", "missing_vehicle_id"),
                              ("message_id", "", "missing_message_id"), ("event_time_ms", 5, "bad_timestamp")]:
        env = heartbeat()
        setattr(env, field, value)
        assert reason(topics.HEARTBEAT, env.SerializeToString(), key=None) == why


def test_plausibility_runs_in_decode() -> None:
    assert reason(topics.HEARTBEAT, heartbeat(speed_mps=float("nan")).SerializeToString()) == "non_finite"
    assert reason(topics.HEARTBEAT, heartbeat(speed_mps=80.0).SerializeToString()) == "absurd_value"
    jump = fleetdata.pose(VEHICLE, T0_MS, x_m=np.r_[np.zeros(5), np.full(5, 1000.0)])
    assert reason(topics.POSE, jump.SerializeToString()) == "position_jump"
    assert reason(topics.EVENTS, event(kind=0).SerializeToString()) == "absurd_value"


def test_criticality_fields_must_be_finite() -> None:
    # The contract's in-second minima are left unset for "none", never sent as inf or NaN.
    for name in ("accel_x_mps2", "min_ttc_s", "min_distance_m"):
        obj = common_pb2.PerceivedObject(track_id=3, **{name: float("inf")})
        assert reason(topics.PERCEPTION, perception(objects=[obj]).SerializeToString()) == "non_finite", name
    for name in ("window_min_ttc_s", "ego_length_m"):
        assert reason(topics.PERCEPTION, perception(**{name: float("nan")}).SerializeToString()) == "non_finite", name
    ok = common_pb2.PerceivedObject(track_id=3, min_ttc_s=0.8, accel_x_mps2=-6.0)
    raw = perception(objects=[ok], window_min_ttc_s=0.8, position_reference=1).SerializeToString()
    assert codec.decode(topics.PERCEPTION, VEHICLE.encode(), raw).perception.window_min_ttc_s == pytest.approx(0.8)


def test_trigger_decoder_is_strict_for_cases_and_loose_for_counting() -> None:
    trigger = triggers_pb2.TriggerEvent(trigger_id="t1", vehicle_id=VEHICLE, onset_ms=T0_MS, end_ms=T0_MS,
                                        window_pre_s=7200)
    raw = trigger.SerializeToString()
    assert codec.decode_trigger(raw, b"other", strict=False) == trigger  # counting ignores name, key, window
    with pytest.raises(codec.Rejected, match="missing_field"):
        codec.decode_trigger(raw, VEHICLE.encode())
    trigger.trigger = "hard_brake"
    with pytest.raises(codec.Rejected, match="absurd_value"):
        codec.decode_trigger(trigger.SerializeToString(), VEHICLE.encode())
    trigger.measurements.update({f"m{i}": 1.0 for i in range(codec.LIMITS.trigger.max_measurements + 1)})
    with pytest.raises(codec.Rejected, match="oversized_field"):
        codec.decode_trigger(trigger.SerializeToString(), None, strict=False)


def test_manifest_decoder_checks_sizes_too() -> None:
    manifest = uploads_pb2.UploadManifest(schema_version=1, vehicle_id=VEHICLE, case_id="c", request_id="r",
                                          tier="raw", state=uploads_pb2.UPLOAD_STATE_FAILED, error="e" * 5000)
    with pytest.raises(codec.Rejected, match="oversized_field"):
        codec.decode_manifest(manifest.SerializeToString(), VEHICLE.encode())
    manifest.error = "disk full"
    assert codec.decode_manifest(manifest.SerializeToString(), VEHICLE.encode()) == manifest


def test_bulk_callers_skip_only_plausibility() -> None:
    fast = heartbeat(speed_mps=80.0).SerializeToString()
    assert codec.decode(topics.HEARTBEAT, VEHICLE.encode(), fast, plausibility=False).heartbeat.speed_mps == 80.0
    with pytest.raises(codec.Rejected, match="out_of_range"):
        codec.decode(topics.HEARTBEAT, None, heartbeat(mode=300).SerializeToString(), plausibility=False)
    with pytest.raises(codec.Rejected, match="tombstone"):
        codec.decode(topics.POSE, None, None, plausibility=False)
