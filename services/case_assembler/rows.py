"""Case-assembler rows for ClickHouse, from Case and TriggerEvent messages (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetloop.v1 import cases_pb2, triggers_pb2
from google.protobuf import json_format

TRIGGER_COLUMNS = ("trigger_id", "vehicle_id", "trigger", "category", "severity", "weight", "onset", "peak", "end",
                   "window_pre_s", "window_post_s", "measurements", "detail", "config_version", "case_id",
                   "suppressed_by", "revision")
CASE_COLUMNS = ("case_id", "vehicle_id", "window_start", "window_end", "category", "severity", "priority", "status",
                "triggers", "trigger_ids", "tiers", "tier_status", "replay_queued", "verdict", "responsibility",
                "reviewer", "revision", "updated", "case_json")
LOG_COLUMNS = ("case_id", "vehicle_id", "tier", "status", "attempt", "request_id", "window_start", "window_end",
               "requested", "updated", "uri", "size_bytes", "declared_bytes", "sha256", "message_count", "metered",
               "reason", "revision")


def ts(ms: int) -> datetime:
    """Epoch ms → an aware UTC datetime for DateTime64(3, 'UTC') columns."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def upload_status_name(status: int) -> str:
    return cases_pb2.UploadStatus.Name(status).removeprefix("UPLOAD_STATUS_").lower()


def case_json(case: cases_pb2.Case) -> str:
    return json_format.MessageToJson(case, preserving_proto_field_name=True, indent=None)


def case_from_json(text: str) -> cases_pb2.Case:
    return json_format.Parse(text, cases_pb2.Case())


def trigger_row(trigger: triggers_pb2.TriggerEvent, case_id: str, suppressed_by: str, revision: int) -> tuple:
    return (trigger.trigger_id, trigger.vehicle_id, trigger.trigger, trigger.category, trigger.severity,
            trigger.weight, ts(trigger.onset_ms), ts(trigger.peak_ms or trigger.onset_ms),
            ts(max(trigger.end_ms, trigger.onset_ms)), trigger.window_pre_s, trigger.window_post_s,
            dict(trigger.measurements), trigger.detail, trigger.config_version, case_id, suppressed_by, revision)


def case_row(case: cases_pb2.Case) -> tuple:
    adj = case.adjudication
    return (case.case_id, case.vehicle_id, ts(case.window_start_ms), ts(case.window_end_ms), case.category,
            case.severity, case.priority, case.status, [t.trigger for t in case.triggers],
            [t.trigger_id for t in case.triggers], list(case.tiers),
            {u.tier: upload_status_name(u.status) for u in case.uploads}, int(case.replay_queued), adj.verdict,
            adj.responsibility, adj.reviewer, case.revision, ts(case.updated_ms), case_json(case))


def log_rows(case: cases_pb2.Case) -> list[tuple]:
    return [(case.case_id, case.vehicle_id, u.tier, upload_status_name(u.status), u.attempt, u.request_id,
             ts(case.window_start_ms), ts(case.window_end_ms), ts(u.requested_ms), ts(u.updated_ms), u.uri,
             u.size_bytes, u.declared_bytes, u.sha256, u.message_count, int(u.metered), u.wait_reason, case.revision)
            for u in case.uploads]
