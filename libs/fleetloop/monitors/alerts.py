"""Alert identity, construction and lifecycle (pure).

Identity: one deterministic `alert_id` per incident, built from the kind, its subject and the
event time the condition began, so the same data always names the same incident (replays,
restarts and duplicated messages included). Every update of an incident carries the same id
and a higher `revision`.

Lifecycle: OPEN -> ACKNOWLEDGED -> RESOLVED, or OPEN -> RESOLVED; RESOLVED is terminal.
`acknowledge` and `resolve` are what AlertService calls; `apply_monitor_update` merges a
monitor's update into the stored alert without undoing what a person did.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetloop.v1 import alerts_pb2

Alert = alerts_pb2.Alert

OPEN = alerts_pb2.ALERT_STATE_OPEN
ACKNOWLEDGED = alerts_pb2.ALERT_STATE_ACKNOWLEDGED
RESOLVED = alerts_pb2.ALERT_STATE_RESOLVED
MONITOR_ACTOR = "monitor"

_ALLOWED: dict[int, frozenset[int]] = {
    OPEN: frozenset({ACKNOWLEDGED, RESOLVED}),
    ACKNOWLEDGED: frozenset({RESOLVED}),
    RESOLVED: frozenset(),
}


class AlertTransitionError(ValueError):
    """A lifecycle transition that the alert's current state does not allow."""


def offline_alert_id(vehicle_id: str, last_seen_ms: int) -> str:
    """The OFFLINE / RECOVERED incident of a vehicle whose last heartbeat was at `last_seen_ms`."""
    return f"offline:{vehicle_id}:{last_seen_ms}"


def stop_alert_id(vehicle_id: str, stop_start_ms: int) -> str:
    """The stop-and-not-go episode of a vehicle that stopped at `stop_start_ms`."""
    return f"stop_not_go:{vehicle_id}:{stop_start_ms}"


def park_stall_alert_id(scope: str, first_stop_ms: int) -> str:
    """The park stall whose earliest stalled vehicle stopped at `first_stop_ms`."""
    return f"park_stall:{scope}:{first_stop_ms}"


def error_burst_alert_id(scope: str, code_key: str, first_event_ms: int) -> str:
    """The burst of `code_key` in `scope` whose window began with the event at `first_event_ms`."""
    return f"error_burst:{scope}:{code_key}:{first_event_ms}"


def make_alert(
    *,
    alert_id: str,
    kind: int,
    severity: int,
    level: int,
    revision: int,
    state: int,
    opened_ms: int,
    event_ms: int,
    incident_start_ms: int,
    summary: str,
    vehicle_id: str = "",
    park: str = "",
    city: str = "",
    suspected_cause: str = "",
    details: Mapping[str, str] | None = None,
) -> Alert:
    """One monitor update as an Alert message; a RESOLVED update is resolved by the monitor."""
    alert = Alert(
        alert_id=alert_id, kind=kind, severity=severity, level=level, revision=revision, state=state,
        opened_ms=opened_ms, event_ms=event_ms, incident_start_ms=incident_start_ms, summary=summary,
        vehicle_id=vehicle_id, park=park, city=city, suspected_cause=suspected_cause,
    )
    if details:
        alert.details.update(details)
    if state == RESOLVED:
        alert.resolved_by = MONITOR_ACTOR
        alert.resolved_ms = event_ms
    return alert


def acknowledge(alert: Alert, actor: str, at_ms: int, note: str = "") -> Alert:
    """OPEN -> ACKNOWLEDGED by `actor` at `at_ms` (epoch ms). Returns a new Alert."""
    return _transition(alert, ACKNOWLEDGED, actor, at_ms, note)


def resolve(alert: Alert, actor: str, at_ms: int, note: str = "") -> Alert:
    """OPEN or ACKNOWLEDGED -> RESOLVED by `actor` at `at_ms` (epoch ms). Returns a new Alert."""
    return _transition(alert, RESOLVED, actor, at_ms, note)


def _transition(alert: Alert, target: int, actor: str, at_ms: int, note: str) -> Alert:
    if not actor:
        raise AlertTransitionError(f"{alert.alert_id}: an actor is required to move an alert to "
                                   f"{alerts_pb2.AlertState.Name(target)}")
    if target not in _ALLOWED.get(alert.state, frozenset()):
        raise AlertTransitionError(
            f"{alert.alert_id}: cannot go from {alerts_pb2.AlertState.Name(alert.state)} to "
            f"{alerts_pb2.AlertState.Name(target)}{_who_did_it(alert)}"
        )
    updated = Alert()
    updated.CopyFrom(alert)
    updated.state = target
    if target == ACKNOWLEDGED:
        updated.acknowledged_by, updated.acknowledged_ms = actor, at_ms
    else:
        updated.resolved_by, updated.resolved_ms = actor, at_ms
    if note:
        updated.note = note
    return updated


def _who_did_it(alert: Alert) -> str:
    if alert.state == RESOLVED:
        return f" (resolved by {alert.resolved_by or '?'} at {alert.resolved_ms})"
    if alert.state == ACKNOWLEDGED:
        return f" (acknowledged by {alert.acknowledged_by or '?'} at {alert.acknowledged_ms})"
    return ""


def apply_monitor_update(stored: Alert | None, update: Alert) -> Alert:
    """Merge a monitor update into the stored view of its incident; returns the new stored view.

    Updates with a revision not above the stored one are duplicates (at-least-once delivery,
    replays) and leave `stored` unchanged. A newer update brings level, severity, summary,
    details and event time; a RESOLVED update resolves the incident unless a person already
    did. An escalation keeps a person's ACKNOWLEDGED (they own it) or RESOLVED (their call); an
    incident the monitor itself resolved reopens when it flares up again (same id, newer revision).
    """
    if stored is None:
        fresh = Alert()
        fresh.CopyFrom(update)
        return fresh
    if update.alert_id != stored.alert_id:
        raise ValueError(f"update {update.alert_id} does not belong to alert {stored.alert_id}")
    if update.revision <= stored.revision:
        return stored
    merged = Alert()
    merged.CopyFrom(update)
    merged.acknowledged_by, merged.acknowledged_ms = stored.acknowledged_by, stored.acknowledged_ms
    merged.note = stored.note
    if stored.state == RESOLVED and stored.resolved_by != MONITOR_ACTOR:
        merged.state, merged.resolved_by, merged.resolved_ms = RESOLVED, stored.resolved_by, stored.resolved_ms
    elif update.state != RESOLVED:
        merged.state = stored.state
    return merged
