"""The one error every decoder raises, and the checks every message shares: its size, its
vehicle id's syntax, and its fields (declared enum values, string and repeated-field sizes)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from fleetloop.codec.limits import LIMITS


class Rejected(Exception):
    """A message that must go to the dead-letter topic; `reason` is a stable code, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Reasons `decode` raises with or without plausibility, from the bytes alone: every consumer of a
# fleet topic refuses such a record alike, so one full dead-letter copy of it is enough.
STRUCTURAL_REASONS = frozenset({
    "tombstone", "oversized", "decode_error", "unknown_schema_version", "missing_vehicle_id", "bad_vehicle_id",
    "key_mismatch", "missing_message_id", "wrong_payload", "bad_timestamp", "oversized_field", "out_of_range",
    "bad_shape",
})


def check_size(topic: str, value: bytes | None) -> bytes:
    """The Kafka value itself: a tombstone (None) or more bytes than the topic allows are rejected."""
    if value is None:
        raise Rejected("tombstone", f"null value on {topic}")
    limit = LIMITS.messages.bytes_for(topic)
    if len(value) > limit:
        raise Rejected("oversized", f"{len(value)} bytes on {topic}, limit {limit}")
    return value


def parse(message: Message, value: bytes, what: str) -> Message:
    """`message` filled from `value`; undecodable bytes raise Rejected("decode_error")."""
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise Rejected("decode_error", str(exc) or f"not a {what}") from None
    return message


def check_vehicle_id(vehicle_id: str, key: bytes | None) -> None:
    """Present, of the fleet's id syntax (limits.yaml strings.vehicle_id_pattern) and equal to the key."""
    if not vehicle_id:
        raise Rejected("missing_vehicle_id", "no vehicle_id")
    if not LIMITS.strings.vehicle_id.fullmatch(vehicle_id):
        raise Rejected("bad_vehicle_id", f"vehicle_id {vehicle_id[:80]!r} is not {LIMITS.strings.vehicle_id_pattern}")
    if key is not None and key != vehicle_id.encode():
        raise Rejected("key_mismatch", f"key {key[:80]!r} != vehicle_id {vehicle_id!r}")


def finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise Rejected("non_finite", f"{name}={value}")


def check_fields(message: Message, repeated_max: Mapping[str, int] | None = None) -> None:
    """Every field of `message` and of the messages inside it: enums hold a declared value (proto3
    enums are open, and an undeclared one overflowed ingest's UInt8 columns), strings (and map keys)
    at most their limits.yaml characters, repeated fields at most `repeated_max[name]` items (a
    repeated field without an entry there must be empty). Raises Rejected."""
    repeated_max = repeated_max or {}
    type_name, plan = _plan(message.DESCRIPTOR)
    for name, kind, limit in plan:
        if kind == _ONEOF:  # only the set member of a oneof: one call instead of a HasField each
            chosen = message.WhichOneof(name)
            if chosen is not None and chosen in limit:
                check_fields(getattr(message, chosen), repeated_max)
            continue
        value = getattr(message, name)
        if kind == _STRING:
            if len(value) > limit:
                raise Rejected("oversized_field", f"{type_name}.{name} holds {len(value)} characters, limit {limit}")
        elif kind == _ENUM:
            if value not in limit:
                raise Rejected("out_of_range", f"{type_name}.{name}={value} is not a declared value")
        elif kind == _MESSAGE:
            if message.HasField(name):
                check_fields(value, repeated_max)
        else:
            _check_repeated(type_name, name, kind, limit, value, repeated_max)


def _check_repeated(type_name: str, name: str, kind: str, item_limit, values, repeated_max: Mapping[str, int]) -> None:
    if not values:
        return
    most = repeated_max.get(name, 0)
    if len(values) > most:
        raise Rejected("oversized_field", f"{type_name}.{name} holds {len(values)} items, limit {most}")
    if kind == _REPEATED_MESSAGE:
        for item in values:
            check_fields(item, repeated_max)
    elif kind == _MAP_KEYS:
        longest = max(len(key) for key in values)
        if longest > item_limit:
            raise Rejected("oversized_field", f"{type_name}.{name} has a key of {longest} characters, "
                                              f"limit {item_limit}")


_STRING, _ENUM, _MESSAGE, _ONEOF, _REPEATED_MESSAGE, _MAP_KEYS, _REPEATED = (
    "string", "enum", "message", "oneof", "repeated_message", "map_keys", "repeated")


@cache
def _plan(descriptor: Descriptor) -> tuple[str, tuple[tuple[str, str, object], ...]]:
    """(type name, (field name, kind, limit) for each field check_fields looks at), once per type:
    walking descriptors per message cost ten times the parse."""
    type_name = descriptor.name
    plan = []
    for oneof in descriptor.oneofs:
        members = frozenset(f.name for f in oneof.fields if f.type == FieldDescriptor.TYPE_MESSAGE)
        if members:
            plan.append((oneof.name, _ONEOF, members))
    for field in descriptor.fields:
        in_oneof = field.containing_oneof is not None and field.type == FieldDescriptor.TYPE_MESSAGE
        if in_oneof:
            continue
        if field.is_repeated:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                plan.append((field.name, _MAP_KEYS, LIMITS.strings.chars(type_name, field.name)))
            else:
                plan.append((field.name, _REPEATED_MESSAGE if entry is not None else _REPEATED, None))
        elif field.type == FieldDescriptor.TYPE_STRING:
            plan.append((field.name, _STRING, LIMITS.strings.chars(type_name, field.name)))
        elif field.type == FieldDescriptor.TYPE_ENUM:
            plan.append((field.name, _ENUM, frozenset(field.enum_type.values_by_number)))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            plan.append((field.name, _MESSAGE, None))
    return type_name, tuple(plan)
