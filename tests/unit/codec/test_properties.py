"""Property-based tests of every decoder (hypothesis): arbitrary input only ever raises Rejected,
valid messages round-trip, and each limit of limits.yaml is exact at its boundary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fleetloop import codec, topics
from fleetloop.v1 import common_pb2, triggers_pb2, uploads_pb2
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import fleetdata
from tests.support.fleetdata import T0_MS

LIMITS = codec.LIMITS
FLEET_TOPICS = tuple(codec.PAYLOAD_BY_TOPIC)
PROPERTY = settings(max_examples=150, deadline=None)
keys = st.none() | st.binary(max_size=80)


def every_decoder(topic: str, key: bytes | None, value: bytes | None) -> None:
    """Run each decoder on one input; anything but Rejected propagates."""
    for decoder in (lambda: codec.decode(topic, key, value),
                    lambda: codec.decode_trigger(value, key),
                    lambda: codec.decode_trigger(value, key, strict=False),
                    lambda: codec.decode_manifest(value, key)):
        try:
            decoder()
        except codec.Rejected:
            pass


@PROPERTY
@given(topic=st.sampled_from(FLEET_TOPICS), key=keys, value=st.none() | st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_rejected(topic, key, value) -> None:
    every_decoder(topic, key, value)


# Structurally valid protobuf with arbitrary field values: reaches the checks behind the parser.
_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_INT64: st.integers(-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_INT32: st.integers(-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: st.integers(-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: st.text(max_size=200),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=400),
}


def _near_valid(field: FieldDescriptor) -> st.SearchStrategy:
    """Values of one scalar field, biased to the ones that pass the earlier checks."""
    if field.name == "schema_version":
        return st.sampled_from([1, 1, 2])
    if field.name in ("event_time_ms", "onset_ms", "end_ms"):
        return st.integers(LIMITS.time.min_event_ms - 10, LIMITS.time.max_event_ms + 10)
    if field.name == "vehicle_id":
        return st.sampled_from(["veh-1", "veh-1\n", ""])
    if field.name == "sample_count":
        return st.integers(0, LIMITS.motion.max_samples_per_batch + 2)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from(sorted(field.enum_type.values_by_number)) | _SCALARS[field.type]
    return _SCALARS[field.type]


@st.composite
def messages(draw, message_type, depth: int = 0):
    message = message_type()
    for field in message_type.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, field.name).update(draw(st.dictionaries(st.text(max_size=10), st.floats(), max_size=5)))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 2:
                continue
            sub_type = getattr(common_pb2, field.message_type.name)
            if field.is_repeated:
                getattr(message, field.name).extend(draw(st.lists(messages(sub_type, depth + 1), max_size=4)))
            else:
                getattr(message, field.name).CopyFrom(draw(messages(sub_type, depth + 1)))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_near_valid(field), max_size=4)))
        else:
            setattr(message, field.name, draw(_near_valid(field)))
    return message


@st.composite
def envelopes(draw):
    env = draw(messages(common_pb2.Envelope))
    if draw(st.booleans()):  # a pose batch whose columns match its sample count
        n = draw(st.integers(1, 12))
        columns = {name: draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
                   for name, dtype in codec.POSE_DTYPES.items()}
        env.pose.CopyFrom(common_pb2.PoseBatch(sample_count=n, **columns))
    return env


@PROPERTY
@given(env=envelopes(), topic=st.sampled_from(FLEET_TOPICS), keyed=st.booleans())
def test_arbitrary_envelopes_only_ever_raise_rejected(env, topic, keyed) -> None:
    every_decoder(topic, env.vehicle_id.encode() if keyed else None, env.SerializeToString())


@PROPERTY
@given(trigger=messages(triggers_pb2.TriggerEvent), manifest=messages(uploads_pb2.UploadManifest))
def test_arbitrary_triggers_and_manifests_only_ever_raise_rejected(trigger, manifest) -> None:
    for message in (trigger, manifest):
        every_decoder(topics.TRIGGERS, message.vehicle_id.encode(), message.SerializeToString())


# Valid messages round-trip.
vehicle_ids = st.from_regex(LIMITS.strings.vehicle_id_pattern, fullmatch=True).filter(lambda v: v.isascii())
labels = st.text(st.characters(codec="utf-8"), max_size=LIMITS.strings.default_max_chars)


def enum_values(enum) -> st.SearchStrategy:
    return st.sampled_from(sorted(enum.values()))


@st.composite
def valid_heartbeats(draw) -> common_pb2.Envelope:
    vehicle_id = draw(vehicle_ids)
    env = common_pb2.Envelope(
        schema_version=1, vehicle_id=vehicle_id, message_id=draw(labels.filter(bool)),
        event_time_ms=draw(st.integers(LIMITS.time.min_event_ms, LIMITS.time.max_event_ms - 1)))
    env.heartbeat.CopyFrom(common_pb2.Heartbeat(
        mode=draw(enum_values(common_pb2.DrivingMode)), road_type=draw(enum_values(common_pb2.RoadType)),
        task_state=draw(enum_values(common_pb2.TaskState)),
        connectivity=draw(enum_values(common_pb2.Connectivity)),
        speed_mps=draw(st.floats(0, LIMITS.motion.max_speed_mps)), lat_deg=draw(st.floats(-90, 90)),
        lon_deg=draw(st.floats(-180, 180)), odometer_m=draw(st.floats(0, 1e9)), park=draw(labels),
        city=draw(labels), route=draw(labels), task_id=draw(labels), software_version=draw(labels)))
    return env


@PROPERTY
@given(env=valid_heartbeats())
def test_valid_heartbeats_round_trip(env) -> None:
    assert codec.decode(topics.HEARTBEAT, env.vehicle_id.encode(), env.SerializeToString()) == env


@PROPERTY
@given(vehicle_id=vehicle_ids, start=st.integers(LIMITS.time.min_event_ms, LIMITS.time.max_event_ms - 10_000),
       n=st.integers(1, LIMITS.motion.max_samples_per_batch), speed=st.floats(0, LIMITS.motion.max_speed_mps),
       accel=st.floats(-LIMITS.motion.max_accel_mps2, LIMITS.motion.max_accel_mps2),
       mode=enum_values(common_pb2.DrivingMode), gear=st.sampled_from([-1, 0, 1]))
def test_valid_pose_batches_round_trip(vehicle_id, start, n, speed, accel, mode, gear) -> None:
    t = start + 20 * np.arange(n)
    columns = {name: np.zeros(n) for name in codec.POSE_DTYPES}
    columns.update(t_ms=t, x_m=speed * 0.02 * np.arange(n), speed_mps=np.full(n, speed),
                   accel_lon_mps2=np.full(n, accel), mode=np.full(n, mode), gear=np.full(n, gear))
    env = common_pb2.Envelope(schema_version=1, vehicle_id=vehicle_id, event_time_ms=start, message_id="m")
    env.pose.CopyFrom(codec.pose_batch(columns))
    assert codec.decode(topics.POSE, None, env.SerializeToString()) == env
    assert not codec.pose_screen([env.pose])[2].any()


# Each limit is exact at its boundary.
def rejection(topic: str, env: common_pb2.Envelope) -> str | None:
    try:
        codec.decode(topic, None, env.SerializeToString())
    except codec.Rejected as rejected:
        return rejected.reason
    return None


def hb(**fields) -> common_pb2.Envelope:
    env = fleetdata.heartbeat("veh-1", T0_MS)
    for name, value in fields.items():
        setattr(env.heartbeat, name, value)
    return env


def summary(**fields) -> common_pb2.Envelope:
    env = common_pb2.Envelope(schema_version=1, vehicle_id="veh-1", event_time_ms=T0_MS, message_id="p")
    env.perception.CopyFrom(common_pb2.PerceptionSummary(**fields))
    return env


def test_string_and_vehicle_id_limits_are_exact() -> None:
    most = LIMITS.strings.default_max_chars
    assert rejection(topics.HEARTBEAT, hb(park="p" * most)) is None
    assert rejection(topics.HEARTBEAT, hb(park="p" * (most + 1))) == "oversized_field"
    longest = "v" * 64
    assert rejection(topics.HEARTBEAT, fleetdata.heartbeat(longest, T0_MS)) is None
    assert rejection(topics.HEARTBEAT, fleetdata.heartbeat(longest + "v", T0_MS)) == "bad_vehicle_id"
    for bad in ("-veh", "veh 1", "veh/1", "veh-1\n", "vé"):
        assert rejection(topics.HEARTBEAT, fleetdata.heartbeat(bad, T0_MS)) == "bad_vehicle_id"


def test_repeated_and_lane_limits_are_exact() -> None:
    most = LIMITS.perception.max_objects
    objects = [common_pb2.PerceivedObject(track_id=i) for i in range(most + 1)]
    assert rejection(topics.PERCEPTION, summary(objects=objects[:most])) is None
    assert rejection(topics.PERCEPTION, summary(objects=objects)) == "oversized_field"
    lanes = LIMITS.perception.max_lane_count
    assert rejection(topics.PERCEPTION, summary(lane_count=lanes, lane_index=lanes - 1)) is None
    assert rejection(topics.PERCEPTION, summary(lane_count=lanes + 1)) == "out_of_range"
    assert rejection(topics.PERCEPTION, summary(lane_index=lanes)) == "out_of_range"


def test_message_size_limit_is_exact() -> None:
    for topic in (*FLEET_TOPICS, topics.TRIGGERS, topics.UPLOADS):
        most = LIMITS.messages.bytes_for(topic)
        codec.check_size(topic, b"\0" * most)
        with pytest.raises(codec.Rejected, match="oversized"):
            codec.check_size(topic, b"\0" * (most + 1))


def test_time_limits_are_exact() -> None:
    first, end = LIMITS.time.min_event_ms, LIMITS.time.max_event_ms
    for t, expected in [(first, None), (first - 1, "bad_timestamp"), (end - 1, None), (end, "bad_timestamp")]:
        env = hb()
        env.event_time_ms = t
        assert rejection(topics.HEARTBEAT, env) == expected


def test_motion_limits_are_exact() -> None:
    top = LIMITS.motion.max_speed_mps
    assert rejection(topics.HEARTBEAT, hb(speed_mps=top)) is None
    assert rejection(topics.HEARTBEAT, hb(speed_mps=math.nextafter(top, math.inf))) == "absurd_value"
    pose = fleetdata.pose
    f4_top = np.float32(top)
    assert rejection(topics.POSE, pose("veh-1", T0_MS, speed_mps=np.full(10, f4_top))) is None
    above = np.full(10, np.nextafter(f4_top, np.float32(np.inf)))
    assert rejection(topics.POSE, pose("veh-1", T0_MS, speed_mps=above)) == "absurd_value"
    accel = np.float32(LIMITS.motion.max_accel_mps2)
    assert rejection(topics.POSE, pose("veh-1", T0_MS, accel_lat_mps2=np.full(10, -accel))) is None
    over = np.full(10, -np.nextafter(accel, np.float32(np.inf)))
    assert rejection(topics.POSE, pose("veh-1", T0_MS, accel_lat_mps2=over)) == "absurd_value"
    # 100 ms between samples: max_step_speed_mps × 0.1 s is the longest step.
    step = LIMITS.motion.max_step_speed_mps * 0.1
    x = np.r_[np.zeros(5), np.full(5, step)]
    assert rejection(topics.POSE, pose("veh-1", T0_MS, x_m=x, speed_mps=np.zeros(10))) is None
    x = np.r_[np.zeros(5), np.full(5, math.nextafter(step, math.inf))]
    assert rejection(topics.POSE, pose("veh-1", T0_MS, x_m=x, speed_mps=np.zeros(10))) == "position_jump"
    most = LIMITS.motion.max_samples_per_batch
    batch = fleetdata.pose("veh-1", T0_MS)
    for n, expected in [(most, None), (most + 1, "bad_shape")]:
        columns = {name: np.zeros(n) for name in codec.POSE_DTYPES}
        columns.update(t_ms=T0_MS + np.arange(n), gear=np.ones(n))
        batch.pose.CopyFrom(codec.pose_batch(columns))
        assert rejection(topics.POSE, batch) == expected


@pytest.mark.parametrize("seed", range(3))
def test_batch_screen_flags_exactly_what_pose_arrays_rejects(seed) -> None:
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(60):
        columns = fleetdata.pose_columns(T0_MS + 1000 * i, speed=10.0)
        broken = rng.integers(0, 8)
        name = ["speed_mps", "accel_lon_mps2", "x_m", "mode", "gear", "t_ms", "heading_rad", None][broken]
        if name is not None:
            values = np.array(columns[name], dtype=codec.POSE_DTYPES[name])
            values[rng.integers(0, 10)] = {"speed_mps": 71, "accel_lon_mps2": -31, "x_m": 1e4, "mode": 9,
                                          "gear": 2, "t_ms": 0, "heading_rad": np.nan}[name]
            columns[name] = values
        batches.append(codec.pose_batch(columns))
    _, _, suspects = codec.pose_screen(batches)
    for batch, suspect in zip(batches, suspects, strict=True):
        try:
            codec.pose_arrays(batch)
            rejected = False
        except codec.Rejected:
            rejected = True
        assert suspect == rejected
