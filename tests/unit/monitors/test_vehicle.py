"""Per-vehicle fleet monitors: OFFLINE/RECOVERED, stop-and-not-go, the event-time clock in both
modes, state round-trips mid-incident and the alert lifecycle."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest
import yaml
from fleetloop.config import ConfigError
from fleetloop.monitors import (
    AlertTransitionError,
    ClockMode,
    FleetMonitor,
    MonitorConfig,
    MonitorInputError,
    VehicleMonitor,
    acknowledge,
    apply_monitor_update,
    load_monitor_config,
    resolve,
)
from fleetloop.monitors.alerts import make_alert
from fleetloop.monitors.config import DEFAULT_CONFIG_PATH
from fleetloop.v1 import alerts_pb2, common_pb2

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CONFIG = load_monitor_config()
OFFLINE_MS = 10_000
PERIOD_MS = 1_000
RUNNING, PAUSED, DONE = common_pb2.TASK_STATE_RUNNING, common_pb2.TASK_STATE_PAUSED, common_pb2.TASK_STATE_DONE
K = alerts_pb2


def heartbeat(*, speed: float = 5.0, x: float = 0.0, task: int = RUNNING, park: str = "park-1",
              city: str = "hz", version: str = "1.0.0", parked: bool = False) -> common_pb2.Heartbeat:
    return common_pb2.Heartbeat(speed_mps=speed, x_m=x, y_m=0.0, task_state=task, park=park, city=city,
                                software_version=version, parked=parked, mode=common_pb2.DRIVING_MODE_AUTONOMOUS)


def fleet_stream(n: int, seconds: int, *, silent: dict[str, tuple[int, int]] | None = None,
                 stops: dict[str, tuple[int, int]] | None = None, seed: int = 7) -> list[common_pb2.Envelope]:
    """Envelopes of `n` vehicles at 1 Hz for `seconds`, in arrival order.

    Vehicle i heartbeats at phase (i*37 % 1000) ms of each second; `silent[v] = (a, b)` drops its
    heartbeats for seconds a <= s < b; `stops[v] = (a, b)` holds it at speed 0 on a running task
    for those seconds. Arrival jitter up to 800 ms reorders vehicles but never one vehicle's own
    messages (as a Kafka partition keyed by vehicle does).
    """
    rng = random.Random(seed)
    silent, stops = silent or {}, stops or {}
    arrivals = []
    for i in range(n):
        vid = f"V{i:03d}"
        x = 0.0
        for s in range(seconds):
            a, b = silent.get(vid, (-1, -1))
            sa, sb = stops.get(vid, (-1, -1))
            stopped = sa <= s < sb
            if not stopped:
                x += 5.0
            if a <= s < b:
                continue
            event_ms = T0 + s * 1000 + (i * 37) % 1000
            env = common_pb2.Envelope(vehicle_id=vid, event_time_ms=event_ms, message_id=f"{vid}:{event_ms}",
                                      heartbeat=heartbeat(speed=0.0 if stopped else 5.0, x=x))
            arrivals.append((event_ms + rng.randrange(800), env))
    arrivals.sort(key=lambda item: item[0])
    return [env for _, env in arrivals]


def run(monitor: FleetMonitor, stream: list[common_pb2.Envelope]) -> list[alerts_pb2.Alert]:
    alerts = []
    for env in stream:
        alerts += monitor.on_envelope(env)
    return alerts


def first_heartbeat_ms(vid: str, second: int) -> int:
    return T0 + second * 1000 + (int(vid[1:]) * 37) % 1000


def by_kind(alerts: list[alerts_pb2.Alert], kind: int) -> list[alerts_pb2.Alert]:
    return [a for a in alerts if a.kind == kind]


# -- offline -----------------------------------------------------------------------------------

DROPOUTS = {"V003": (100, 112), "V011": (150, 290), "V017": (60, 95), "V024": (200, 231),
            "V030": (400, 420), "V041": (30, 500)}
SHORT_GAPS = {"V005": (100, 105), "V006": (300, 309)}  # 9 missing heartbeats: a 9-10 s gap, never offline


def test_every_dropout_alerted_once_within_threshold_plus_one_period_and_recovered() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = run(monitor, fleet_stream(50, 600, silent={**DROPOUTS, **SHORT_GAPS}))

    offline = by_kind(alerts, K.ALERT_KIND_OFFLINE)
    recovered = by_kind(alerts, K.ALERT_KIND_RECOVERED)
    assert sorted(a.vehicle_id for a in offline) == sorted(DROPOUTS)
    assert sorted(a.vehicle_id for a in recovered) == sorted(DROPOUTS)
    for vid, (a, b) in DROPOUTS.items():
        last_seen = first_heartbeat_ms(vid, a - 1)
        (alert,) = [x for x in offline if x.vehicle_id == vid]
        assert alert.alert_id == f"offline:{vid}:{last_seen}"
        assert alert.state == K.ALERT_STATE_OPEN and alert.severity == K.ALERT_SEVERITY_CRITICAL
        assert 0 <= alert.event_ms - last_seen - OFFLINE_MS <= PERIOD_MS
        (back,) = [x for x in recovered if x.vehicle_id == vid]
        assert back.alert_id == alert.alert_id and back.revision == 2 and back.state == K.ALERT_STATE_RESOLVED
        assert back.event_ms == first_heartbeat_ms(vid, b)
        assert float(back.details["outage_s"]) == pytest.approx((b - a + 1) * 1.0)


def test_vehicle_that_never_returns_stays_offline_without_repeats() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = run(monitor, fleet_stream(10, 300, silent={"V002": (50, 300)}))
    assert [a.vehicle_id for a in alerts] == ["V002"]
    assert monitor.vehicles is not None and monitor.vehicles.is_offline("V002")


def test_offline_timeout_follows_the_vehicles_expected_rate() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    assert monitor.vehicles is not None
    monitor.vehicles.set_expected_rate("SLOW", 0.2)  # one heartbeat every 5 s -> offline after 50 s
    alerts = []
    for s in range(0, 100, 5):
        alerts += monitor.on_heartbeat("SLOW", T0 + s * 1000, heartbeat())
        alerts += monitor.on_heartbeat("FAST", T0 + s * 1000 + 2_000, heartbeat())  # the default 1 Hz, but every 5 s
    assert alerts == []  # 5 s gaps: not offline at 1 Hz (10 s) either
    last = T0 + 95_000
    assert [a.vehicle_id for a in monitor.advance(last + 2_000 + OFFLINE_MS)] == ["FAST"]
    assert monitor.advance(last + 50_000 - 1) == []
    assert [a.vehicle_id for a in monitor.advance(last + 50_000)] == ["SLOW"]


def test_parked_idle_vehicle_powering_down_is_not_paged() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    monitor.on_heartbeat("DEPOT", T0, heartbeat(speed=0.0, task=DONE, parked=True))
    monitor.on_heartbeat("ROAD", T0, heartbeat())
    alerts = monitor.advance(T0 + 60_000)
    assert [a.vehicle_id for a in alerts] == ["ROAD"]
    assert monitor.on_heartbeat("DEPOT", T0 + 3_600_000, heartbeat(task=RUNNING)) == []  # no RECOVERED either


# -- the two clock modes ---------------------------------------------------------------------


def test_live_clock_advances_through_total_silence() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.LIVE)
    wall_lag_ms = 700  # the data arrives 0.7 s after it happened
    for s in range(30):
        for vid in ("A", "B", "C"):
            event_ms = T0 + s * 1000
            assert monitor.on_heartbeat(vid, event_ms, heartbeat(), wall_ms=event_ms + wall_lag_ms) == []
    last_event, last_wall = T0 + 29_000, T0 + 29_000 + wall_lag_ms
    # The whole fleet goes quiet; only the wall clock moves.
    lateness = CONFIG.clock.allowed_lateness_ms
    fired: dict[str, int] = {}
    for step in range(1, 40):
        now = last_wall + step * 500
        for alert in monitor.tick(now):
            fired[alert.vehicle_id] = now
            assert alert.kind == K.ALERT_KIND_OFFLINE
            assert 0 <= alert.event_ms - last_event - OFFLINE_MS <= PERIOD_MS
    assert set(fired) == {"A", "B", "C"}
    # They fire exactly when the wall clock, mapped to event time, passes deadline + lateness.
    assert all(0 <= t - (last_wall + OFFLINE_MS + lateness) < 500 for t in fired.values())


def test_live_restore_waits_for_data_before_the_wall_clock_counts() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.LIVE)
    monitor.on_heartbeat("A", T0, heartbeat(), wall_ms=T0 + 100)
    restored = FleetMonitor.restore(CONFIG, json.loads(json.dumps(monitor.snapshot())))
    # Down for an hour: the backlog must be read before wall time may stand in for data time.
    assert restored.tick(T0 + 3_600_000) == []
    assert restored.on_heartbeat("A", T0 + 1_000, heartbeat(), wall_ms=T0 + 3_600_000) == []
    assert restored.tick(T0 + 3_600_000 + 11_999) == []
    assert [a.vehicle_id for a in restored.tick(T0 + 3_600_000 + 12_000)] == ["A"]


def test_event_clock_moves_only_with_data() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    monitor.on_heartbeat("A", T0, heartbeat())
    with pytest.raises(ValueError, match="LIVE"):
        monitor.tick(T0 + 3_600_000)
    assert monitor.advance() == []  # no new data: event time stands still, nobody is offline
    assert [a.vehicle_id for a in monitor.advance(T0 + OFFLINE_MS)] == ["A"]


def test_live_clock_needs_wall_time_and_refuses_far_future_events() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.LIVE)
    with pytest.raises(ValueError, match="wall"):
        monitor.on_heartbeat("A", T0, heartbeat())
    assert monitor.vehicles is not None and monitor.vehicles.vehicle_scope("A") is None  # refused before any effect
    with pytest.raises(MonitorInputError) as refused:
        monitor.on_heartbeat("A", T0 + 3_600_000, heartbeat(), wall_ms=T0)
    assert refused.value.reason == "future_event_time"
    assert monitor.watermark_ms is None  # the refused message did not move time


def late_partition_stream() -> list[tuple[str, int]]:
    """EARLY is 1.5 s ahead of LATE in event time and LATE's messages arrive one message behind;
    LATE also has a 9 s gap (seconds 20-27 missing): never offline, but its data lags 2.5 s."""
    arrivals = []
    for s in range(60):
        arrivals.append(("EARLY", T0 + s * 1000 + 1_500))
        if s >= 1 and not 20 <= s - 1 <= 27:
            arrivals.append(("LATE", T0 + (s - 1) * 1000))
    return arrivals


def test_late_data_within_allowed_lateness_raises_no_false_offline() -> None:
    def alerts_with(config: MonitorConfig) -> list[alerts_pb2.Alert]:
        monitor = FleetMonitor(config, ClockMode.EVENT)
        alerts = []
        for vid, event_ms in late_partition_stream():
            alerts += monitor.on_heartbeat(vid, event_ms, heartbeat())
        return alerts

    assert alerts_with(CONFIG) == []
    no_lateness = CONFIG.model_copy(update={"clock": CONFIG.clock.model_copy(update={"allowed_lateness_s": 0.0})})
    assert [(a.vehicle_id, a.kind) for a in alerts_with(no_lateness)] == [
        ("LATE", K.ALERT_KIND_OFFLINE), ("LATE", K.ALERT_KIND_RECOVERED)]


@pytest.mark.parametrize("bad, reason", [
    (common_pb2.Envelope(vehicle_id="", event_time_ms=T0, heartbeat=heartbeat()), "missing_vehicle_id"),
    (common_pb2.Envelope(vehicle_id="A", event_time_ms=0, heartbeat=heartbeat()), "bad_event_time"),
    (common_pb2.Envelope(vehicle_id="A", event_time_ms=T0, heartbeat=heartbeat(speed=float("nan"))),
     "non_finite_value"),
])
def test_bad_input_is_refused_with_a_reason(bad: common_pb2.Envelope, reason: str) -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    with pytest.raises(MonitorInputError) as refused:
        monitor.on_envelope(bad)
    assert refused.value.reason == reason


# -- stop-and-not-go ---------------------------------------------------------------------------


def test_stop_escalates_one_alert_id_and_clears_when_moving_on() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = by_kind(run(monitor, fleet_stream(5, 900, stops={"V001": (100, 800)})), K.ALERT_KIND_STOP_NOT_GO)
    start = first_heartbeat_ms("V001", 100)
    assert {a.alert_id for a in alerts} == {f"stop_not_go:V001:{start}"}
    raised, cleared = alerts[:-1], alerts[-1]
    assert [a.level for a in raised] == [1, 2, 3, 4]
    assert [a.revision for a in raised] == [1, 2, 3, 4]
    assert [a.severity for a in raised] == [K.ALERT_SEVERITY_INFO, K.ALERT_SEVERITY_WARNING,
                                            K.ALERT_SEVERITY_CRITICAL, K.ALERT_SEVERITY_CRITICAL]
    for alert, after_s in zip(raised, (60, 180, 300, 600), strict=True):
        assert alert.state == K.ALERT_STATE_OPEN and alert.opened_ms == raised[0].event_ms
        assert 0 <= alert.event_ms - start - after_s * 1000 <= PERIOD_MS
    assert cleared.state == K.ALERT_STATE_RESOLVED and cleared.revision == 5
    assert cleared.event_ms == first_heartbeat_ms("V001", 800)


def test_stop_of_four_minutes_reaches_the_issue_level_only() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = by_kind(run(monitor, fleet_stream(3, 600, stops={"V002": (10, 250)})), K.ALERT_KIND_STOP_NOT_GO)
    assert [(a.level, a.state) for a in alerts] == [(1, K.ALERT_STATE_OPEN), (2, K.ALERT_STATE_OPEN),
                                                    (2, K.ALERT_STATE_RESOLVED)]


def test_red_light_and_delivery_stops_raise_nothing() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = []
    for s in range(45):  # a 45 s red light
        alerts += monitor.on_heartbeat("A", T0 + s * 1000, heartbeat(speed=0.0, x=10.0))
    for s in range(45, 900):  # a 15 min delivery stop: the task is paused
        alerts += monitor.on_heartbeat("A", T0 + s * 1000, heartbeat(speed=0.0, x=20.0, task=PAUSED))
    assert alerts == []


def test_creeping_out_of_the_stop_circle_ends_the_episode() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = []
    for s in range(200):
        x = 0.0 if s < 100 else 0.1 * (s - 99)  # crawls at 0.1 m/s after 100 s: 2 m reached at s = 120
        alerts += monitor.on_heartbeat("A", T0 + s * 1000, heartbeat(speed=0.0 if s < 100 else 0.1, x=x))
    first = [a for a in alerts if a.incident_start_ms == T0]
    assert [(a.level, a.state) for a in first] == [(1, K.ALERT_STATE_OPEN), (1, K.ALERT_STATE_RESOLVED)]
    assert first[-1].event_ms == T0 + 120_000 and first[-1].details["cleared_by"] == "moved"


def test_task_ending_clears_the_stop() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = []
    for s in range(70):
        alerts += monitor.on_heartbeat("A", T0 + s * 1000, heartbeat(speed=0.0))
    alerts += monitor.on_heartbeat("A", T0 + 70_000, heartbeat(speed=0.0, task=DONE))
    assert [(a.level, a.state) for a in alerts] == [(1, K.ALERT_STATE_OPEN), (1, K.ALERT_STATE_RESOLVED)]
    assert alerts[-1].details["cleared_by"] == "task not running"


# -- state: restore mid-incident neither re-raises nor loses ---------------------------------


def incidents(alerts: list[alerts_pb2.Alert]) -> list[tuple[str, int, int, int, int]]:
    return sorted((a.alert_id, a.revision, a.state, a.level, a.event_ms) for a in alerts)


SCENARIO = dict(silent={"V003": (100, 140), "V009": (250, 400)}, stops={"V004": (50, 500), "V007": (300, 420)})


def test_snapshot_restore_mid_incident_matches_an_uninterrupted_run() -> None:
    stream = fleet_stream(12, 700, **SCENARIO)
    reference = incidents(run(FleetMonitor(CONFIG, ClockMode.EVENT), stream))
    assert len(reference) == 10  # 2 x (OFFLINE, RECOVERED), V004 levels 1-3 + clear, V007 level 1 + clear

    # Restart (through JSON, as a table or Redis would hold it) every 97 s of traffic, including
    # while V003/V009 are offline and V004 is between escalation levels.
    alerts: list[alerts_pb2.Alert] = []
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    for i, env in enumerate(stream):
        if i % (12 * 97) == 0 and i:
            monitor = FleetMonitor.restore(CONFIG, json.loads(json.dumps(monitor.snapshot())))
        alerts += monitor.on_envelope(env)
    assert incidents(alerts) == reference


def test_replaying_messages_after_restore_raises_nothing_twice() -> None:
    stream = fleet_stream(12, 700, **SCENARIO)
    cut = len(stream) // 2
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = run(monitor, stream[:cut])
    saved = json.loads(json.dumps(monitor.snapshot()))
    # At-least-once: the consumer restarts from an offset 60 s before the snapshot.
    restarted = FleetMonitor.restore(CONFIG, saved)
    alerts += run(restarted, stream[cut - 12 * 60:])
    assert incidents(alerts) == incidents(run(FleetMonitor(CONFIG, ClockMode.EVENT), stream))


def test_per_vehicle_table_state_round_trip() -> None:
    """The faust-table shape: write back only changed vehicles, rebuild from the table."""
    stream = fleet_stream(12, 700, **SCENARIO)
    reference = incidents(run(FleetMonitor(CONFIG, ClockMode.EVENT, parks=False), stream))
    table: dict[str, str] = {}
    monitor = VehicleMonitor(CONFIG)
    alerts: list[alerts_pb2.Alert] = []
    watermark = None
    for i, env in enumerate(stream):
        if i in (12 * 125, 12 * 300):  # V003 / V009 offline, V004 stopped between levels
            monitor = VehicleMonitor(CONFIG)
            for vid, state in table.items():
                monitor.restore_vehicle(vid, json.loads(state))
        alerts += monitor.on_heartbeat(env.vehicle_id, env.event_time_ms, env.heartbeat)
        watermark = max(watermark or 0, env.event_time_ms - CONFIG.clock.allowed_lateness_ms)
        alerts += monitor.advance(watermark)
        for vid in monitor.pop_dirty():
            table[vid] = json.dumps(monitor.snapshot_vehicle(vid))
    assert incidents(alerts) == reference


# -- lifecycle -------------------------------------------------------------------------------


def an_alert(state: int = K.ALERT_STATE_OPEN, revision: int = 1, level: int = 1) -> alerts_pb2.Alert:
    return make_alert(alert_id="stop_not_go:A:1", kind=K.ALERT_KIND_STOP_NOT_GO, severity=K.ALERT_SEVERITY_INFO,
                      level=level, revision=revision, state=state, opened_ms=T0, event_ms=T0 + revision,
                      incident_start_ms=T0 - 60_000, summary="A stopped", vehicle_id="A")


def test_lifecycle_open_acknowledged_resolved_records_who_and_when() -> None:
    acked = acknowledge(an_alert(), "alice", T0 + 10, note="on it")
    assert (acked.state, acked.acknowledged_by, acked.acknowledged_ms, acked.note) == (
        K.ALERT_STATE_ACKNOWLEDGED, "alice", T0 + 10, "on it")
    done = resolve(acked, "bob", T0 + 20)
    assert (done.state, done.resolved_by, done.resolved_ms, done.acknowledged_by) == (
        K.ALERT_STATE_RESOLVED, "bob", T0 + 20, "alice")
    assert resolve(an_alert(), "carol", T0 + 5).state == K.ALERT_STATE_RESOLVED  # OPEN -> RESOLVED


def test_lifecycle_rejects_invalid_transitions_clearly() -> None:
    done = resolve(an_alert(), "bob", T0 + 20)
    with pytest.raises(AlertTransitionError, match="ALERT_STATE_RESOLVED to ALERT_STATE_ACKNOWLEDGED.*bob"):
        acknowledge(done, "alice", T0 + 30)
    with pytest.raises(AlertTransitionError, match="RESOLVED to ALERT_STATE_RESOLVED"):
        resolve(done, "alice", T0 + 30)
    with pytest.raises(AlertTransitionError, match="ACKNOWLEDGED to ALERT_STATE_ACKNOWLEDGED.*alice"):
        acknowledge(acknowledge(an_alert(), "alice", T0), "dave", T0 + 1)
    with pytest.raises(AlertTransitionError, match="actor"):
        acknowledge(an_alert(), "", T0)


def test_monitor_updates_merge_without_undoing_people() -> None:
    stored = acknowledge(apply_monitor_update(None, an_alert()), "alice", T0 + 10)
    escalated = apply_monitor_update(stored, an_alert(revision=2, level=2))
    assert (escalated.level, escalated.state, escalated.acknowledged_by) == (2, K.ALERT_STATE_ACKNOWLEDGED, "alice")
    assert apply_monitor_update(escalated, an_alert(revision=2, level=2)) is escalated  # duplicate delivery
    assert apply_monitor_update(escalated, an_alert(revision=1)) is escalated  # stale replay
    cleared = apply_monitor_update(escalated, an_alert(state=K.ALERT_STATE_RESOLVED, revision=3, level=2))
    assert (cleared.state, cleared.resolved_by) == (K.ALERT_STATE_RESOLVED, "monitor")
    closed_by_hand = resolve(stored, "bob", T0 + 20)
    later = apply_monitor_update(closed_by_hand, an_alert(revision=3, level=3))
    assert (later.state, later.resolved_by, later.level) == (K.ALERT_STATE_RESOLVED, "bob", 3)
    other = an_alert()
    other.alert_id = "offline:B:1"
    with pytest.raises(ValueError, match="does not belong"):
        apply_monitor_update(stored, other)


# -- config ----------------------------------------------------------------------------------


def test_config_rejects_impossible_values() -> None:
    with open(DEFAULT_CONFIG_PATH, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    raw["stop_not_go"]["levels"][1]["after_s"] = 30
    with pytest.raises(ConfigError, match="increasing"):
        MonitorConfig.from_mapping(raw)
    assert CONFIG.offline.model_copy(update={"missed_heartbeats": 5}).timeout_ms(2.0) == 2_500
    with pytest.raises(ConfigError, match="rate"):
        CONFIG.offline.timeout_ms(0.0)


def test_config_error_names_file_and_key_path(tmp_path) -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    raw["stop_not_go"]["levels"][2]["severity"] = "LOUD"
    raw["park_stall"]["min_fraction"] = 1.5
    raw["error_burst"]["window_minutes"] = 2
    path = tmp_path / "monitors.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_monitor_config(path)
    lines = str(err.value).splitlines()
    assert f"{path}: stop_not_go.levels.2.severity: Value error, must be one of ['CRITICAL', 'INFO', 'WARNING'] " \
           "(got 'LOUD')" in lines
    assert f"{path}: park_stall.min_fraction: Input should be less than or equal to 1 (got 1.5)" in lines
    assert f"{path}: error_burst.window_minutes: unknown key" in lines


def test_alert_counts_are_one_per_incident_under_a_busy_fleet() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = run(monitor, fleet_stream(40, 900, silent=DROPOUTS, stops={"V010": (100, 700), "V020": (0, 200)}))
    per_id: dict[str, list[int]] = defaultdict(list)
    for a in alerts:
        per_id[a.alert_id].append(a.revision)
    assert all(revs == sorted(set(revs)) for revs in per_id.values())  # no update repeated or reordered
    assert len(per_id) == len([v for v in DROPOUTS if int(v[1:]) < 40]) + 2
