"""Decoding and validating fleetloop messages: bytes in, a checked message out, or a `Rejected` with
a machine-readable reason for the dead-letter topic (docs/ARCHITECTURE.md, validation).

One codec per topic: `envelope` (the four fleet topics, `decode`), `heartbeat` and `pose` (their
rules, applied to one message and to a batch alike), `messages` (events, perception, TriggerEvent,
UploadManifest). Every number they check is in `libs/fleetloop/limits.yaml` (`limits.LIMITS`).
"""

from fleetloop.codec.envelope import (
    PAYLOAD_BY_TOPIC,
    PAYLOADS,
    PLAUSIBILITY,
    check_watermark,
    decode,
    decode_envelope,
)
from fleetloop.codec.heartbeat import check_heartbeat, heartbeat_suspects
from fleetloop.codec.limits import LIMITS, Limits, load_limits
from fleetloop.codec.messages import (
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    TIERS,
    check_event,
    check_perception,
    decode_manifest,
    decode_trigger,
    in_time_range,
)
from fleetloop.codec.pose import POSE_DTYPES, pose_arrays, pose_batch, pose_columns, pose_screen
from fleetloop.codec.rejected import STRUCTURAL_REASONS, Rejected, check_size

# Today's names of the limits, for callers not yet reading LIMITS.
MIN_EVENT_MS = LIMITS.time.min_event_ms
MAX_EVENT_MS = LIMITS.time.max_event_ms
MAX_AHEAD_OF_WATERMARK_MS = LIMITS.time.max_ahead_of_watermark_ms
MAX_BEHIND_WATERMARK_MS = LIMITS.time.max_behind_watermark_ms
MAX_SPEED_MPS = LIMITS.motion.max_speed_mps
MAX_ACCEL_MPS2 = LIMITS.motion.max_accel_mps2
MAX_STEP_SPEED_MPS = LIMITS.motion.max_step_speed_mps
MAX_SAMPLES_PER_BATCH = LIMITS.motion.max_samples_per_batch


def encode(message) -> bytes:
    """The wire bytes of any fleetloop message."""
    return message.SerializeToString()


__all__ = [
    "LIMITS", "Limits", "MAX_ACCEL_MPS2", "MAX_AHEAD_OF_WATERMARK_MS", "MAX_BEHIND_WATERMARK_MS", "MAX_EVENT_MS",
    "MAX_SAMPLES_PER_BATCH", "MAX_SPEED_MPS", "MAX_STEP_SPEED_MPS", "MIN_EVENT_MS", "PAYLOADS", "PAYLOAD_BY_TOPIC",
    "PLAUSIBILITY", "POSE_DTYPES", "Rejected", "STRUCTURAL_REASONS",
    "SCHEMA_VERSION", "SUPPORTED_SCHEMA_VERSIONS", "TIERS", "check_event",
    "check_heartbeat", "check_perception", "check_size", "check_watermark", "decode", "decode_envelope",
    "decode_manifest", "decode_trigger", "encode", "heartbeat_suspects", "in_time_range", "load_limits",
    "pose_arrays", "pose_batch", "pose_columns", "pose_screen",
]
