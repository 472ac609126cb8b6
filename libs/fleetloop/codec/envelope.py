"""The Envelope every fleet message travels in (fleet.heartbeat/pose/events/perception.v1):
`decode` is the one path from a Kafka record to a checked Envelope, or a Rejected."""

from __future__ import annotations

from fleetloop import topics
from fleetloop.codec.heartbeat import check_heartbeat
from fleetloop.codec.limits import LIMITS
from fleetloop.codec.messages import SUPPORTED_SCHEMA_VERSIONS, check_event, check_perception, in_time_range
from fleetloop.codec.pose import check_sample_count, pose_arrays
from fleetloop.codec.rejected import Rejected, check_fields, check_size, check_vehicle_id, parse
from fleetloop.v1 import common_pb2

PAYLOAD_BY_TOPIC = {topics.HEARTBEAT: "heartbeat", topics.POSE: "pose", topics.EVENTS: "event",
                    topics.PERCEPTION: "perception"}
PAYLOADS = tuple(PAYLOAD_BY_TOPIC.values())
# Items a repeated field of a fleet payload may hold (any other repeated field may not be set).
REPEATED_MAX = {"objects": LIMITS.perception.max_objects,
                "planner_top_costs": LIMITS.perception.max_planner_costs}
PLAUSIBILITY = {
    "heartbeat": lambda env: check_heartbeat(env.heartbeat),
    "pose": lambda env: pose_arrays(env.pose),
    "event": lambda env: check_event(env.event),
    "perception": lambda env: check_perception(env.perception),
}


def decode(topic: str, key: bytes | None, value: bytes | None, *, plausibility: bool = True) -> common_pb2.Envelope:
    """A record of a fleet topic -> its Envelope, every stateless rule checked; raises Rejected.

    plausibility=False leaves the payload's plausibility to a bulk caller, which screens a whole
    batch with `heartbeat_suspects` / `pose_screen` and asks `PLAUSIBILITY` about the suspects; every
    other check (size, envelope, enums, strings, repeated fields) still runs. The stateful rules
    (event time against a watermark) belong to the streaming edge.
    """
    if topic not in PAYLOAD_BY_TOPIC:
        raise Rejected("unknown_topic", f"{topic!r} is not a fleet topic")
    payload = PAYLOAD_BY_TOPIC[topic]
    envelope = decode_envelope(check_size(topic, value), key, payload)
    if plausibility:
        PLAUSIBILITY[payload](envelope)
    return envelope


def decode_envelope(value: bytes | None, key: bytes | None, expected_payload: str) -> common_pb2.Envelope:
    """Parse and check the envelope: schema version, vehicle id (syntax, key), message id, payload kind,
    time range, and the payload's fields (declared enums, string and repeated sizes, pose sample count).
    No payload plausibility: `decode` adds it, bulk callers screen it (heartbeat_suspects, pose_screen)."""
    if value is None:
        raise Rejected("tombstone", "null value")
    envelope = parse(common_pb2.Envelope(), value, "fleetloop Envelope")
    if envelope.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise Rejected("unknown_schema_version", f"schema_version={envelope.schema_version}")
    check_vehicle_id(envelope.vehicle_id, key)
    if not envelope.message_id:
        raise Rejected("missing_message_id", "envelope has no message_id")
    kind = envelope.WhichOneof("payload")
    if kind != expected_payload:
        raise Rejected("wrong_payload", f"expected {expected_payload}, got {kind}")
    if not in_time_range(envelope.event_time_ms):
        raise Rejected("bad_timestamp", f"event_time_ms={envelope.event_time_ms} outside 2015..2100")
    check_fields(envelope, REPEATED_MAX)
    if kind == "pose":
        check_sample_count(envelope.pose)
    return envelope


def check_watermark(event_time_ms: int, watermark_ms: int) -> None:
    """Reject event times far ahead of or behind the partition's watermark (0 = none yet)."""
    if watermark_ms <= 0:
        return
    if event_time_ms > watermark_ms + LIMITS.time.max_ahead_of_watermark_ms:
        raise Rejected("future_timestamp", f"{(event_time_ms - watermark_ms) / 1000:.0f} s ahead of watermark")
    if event_time_ms < watermark_ms - LIMITS.time.max_behind_watermark_ms:
        raise Rejected("stale_timestamp", f"{(watermark_ms - event_time_ms) / 1000:.0f} s behind watermark")
