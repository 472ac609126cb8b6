"""Park-level fleet monitors: PARK_STALL with its suspected cause, ERROR_BURST against a learned
baseline, and their state round-trips mid-incident."""

from __future__ import annotations

import json
import random

import pytest
from fleetloop.monitors import ClockMode, FleetMonitor, load_monitor_config
from fleetloop.v1 import alerts_pb2, common_pb2

T0 = 1_767_225_600_000
CONFIG = load_monitor_config()
K = alerts_pb2
STALL_MS = 60_000  # park_stall.vehicle_stall_s


def park_stream(versions: dict[str, str], stalls: dict[str, tuple[int, int]], seconds: int, *, park: str = "P",
                silent_from: dict[str, int] | None = None) -> list[common_pb2.Envelope]:
    """1 Hz heartbeats of the vehicles in `versions` (id -> software version), vehicle i at
    i*50 ms into each second; `stalls[v] = (a, b)`: speed 0 on a running task for a <= s < b;
    `silent_from[v]`: no more heartbeats from that second."""
    silent_from = silent_from or {}
    out = []
    xs = dict.fromkeys(versions, 0.0)
    for s in range(seconds):
        for i, (vid, version) in enumerate(versions.items()):
            a, b = stalls.get(vid, (-1, -1))
            stalled = a <= s < b
            if not stalled:
                xs[vid] += 4.0
            if s >= silent_from.get(vid, seconds):
                continue
            hb = common_pb2.Heartbeat(speed_mps=0.0 if stalled else 4.0, x_m=xs[vid], park=park, city="hz",
                                      task_state=common_pb2.TASK_STATE_RUNNING, software_version=version)
            event_ms = T0 + s * 1000 + i * 50
            out.append(common_pb2.Envelope(vehicle_id=vid, event_time_ms=event_ms, message_id=f"{vid}:{event_ms}",
                                           heartbeat=hb))
    return out


def run(monitor: FleetMonitor, stream: list[common_pb2.Envelope]) -> list[alerts_pb2.Alert]:
    alerts = []
    for env in stream:
        alerts += monitor.on_envelope(env)
    return alerts


def kind(alerts: list[alerts_pb2.Alert], k: int) -> list[alerts_pb2.Alert]:
    return [a for a in alerts if a.kind == k]


FLEET = {f"V{i}": ("2.1.0" if i < 4 else "2.0.9") for i in range(10)}
BLOCKAGE = {"V0": (100, 600), "V1": (130, 650), "V2": (170, 500), "V3": (220, 700)}


def test_park_stall_on_a_shared_new_software_version_is_one_alert_blaming_software() -> None:
    alerts = run(FleetMonitor(CONFIG, ClockMode.EVENT), park_stream(FLEET, BLOCKAGE, 800))
    stall = kind(alerts, K.ALERT_KIND_PARK_STALL)
    assert [(a.state, a.revision) for a in stall] == [(K.ALERT_STATE_OPEN, 1), (K.ALERT_STATE_RESOLVED, 2)]
    opened, cleared = stall
    assert opened.alert_id == cleared.alert_id == f"park_stall:P:{T0 + 100_000}"
    assert opened.suspected_cause == "software or map change (shared software version 2.1.0)"
    assert opened.vehicle_id == "" and opened.park == "P" and opened.severity == K.ALERT_SEVERITY_CRITICAL
    assert opened.details["vehicles"] == "V0,V1,V2,V3"
    fourth_stop_ms = T0 + 220_000 + 3 * 50  # the park condition holds once V3 has stood 60 s
    assert 0 <= opened.event_ms - fourth_stop_ms - STALL_MS <= 1_000
    # Clears when fewer than 2 remain stalled: V2 leaves at 500 s, V0 at 600 s, V1 at 650 s.
    assert cleared.event_ms == T0 + 650_000 + 1 * 50
    # Every vehicle keeps its own stop-and-not-go alert beside the park alert.
    assert len({a.alert_id for a in kind(alerts, K.ALERT_KIND_STOP_NOT_GO)}) == 4


ALL_AT_ONCE = {"V0": (100, 600), "V1": (105, 600), "V2": (110, 600), "V3": (115, 600)}


@pytest.mark.parametrize("versions, stalls, cause", [
    ({**FLEET, "V2": "2.0.9", "V3": "2.0.9"}, BLOCKAGE, "road works or closure"),  # stalled on mixed versions
    ({**FLEET, "V7": "2.1.0"}, BLOCKAGE, "road works or closure"),                 # 2.1.0 drives fine elsewhere
    ({v: "2.1.0" for v in ALL_AT_ONCE}, ALL_AT_ONCE,                               # nobody moving to compare with
     "undetermined: every active vehicle is stalled (all on software version 2.1.0)"),
])
def test_park_stall_cause_without_a_version_only_the_stalled_share(
        versions: dict[str, str], stalls: dict[str, tuple[int, int]], cause: str) -> None:
    alerts = run(FleetMonitor(CONFIG, ClockMode.EVENT), park_stream(versions, stalls, 400))
    (opened,) = kind(alerts, K.ALERT_KIND_PARK_STALL)
    assert opened.suspected_cause == cause


@pytest.mark.parametrize("stalls", [
    {"V0": (100, 600), "V1": (130, 650), "V2": (170, 500)},                    # only 3 of 10
    {"V0": (0, 900), "V1": (100, 900), "V2": (200, 900), "V3": (400, 900)},    # starts spread over > 5 min
])
def test_no_park_stall_below_k_or_outside_one_window(stalls: dict[str, tuple[int, int]]) -> None:
    alerts = run(FleetMonitor(CONFIG, ClockMode.EVENT), park_stream(FLEET, stalls, 950))
    assert kind(alerts, K.ALERT_KIND_PARK_STALL) == []


def test_small_park_stalls_on_half_its_active_vehicles() -> None:
    versions = {"A": "1.0", "B": "1.0", "C": "1.0"}
    alerts = run(FleetMonitor(CONFIG, ClockMode.EVENT), park_stream(versions, {"A": (10, 200), "B": (20, 200)}, 250))
    (opened, cleared) = kind(alerts, K.ALERT_KIND_PARK_STALL)
    assert opened.details["stalled"] == "2" and opened.suspected_cause == "road works or closure"
    assert cleared.state == K.ALERT_STATE_RESOLVED


def test_park_stall_clears_when_stalled_vehicles_go_unheard() -> None:
    stalls = {v: (10, 900) for v in ("V0", "V1", "V2", "V3")}
    stream = park_stream(FLEET, stalls, 300, silent_from={"V1": 150, "V2": 150, "V3": 150})
    stall = kind(run(FleetMonitor(CONFIG, ClockMode.EVENT), stream), K.ALERT_KIND_PARK_STALL)
    assert [a.state for a in stall] == [K.ALERT_STATE_OPEN, K.ALERT_STATE_RESOLVED]
    stale_ms = CONFIG.park_stall.stale_after_ms
    last_heard = T0 + 149_000 + 3 * 50
    assert 0 <= stall[1].event_ms - last_heard - stale_ms <= 1_000 + CONFIG.clock.allowed_lateness_ms


# -- error bursts ----------------------------------------------------------------------------

BUSY, QUIET = ("planning", "E100"), ("perception", "E7")


def error_stream(seconds: int, bursts: list[tuple[tuple[str, str], int, int, int]], *, seed: int = 3,
                 park: str = "P", city: str = "hz", background_every_s: float = 8.0,
                 background_from_s: float = 1.0) -> list[common_pb2.Envelope]:
    """20 vehicles heartbeating every 5 s, a Poisson background of BUSY (one per
    `background_every_s` on average, from `background_from_s`) and `bursts` of
    (code, start_s, n events, over_s)."""
    rng = random.Random(seed)
    vids = [f"V{i}" for i in range(20)]
    timed: list[tuple[int, common_pb2.Envelope]] = []
    for s in range(0, seconds, 5):
        for i, vid in enumerate(vids):
            hb = common_pb2.Heartbeat(speed_mps=5.0, task_state=common_pb2.TASK_STATE_RUNNING, park=park, city=city)
            timed.append((T0 + s * 1000 + i * 10, common_pb2.Envelope(vehicle_id=vid, heartbeat=hb)))

    def error(code: tuple[str, str], at_ms: int) -> None:
        ev = common_pb2.VehicleEvent(kind=common_pb2.EVENT_KIND_ERROR_CODE, module=code[0], code=code[1])
        timed.append((at_ms, common_pb2.Envelope(vehicle_id=rng.choice(vids), event=ev)))

    t = background_from_s
    while t < seconds:
        error(BUSY, T0 + int(t * 1000))
        t += rng.expovariate(1.0 / background_every_s)
    for code, start_s, n, over_s in bursts:
        for k in range(n):
            error(code, T0 + start_s * 1000 + int(k * over_s * 1000 / n))
    timed.sort(key=lambda item: item[0])
    for i, (event_ms, env) in enumerate(timed):
        env.event_time_ms, env.message_id = event_ms, f"m{i}"
    return [env for _, env in timed]


def test_error_burst_over_baseline_fires_once_and_steady_background_never() -> None:
    stream = error_stream(7200, [(QUIET, 3600, 12, 60),    # a quiet code: 12 in a minute is a burst
                                 (BUSY, 4500, 12, 60),     # the same 12 on the busy code are within its usual
                                 (BUSY, 5400, 50, 100)])   # 50 more in 100 s are not
    alerts = kind(run(FleetMonitor(CONFIG, ClockMode.EVENT, vehicles=False), stream), K.ALERT_KIND_ERROR_BURST)
    opened = [a for a in alerts if a.state == K.ALERT_STATE_OPEN]
    cleared = [a for a in alerts if a.state == K.ALERT_STATE_RESOLVED]
    assert [(a.details["module"], a.details["code"]) for a in opened] == [QUIET, BUSY]
    assert sorted(a.alert_id for a in cleared) == sorted(a.alert_id for a in opened)
    quiet, busy = opened
    assert quiet.event_ms == T0 + 3600_000 + 9 * 5_000  # the 10th event of the burst
    assert quiet.details["count"] == "10" and quiet.park == "P" and quiet.vehicle_id == ""
    assert T0 + 5400_000 <= busy.event_ms <= T0 + 5500_000
    assert float(busy.details["baseline_per_window"]) == pytest.approx(15.0, rel=0.35)


def test_error_codes_in_the_first_minutes_are_not_judged_without_a_baseline() -> None:
    # 20 per 2 min, starting half a minute after the park's first heartbeat: early on the baseline
    # rests on a handful of events and would call the steady rate a burst.
    stream = error_stream(900, [], background_every_s=6.0, background_from_s=30.0)
    alerts = run(FleetMonitor(CONFIG, ClockMode.EVENT, vehicles=False), stream)
    assert kind(alerts, K.ALERT_KIND_ERROR_BURST) == []


def test_redelivered_error_events_count_once_and_city_scopes_work() -> None:
    monitor = FleetMonitor(CONFIG, ClockMode.EVENT, vehicles=False)
    hb = common_pb2.Heartbeat(task_state=common_pb2.TASK_STATE_RUNNING, park="", city="sz", speed_mps=3.0)
    alerts = monitor.on_heartbeat("C1", T0, hb)
    start = T0 + 600_000
    ev = common_pb2.VehicleEvent(kind=common_pb2.EVENT_KIND_ERROR_CODE, module="control", code="C9")
    for k in range(9):
        for _ in range(2):  # at-least-once delivery: every event arrives twice
            alerts += monitor.on_event("C1", start + k * 1000, ev, message_id=f"e{k}")
    assert alerts == []
    (burst,) = monitor.on_event("C1", start + 9_000, ev, message_id="e9")
    assert burst.alert_id == f"error_burst:city:sz:control/C9:{start}"
    assert (burst.park, burst.city, burst.details["count"]) == ("", "sz", "10")
    assert monitor.parks is not None and monitor.parks.unscoped_error_events == 0
    monitor.on_event("NEVER-HEARD", start, ev, message_id="x")
    assert monitor.parks.unscoped_error_events == 1


# -- state -----------------------------------------------------------------------------------


def test_park_state_round_trip_mid_stall_and_mid_burst() -> None:
    stream = park_stream(FLEET, BLOCKAGE, 800)
    for i, env in enumerate(stream[500 * 10: 500 * 10 + 12]):  # a burst of a quiet code while the park is stalled
        env_err = common_pb2.Envelope(vehicle_id="V5", event_time_ms=env.event_time_ms + 1, message_id=f"err{i}",
                                      event=common_pb2.VehicleEvent(kind=common_pb2.EVENT_KIND_ERROR_CODE,
                                                                    module="map", code="M1"))
        stream.insert(stream.index(env) + 1, env_err)
    reference = run(FleetMonitor(CONFIG, ClockMode.EVENT), stream)
    assert {a.kind for a in reference} >= {K.ALERT_KIND_PARK_STALL, K.ALERT_KIND_ERROR_BURST}

    monitor = FleetMonitor(CONFIG, ClockMode.EVENT)
    alerts = []
    for i, env in enumerate(stream):
        if i and i % 731 == 0:
            monitor = FleetMonitor.restore(CONFIG, json.loads(json.dumps(monitor.snapshot())))
        alerts += monitor.on_envelope(env)
    key = lambda a: (a.alert_id, a.revision, a.state, a.event_ms)  # noqa: E731
    assert sorted(map(key, alerts)) == sorted(map(key, reference))
