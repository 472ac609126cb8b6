"""The per-message rules of fleet.events.v1 and fleet.perception.v1 and the decoders of the loop's
own topics: loop.triggers.v1 (TriggerEvent) and fleet.uploads.v1 (UploadManifest)."""

from __future__ import annotations

import math

from fleetloop.codec.limits import LIMITS
from fleetloop.codec.rejected import Rejected, check_fields, check_size, check_vehicle_id, finite, parse
from fleetloop.v1 import common_pb2, triggers_pb2, uploads_pb2

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
TIERS = frozenset({"microlog", "minilog", "raw"})
SHA256_HEX = frozenset("0123456789abcdef")
_OBJECT_FLOATS = ("rel_x_m", "rel_y_m", "rel_vx_mps", "rel_vy_mps", "length_m", "width_m", "confidence",
                  "accel_x_mps2", "accel_y_mps2", "min_ttc_s", "min_distance_m")
# The criticality contract's summary fields (common.proto): unset reads 0, which is finite.
_SUMMARY_FLOATS = ("speed_limit_mps", "ego_length_m", "ego_width_m", "window_min_ttc_s", "window_min_distance_m")


def check_event(event: common_pb2.VehicleEvent) -> None:
    """Plausibility of one vehicle event; raises Rejected."""
    finite("value", event.value)
    if event.kind == common_pb2.EVENT_KIND_UNSPECIFIED:
        raise Rejected("absurd_value", "event kind unspecified")


def check_perception(summary: common_pb2.PerceptionSummary) -> None:
    """Plausibility of one perception summary (lane numbers land in UInt8 columns); raises Rejected."""
    for name in _SUMMARY_FLOATS:
        finite(name, getattr(summary, name))
    lanes = LIMITS.perception.max_lane_count
    if summary.lane_count > lanes or summary.lane_index >= lanes:
        raise Rejected("out_of_range", f"lane_count={summary.lane_count} lane_index={summary.lane_index}, "
                                       f"at most {lanes} lanes")
    for obj in summary.objects:
        for name in _OBJECT_FLOATS:
            finite(f"object[{obj.track_id}].{name}", getattr(obj, name))


def in_time_range(ms: int) -> bool:
    """Inside 2015..2100 (limits.yaml time)."""
    return LIMITS.time.min_event_ms <= ms < LIMITS.time.max_event_ms


def decode_trigger(value: bytes | None, key: bytes | None, *, strict: bool = True,
                   topic: str = "loop.triggers.v1") -> triggers_pb2.TriggerEvent:
    """A TriggerEvent from loop.triggers.v1, checked; raises Rejected.

    strict=False is what counting needs (the metrics sink): ids and an onset in range. strict=True
    adds what cutting a case needs (the case-assembler): a trigger name, the key, an ordered
    episode and finite, bounded severity and windows.
    """
    trigger = parse(triggers_pb2.TriggerEvent(), check_size(topic, value), "TriggerEvent")
    if not trigger.trigger_id or not trigger.vehicle_id or (strict and not trigger.trigger):
        raise Rejected("missing_field", "trigger_id, vehicle_id and trigger are required")
    check_vehicle_id(trigger.vehicle_id, key if strict else None)
    check_fields(trigger, {"measurements": LIMITS.trigger.max_measurements})
    if not in_time_range(trigger.onset_ms):
        raise Rejected("bad_timestamp", f"onset_ms={trigger.onset_ms} end_ms={trigger.end_ms}")
    if strict:
        _check_episode(trigger)
    return trigger


def _check_episode(trigger: triggers_pb2.TriggerEvent) -> None:
    if trigger.end_ms < trigger.onset_ms - 1:
        raise Rejected("bad_timestamp", f"onset_ms={trigger.onset_ms} end_ms={trigger.end_ms}")
    for name in ("severity", "window_pre_s", "window_post_s"):
        value = getattr(trigger, name)
        if not math.isfinite(value) or value < 0:
            raise Rejected("absurd_value", f"{name}={value}")
    limits = LIMITS.trigger
    if (trigger.window_pre_s > limits.max_window_s or trigger.window_post_s > limits.max_window_s
            or trigger.end_ms - trigger.onset_ms > limits.max_episode_ms):
        raise Rejected("absurd_value", "case window longer than a day")


def decode_manifest(value: bytes | None, key: bytes | None,
                    topic: str = "fleet.uploads.v1") -> uploads_pb2.UploadManifest:
    """An UploadManifest from fleet.uploads.v1, checked; raises Rejected."""
    manifest = parse(uploads_pb2.UploadManifest(), check_size(topic, value), "UploadManifest")
    if manifest.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise Rejected("unknown_schema_version", f"schema_version={manifest.schema_version}")
    if not (manifest.vehicle_id and manifest.case_id and manifest.request_id):
        raise Rejected("missing_field", "vehicle_id, case_id and request_id are required")
    check_vehicle_id(manifest.vehicle_id, key)
    check_fields(manifest)
    if manifest.tier not in TIERS:
        raise Rejected("unknown_tier", f"tier={manifest.tier!r}")
    if manifest.state == uploads_pb2.UPLOAD_STATE_UNSPECIFIED:
        raise Rejected("missing_field", "state unspecified")
    if manifest.state == uploads_pb2.UPLOAD_STATE_COMPLETE:
        if not manifest.uri or manifest.size_bytes == 0:
            raise Rejected("missing_field", "a complete manifest needs uri and size_bytes")
        if len(manifest.sha256) != 64 or not set(manifest.sha256) <= SHA256_HEX:
            raise Rejected("bad_checksum", f"sha256={manifest.sha256!r} is not 64 hex digits")
    return manifest
