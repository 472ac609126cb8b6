"""Pure case logic: triggers → cases, the tier plan, the upload queue with its budget and Wi-Fi
rules, and the upload lifecycle. No I/O and no wall clock: every time is fleet event time (epoch ms)
passed in by the caller, and functions change the `Case` messages they are given in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleetloop.v1 import cases_pb2, common_pb2, triggers_pb2, uploads_pb2

from services.case_assembler.policy import Policy

DAY_MS = 86_400_000
# The most serious category names the case (ARCHITECTURE §1: danger, then interventions, then stupidity).
_SERIOUSNESS = {triggers_pb2.TRIGGER_CATEGORY_MPD: 4, triggers_pb2.TRIGGER_CATEGORY_MPI: 3,
                triggers_pb2.TRIGGER_CATEGORY_MPS: 2, triggers_pb2.TRIGGER_CATEGORY_INFO: 1}
PENDING, REQUESTED, UPLOADING, COMPLETE, EXPIRED, FAILED = (
    cases_pb2.UPLOAD_STATUS_PENDING, cases_pb2.UPLOAD_STATUS_REQUESTED, cases_pb2.UPLOAD_STATUS_UPLOADING,
    cases_pb2.UPLOAD_STATUS_COMPLETE, cases_pb2.UPLOAD_STATUS_EXPIRED, cases_pb2.UPLOAD_STATUS_FAILED)
TERMINAL = frozenset({COMPLETE, EXPIRED, FAILED})
IN_FLIGHT = frozenset({REQUESTED, UPLOADING})


def case_id_for(vehicle_id: str, onset_ms: int) -> str:
    """Deterministic CaseID from the vehicle and its first trigger's onset: a replay makes the same id."""
    return hashlib.sha1(f"case|{vehicle_id}|{onset_ms}".encode()).hexdigest()[:24]


def request_id_for(case_id: str, tier: str, start_ms: int, end_ms: int, attempt: int) -> str:
    """Deterministic upload request id: the same request re-sent after a crash is recognised."""
    return hashlib.sha1(f"upload|{case_id}|{tier}|{start_ms}|{end_ms}|{attempt}".encode()).hexdigest()[:24]


def trigger_window(trigger: triggers_pb2.TriggerEvent, policy: Policy) -> tuple[int, int]:
    """(start_ms, end_ms) of a trigger's case window: onset - pre .. end + post."""
    pre_s = trigger.window_pre_s or policy.default_pre_s
    post_s = trigger.window_post_s or policy.default_post_s
    return trigger.onset_ms - int(pre_s * 1000), max(trigger.end_ms, trigger.onset_ms) + int(post_s * 1000)


def merges(case: cases_pb2.Case, trigger: triggers_pb2.TriggerEvent, policy: Policy) -> bool:
    """True when the trigger's window comes within the merge gap of the case's window."""
    start_ms, end_ms = trigger_window(trigger, policy)
    gap_ms = int(policy.merge_gap_s * 1000)
    return start_ms <= case.window_end_ms + gap_ms and end_ms >= case.window_start_ms - gap_ms


def tier_plan(triggers: Iterable[triggers_pb2.TriggerEvent], policy: Policy) -> tuple[list[str], bool]:
    """(tiers to request, queue for replay) for a set of triggers: every tier up to the largest any
    matching rule asks for (microlog at least)."""
    names = policy.tier_names
    top, replay = 0, False
    for trigger in triggers:
        for rule in policy.rules:
            if rule.matches(trigger):
                top = max(top, names.index(rule.tier))
                replay = replay or rule.replay
    return list(names[:top + 1]), replay


def case_value(case: cases_pb2.Case, policy: Policy) -> tuple[float, float]:
    """(priority, uncertainty) of a case from its triggers' severity and uncertainty (both 0..1)."""
    uncertainty = max((t.severity for t in case.triggers if t.trigger in policy.uncertainty_triggers), default=0.0)
    priority = (policy.severity_weight * case.severity + policy.uncertainty_weight * uncertainty
                + policy.category_bonus.get(case.category, 0.0))
    return priority, uncertainty


def _refresh(case: cases_pb2.Case, policy: Policy) -> None:
    """Recompute the fields derived from the triggers: window, category, severity, tiers, value."""
    windows = [trigger_window(t, policy) for t in case.triggers]
    new_window = (min(w[0] for w in windows), max(w[1] for w in windows))
    if new_window != (case.window_start_ms, case.window_end_ms):
        case.window_start_ms, case.window_end_ms = new_window
        for upload in case.uploads:  # a grown window is a new cut: every tier is asked again
            upload.CopyFrom(cases_pb2.TierUpload(tier=upload.tier, status=PENDING, updated_ms=upload.updated_ms))
    case.category = max((t.category for t in case.triggers), key=lambda c: _SERIOUSNESS.get(c, 0))
    case.severity = max(t.severity for t in case.triggers)
    tiers, replay = tier_plan(case.triggers, policy)
    for tier in tiers:
        if tier not in case.tiers:
            case.tiers.append(tier)
            case.uploads.append(cases_pb2.TierUpload(tier=tier, status=PENDING))
    case.replay_queued = case.replay_queued or replay
    case.priority, case.uncertainty = case_value(case, policy)


def new_case(trigger: triggers_pb2.TriggerEvent, policy: Policy, now_ms: int) -> cases_pb2.Case:
    """A case opened by its first trigger (revision 1)."""
    case = cases_pb2.Case(case_id=case_id_for(trigger.vehicle_id, trigger.onset_ms), vehicle_id=trigger.vehicle_id,
                          status=cases_pb2.CASE_STATUS_OPEN, revision=1, updated_ms=now_ms)
    case.triggers.append(trigger)
    _refresh(case, policy)
    return case


def add_trigger(case: cases_pb2.Case, trigger: triggers_pb2.TriggerEvent, policy: Policy, now_ms: int) -> None:
    """Merge a trigger into the case (idempotent on trigger_id)."""
    if any(t.trigger_id == trigger.trigger_id for t in case.triggers):
        return
    case.triggers.append(trigger)
    _refresh(case, policy)
    touch(case, now_ms)


def touch(case: cases_pb2.Case, now_ms: int) -> None:
    """Record a change: a new revision and the derived case status."""
    case.revision += 1
    case.updated_ms = max(case.updated_ms, now_ms)
    case.status = derive_status(case)


def derive_status(case: cases_pb2.Case) -> int:
    """The case status from its tiers: complete when all are, expired/failed when all ended and one
    did not complete, uploading once one moved, requested once one was asked, else open."""
    states = [u.status for u in case.uploads]
    if states and all(s in TERMINAL for s in states):
        if all(s == COMPLETE for s in states):
            return cases_pb2.CASE_STATUS_COMPLETE
        return cases_pb2.CASE_STATUS_EXPIRED if EXPIRED in states else cases_pb2.CASE_STATUS_FAILED
    if any(s in (UPLOADING, COMPLETE) for s in states):
        return cases_pb2.CASE_STATUS_UPLOADING
    if REQUESTED in states:
        return cases_pb2.CASE_STATUS_REQUESTED
    return cases_pb2.CASE_STATUS_OPEN


def is_active(case: cases_pb2.Case) -> bool:
    return any(u.status not in TERMINAL for u in case.uploads)


# ---------------------------------------------------------------------------------------- routing

@dataclass(frozen=True)
class Cooldown:
    """The case that last opened for a (vehicle, trigger family), and its first onset."""

    case_id: str
    onset_ms: int


def route(trigger: triggers_pb2.TriggerEvent, latest: cases_pb2.Case | None, cooldown: Cooldown | None,
          policy: Policy) -> tuple[str, str]:
    """Where a new trigger goes: ("merge", latest id), ("suppress", cooldown case id) or ("new", case id)."""
    if latest is not None and merges(latest, trigger, policy):
        return "merge", latest.case_id
    family = policy.family_of.get(trigger.trigger)
    if cooldown is not None and family is not None:
        elapsed_ms = trigger.onset_ms - cooldown.onset_ms
        if 0 <= elapsed_ms < policy.cooldown_s[family] * 1000:
            return "suppress", cooldown.case_id
    return "new", case_id_for(trigger.vehicle_id, trigger.onset_ms)


# ---------------------------------------------------------------------------------------- the queue

@dataclass
class VehicleLink:
    """What the latest heartbeat said about a vehicle's link (fleet.heartbeat.v1)."""

    last_heartbeat_ms: int = 0
    connectivity: int = common_pb2.CONNECTIVITY_UNSPECIFIED
    charging: bool = False

    @property
    def unmetered(self) -> bool:
        """On Wi-Fi, or charging (at a depot charger, which has a wired/Wi-Fi link)."""
        return self.connectivity == common_pb2.CONNECTIVITY_WIFI or self.charging


@dataclass
class DayUsage:
    """Bytes reserved or uploaded by one vehicle in one UTC day."""

    day: int = 0                # epoch day
    cellular_bytes: int = 0
    total_bytes: int = 0
    online_s: int = 0           # heartbeat-seconds seen that day: the raw-equivalent volume's basis


def estimate_bytes(tier: str, case: cases_pb2.Case, policy: Policy) -> int:
    return int(policy.tier(tier).estimate_bytes_per_s * (case.window_end_ms - case.window_start_ms) / 1000)


def admit(tier: str, estimate: int, link: VehicleLink, usage: DayUsage, policy: Policy) -> str:
    """Why a tier upload may not be asked now ("" when it may): heavy tiers wait for Wi-Fi or
    charging; metered uploads stay within the cellular budget; all within the daily total."""
    if policy.tier(tier).heavy and not link.unmetered:
        return "waiting for wifi or charging"
    if not link.unmetered and usage.cellular_bytes + estimate > policy.cellular_bytes_per_day:
        return "cellular budget of the day spent"
    if usage.total_bytes + estimate > policy.total_bytes_per_day:
        return "daily budget spent"
    return ""


def plan_vehicle(cases: Sequence[cases_pb2.Case], link: VehicleLink, usage: DayUsage, now_ms: int,
                 policy: Policy) -> tuple[list[uploads_pb2.VehicleCommand], set[str]]:
    """Ask for the next uploads of one vehicle's cases, most valuable first.

    Only cases whose window the vehicle has driven past (+ settle) are eligible; at most
    `max_in_flight` requests are outstanding. Reserves the estimate in `usage` (reset when the link's
    day changed). Returns the commands and the ids of the cases it changed (pending reasons included).
    """
    day = link.last_heartbeat_ms // DAY_MS
    if usage.day != day:
        usage.day, usage.cellular_bytes, usage.total_bytes, usage.online_s = day, 0, 0, 0
    changed: set[str] = set()
    in_flight = sum(1 for c in cases for u in c.uploads if u.status in IN_FLIGHT)
    offline = now_ms - link.last_heartbeat_ms > policy.offline_after_s * 1000
    queue = []
    for case in cases:
        if link.last_heartbeat_ms < case.window_end_ms + policy.settle_s * 1000:
            continue
        for upload in case.uploads:
            if upload.status == PENDING:
                queue.append((-case.priority, policy.tier_names.index(upload.tier), case.window_start_ms, case,
                              upload))
    queue.sort(key=lambda item: item[:3])
    commands = []
    for _, _, _, case, upload in queue:
        reason = "vehicle offline" if offline else "too many requests in flight" \
            if in_flight >= policy.max_in_flight else ""
        estimate = estimate_bytes(upload.tier, case, policy)
        reason = reason or admit(upload.tier, estimate, link, usage, policy)
        if reason:
            if upload.wait_reason != reason:
                upload.wait_reason = reason
                touch(case, now_ms)
                changed.add(case.case_id)
            continue
        upload.attempt += 1
        upload.status, upload.wait_reason = REQUESTED, ""
        upload.request_id = request_id_for(case.case_id, upload.tier, case.window_start_ms, case.window_end_ms,
                                           upload.attempt)
        upload.requested_ms = upload.updated_ms = now_ms
        upload.reserved_bytes, upload.metered = estimate, not link.unmetered
        usage.total_bytes += estimate
        usage.cellular_bytes += estimate if upload.metered else 0
        in_flight += 1
        touch(case, now_ms)
        changed.add(case.case_id)
        commands.append(uploads_pb2.VehicleCommand(
            schema_version=1, vehicle_id=case.vehicle_id, event_time_ms=now_ms, message_id=upload.request_id,
            upload=uploads_pb2.UploadRequest(
                request_id=upload.request_id, case_id=case.case_id, tier=upload.tier,
                window_start_ms=case.window_start_ms, window_end_ms=case.window_end_ms, attempt=upload.attempt,
                priority=case.priority)))
    return commands, changed


def expire(case: cases_pb2.Case, now_ms: int, policy: Policy) -> bool:
    """Apply the event-time timeouts: an unanswered request is asked again up to `max_attempts`, then
    expires; a tier never eligible for `pending_expire_s` after the window expires. True if changed."""
    changed = False
    for upload in case.uploads:
        if upload.status in IN_FLIGHT and now_ms - upload.requested_ms > policy.answer_timeout_s * 1000:
            if upload.attempt < policy.max_attempts:
                upload.status, upload.wait_reason = PENDING, f"no answer to attempt {upload.attempt}"
            else:
                upload.status, upload.wait_reason = EXPIRED, f"no answer after {upload.attempt} attempts"
            upload.updated_ms = now_ms
            changed = True
        elif upload.status == PENDING and now_ms - case.window_end_ms > policy.pending_expire_s * 1000:
            upload.status = EXPIRED
            upload.wait_reason = f"never uploaded: {upload.wait_reason or 'not eligible'}"
            upload.updated_ms = now_ms
            changed = True
    if changed:
        touch(case, now_ms)
    return changed


def apply_manifest(case: cases_pb2.Case, manifest: uploads_pb2.UploadManifest, usage: DayUsage | None,
                   now_ms: int, policy: Policy) -> str:
    """Move a tier by a vehicle's manifest. Returns "applied" or why it was ignored ("stale": a step
    of an older window or request, or one already applied). A COMPLETE manifest replaces the tier's
    budget reservation with its declared size in `usage`."""
    upload = next((u for u in case.uploads if u.tier == manifest.tier), None)
    if upload is None or (manifest.window_start_ms, manifest.window_end_ms) != (case.window_start_ms,
                                                                                 case.window_end_ms):
        return "stale"
    if upload.status in TERMINAL:
        return "stale"
    state = manifest.state
    if state == uploads_pb2.UPLOAD_STATE_ACCEPTED:
        if manifest.request_id != upload.request_id or upload.status != REQUESTED:
            return "stale"
        upload.status = UPLOADING
    elif state == uploads_pb2.UPLOAD_STATE_COMPLETE:
        # Any attempt of the current window delivers the same cut: a late answer to attempt 1 still counts.
        upload.status, upload.wait_reason = COMPLETE, ""
        upload.request_id, upload.uri, upload.size_bytes = manifest.request_id, manifest.uri, manifest.size_bytes
        upload.sha256, upload.message_count = manifest.sha256, manifest.message_count
        upload.declared_bytes = manifest.declared_bytes or manifest.size_bytes
        if usage is not None:
            delta = int(upload.declared_bytes) - int(upload.reserved_bytes)
            usage.total_bytes += delta
            usage.cellular_bytes += delta if upload.metered else 0
    elif state == uploads_pb2.UPLOAD_STATE_FAILED:
        if manifest.request_id != upload.request_id:
            return "stale"
        retry = manifest.retryable and upload.attempt < policy.max_attempts
        upload.status = PENDING if retry else FAILED
        upload.wait_reason = manifest.error
    else:
        return "stale"
    upload.updated_ms = now_ms
    touch(case, now_ms)
    return "applied"


def adjudicate(case: cases_pb2.Case, adjudication: cases_pb2.Adjudication) -> None:
    """Record a reviewer's verdict and responsibility (a new revision; the window time is kept)."""
    case.adjudication.CopyFrom(adjudication)
    touch(case, case.updated_ms)


def suppress(case: cases_pb2.Case, trigger: triggers_pb2.TriggerEvent, now_ms: int) -> None:
    """Fold a same-family repeat inside the cooldown into the case (no new window, no new upload)."""
    if trigger.trigger_id not in case.suppressed_trigger_ids:
        case.suppressed_trigger_ids.append(trigger.trigger_id)
        touch(case, now_ms)
