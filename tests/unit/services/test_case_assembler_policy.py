"""case-assembler pure logic: merging, deterministic ids, tier rules, the budget and Wi-Fi rules,
priority order and the upload lifecycle (no servers)."""

from __future__ import annotations

import pytest
from fleetloop.config import ConfigError
from fleetloop.v1 import cases_pb2, common_pb2, triggers_pb2, uploads_pb2
from fleetloop.vehicle.params import load_vehicle_params

from services.case_assembler import assembly
from services.case_assembler.assembly import DayUsage, VehicleLink
from services.case_assembler.policy import DEFAULT_PATH, load_policy

T0 = 1_780_293_600_000
MPS, MPD, MPI, INFO = (triggers_pb2.TRIGGER_CATEGORY_MPS, triggers_pb2.TRIGGER_CATEGORY_MPD,
                       triggers_pb2.TRIGGER_CATEGORY_MPI, triggers_pb2.TRIGGER_CATEGORY_INFO)
WIFI, CELL = common_pb2.CONNECTIVITY_WIFI, common_pb2.CONNECTIVITY_CELLULAR


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def trig(name: str, onset_s: float, *, vehicle: str = "veh-1", category: int = MPS, severity: float = 0.4,
         duration_s: float = 1.0, pre_s: float = 10.0, post_s: float = 5.0) -> triggers_pb2.TriggerEvent:
    onset = T0 + int(onset_s * 1000)
    return triggers_pb2.TriggerEvent(trigger_id=f"{vehicle}|{name}|{onset}", vehicle_id=vehicle, trigger=name,
                                     category=category, severity=severity, onset_ms=onset, peak_ms=onset,
                                     end_ms=onset + int(duration_s * 1000), window_pre_s=pre_s, window_post_s=post_s)


def link(t_s: float, connectivity: int = CELL, charging: bool = False) -> VehicleLink:
    return VehicleLink(last_heartbeat_ms=T0 + int(t_s * 1000), connectivity=connectivity, charging=charging)


def test_window_runs_from_first_pre_to_last_post_and_nearby_triggers_merge(policy):
    case = assembly.new_case(trig("hard_brake", 100), policy, T0)
    assert (case.window_start_ms, case.window_end_ms) == (T0 + 90_000, T0 + 106_000)
    takeover = trig("takeover", 110, category=MPI, severity=0.7)
    assert assembly.route(takeover, case, None, policy) == ("merge", case.case_id)
    assembly.add_trigger(case, takeover, policy, T0)
    assert (case.window_start_ms, case.window_end_ms) == (T0 + 90_000, T0 + 116_000)
    assert case.category == MPI and case.severity == pytest.approx(0.7) and case.revision == 2
    far = trig("hard_brake", 116 + policy.merge_gap_s + 10 + 1)  # its window starts 1 s beyond the gap
    action, case_id = assembly.route(far, case, None, policy)
    assert action == "new" and case_id != case.case_id


def test_case_id_is_deterministic_and_readding_a_trigger_changes_nothing(policy):
    first = trig("contact", 50, category=MPD)
    a, b = assembly.new_case(first, policy, T0), assembly.new_case(first, policy, T0 + 999)
    assert a.case_id == b.case_id == assembly.case_id_for("veh-1", first.onset_ms)
    assert assembly.case_id_for("veh-2", first.onset_ms) != a.case_id
    revision = a.revision
    assembly.add_trigger(a, first, policy, T0)
    assert a.revision == revision and len(a.triggers) == 1


def test_cooldown_folds_a_same_family_repeat_but_never_a_safety_trigger(policy):
    stuck = trig("stop_not_go", 0, duration_s=200, pre_s=30)
    case = assembly.new_case(stuck, policy, T0)
    cool = assembly.Cooldown(case.case_id, stuck.onset_ms)
    again = trig("stop_not_go", 900, duration_s=200, pre_s=30)
    assert assembly.route(again, case, cool, policy) == ("suppress", case.case_id)
    assert assembly.route(trig("stop_not_go", 1900), case, cool, policy)[0] == "new"
    contact = trig("contact", 900, category=MPD)
    assert assembly.route(contact, case, assembly.Cooldown(case.case_id, T0), policy)[0] == "new"


@pytest.mark.parametrize(("name", "category", "severity", "tiers", "replay"), [
    ("error_code", INFO, 0.3, ["microlog"], False),
    ("hard_brake", MPS, 0.4, ["microlog", "minilog"], True),
    ("planner_uncertainty", INFO, 0.5, ["microlog", "minilog"], True),
    ("takeover", MPI, 0.7, ["microlog", "minilog"], False),
    ("phantom_stop", MPS, 0.4, ["microlog", "minilog", "raw"], False),
    ("contact", MPD, 0.3, ["microlog", "minilog", "raw"], False),
    ("operator_speech", INFO, 0.9, ["microlog", "minilog"], False),
])
def test_tier_plan_follows_category_and_severity(policy, name, category, severity, tiers, replay):
    assert assembly.tier_plan([trig(name, 0, category=category, severity=severity)], policy) == (tiers, replay)


def test_heavy_tier_waits_for_wifi_or_charging(policy):
    assert assembly.admit("raw", 10**9, link(0, CELL), DayUsage(), policy) == "waiting for wifi or charging"
    assert assembly.admit("raw", 10**9, link(0, WIFI), DayUsage(), policy) == ""
    assert assembly.admit("raw", 10**9, link(0, CELL, charging=True), DayUsage(), policy) == ""
    assert assembly.admit("minilog", 10**5, link(0, CELL), DayUsage(), policy) == ""


def test_cellular_budget_and_daily_total_hold(policy):
    almost = DayUsage(cellular_bytes=policy.cellular_bytes_per_day - 1000)
    assert assembly.admit("minilog", 2000, link(0, CELL), almost, policy) == "cellular budget of the day spent"
    assert assembly.admit("minilog", 2000, link(0, WIFI), almost, policy) == ""  # Wi-Fi is not metered
    full = DayUsage(total_bytes=policy.total_bytes_per_day - 1000)
    assert assembly.admit("minilog", 2000, link(0, WIFI), full, policy) == "daily budget spent"


def test_queue_asks_most_valuable_first_within_budget_and_resets_each_day(policy):
    tight = load_policy(overrides={"budget": {"cellular_bytes_per_day": 300_000, "max_in_flight": 10}})
    low = assembly.new_case(trig("error_code", 0, category=INFO, severity=0.3), tight, T0)
    high = assembly.new_case(trig("hard_brake", 200, severity=0.9), tight, T0)
    usage = DayUsage()
    commands, changed = assembly.plan_vehicle([low, high], link(400), usage, T0 + 400_000, tight)
    asked = [(c.upload.case_id, c.upload.tier) for c in commands]
    # 16 s windows: microlog ~64 kB, minilog ~128 kB; 300 kB covers the valuable case's two tiers and
    # the low case's microlog, in value order.
    assert asked == [(high.case_id, "microlog"), (high.case_id, "minilog"), (low.case_id, "microlog")]
    assert usage.cellular_bytes <= tight.cellular_bytes_per_day
    more = assembly.new_case(trig("hard_brake", 300, severity=0.9), tight, T0)
    commands, _ = assembly.plan_vehicle([more], link(400), usage, T0 + 400_000, tight)
    assert commands == [] and more.uploads[0].wait_reason == "cellular budget of the day spent"
    next_day = link(400 + 86_400)
    commands, _ = assembly.plan_vehicle([more], next_day, usage, next_day.last_heartbeat_ms, tight)
    assert [c.upload.tier for c in commands] == ["microlog", "minilog"]


def test_raw_waits_for_wifi_while_light_tiers_go_over_cellular(policy):
    case = assembly.new_case(trig("contact", 0, category=MPD, severity=0.5), policy, T0)
    commands, _ = assembly.plan_vehicle([case], link(100), DayUsage(), T0 + 100_000, policy)
    assert [c.upload.tier for c in commands] == ["microlog", "minilog"]
    raw = next(u for u in case.uploads if u.tier == "raw")
    assert raw.status == assembly.PENDING and raw.wait_reason == "waiting for wifi or charging"
    commands, _ = assembly.plan_vehicle([case], link(200, WIFI), DayUsage(), T0 + 200_000, policy)
    assert [c.upload.tier for c in commands] == ["raw"] and not raw.metered


def test_no_request_before_the_vehicle_drove_past_the_window(policy):
    case = assembly.new_case(trig("hard_brake", 100), policy, T0)
    end_s = (case.window_end_ms - T0) / 1000
    assert assembly.plan_vehicle([case], link(end_s), DayUsage(), T0, policy)[0] == []
    ready = end_s + policy.settle_s
    assert len(assembly.plan_vehicle([case], link(ready), DayUsage(), T0, policy)[0]) == 2


def manifest_for(command: uploads_pb2.VehicleCommand, state: int, **fields) -> uploads_pb2.UploadManifest:
    up = command.upload
    return uploads_pb2.UploadManifest(schema_version=1, vehicle_id=command.vehicle_id, request_id=up.request_id,
                                      case_id=up.case_id, tier=up.tier, window_start_ms=up.window_start_ms,
                                      window_end_ms=up.window_end_ms, state=state, **fields)


def test_lifecycle_requested_uploading_complete(policy):
    case = assembly.new_case(trig("error_code", 0, category=INFO), policy, T0)
    now = T0 + 100_000
    (command,), _ = assembly.plan_vehicle([case], link(100), usage := DayUsage(), now, policy)
    assert case.status == cases_pb2.CASE_STATUS_REQUESTED
    accepted = manifest_for(command, uploads_pb2.UPLOAD_STATE_ACCEPTED)
    assert assembly.apply_manifest(case, accepted, usage, now, policy) == "applied"
    assert case.status == cases_pb2.CASE_STATUS_UPLOADING
    done = manifest_for(command, uploads_pb2.UPLOAD_STATE_COMPLETE, uri="file:///x", size_bytes=1234,
                        sha256="0" * 64, declared_bytes=1234)
    assert assembly.apply_manifest(case, done, usage, now, policy) == "applied"
    assert case.status == cases_pb2.CASE_STATUS_COMPLETE and usage.cellular_bytes == 1234
    assert assembly.apply_manifest(case, done, usage, now, policy) == "stale"  # a replayed manifest is a no-op
    assert usage.cellular_bytes == 1234


def test_unanswered_requests_are_retried_then_expire_in_event_time(policy):
    case = assembly.new_case(trig("error_code", 0, category=INFO), policy, T0)
    now = T0 + 100_000
    ids = set()
    for attempt in range(1, policy.max_attempts + 1):
        (command,), _ = assembly.plan_vehicle([case], link(now / 1000 - T0 / 1000), DayUsage(), now, policy)
        assert command.upload.attempt == attempt
        ids.add(command.upload.request_id)
        assert not assembly.expire(case, now + int(policy.answer_timeout_s * 1000), policy)
        now += int(policy.answer_timeout_s * 1000) + 1
        assert assembly.expire(case, now, policy)
    assert len(ids) == policy.max_attempts
    assert case.uploads[0].status == assembly.EXPIRED and case.status == cases_pb2.CASE_STATUS_EXPIRED


def test_vehicle_failure_retries_only_when_retryable(policy):
    case = assembly.new_case(trig("error_code", 0, category=INFO), policy, T0)
    (command,), _ = assembly.plan_vehicle([case], link(100), DayUsage(), T0 + 100_000, policy)
    retry = manifest_for(command, uploads_pb2.UPLOAD_STATE_FAILED, error="busy", retryable=True)
    assembly.apply_manifest(case, retry, None, T0 + 100_000, policy)
    assert case.uploads[0].status == assembly.PENDING
    (command,), _ = assembly.plan_vehicle([case], link(101), DayUsage(), T0 + 101_000, policy)
    gone = manifest_for(command, uploads_pb2.UPLOAD_STATE_FAILED, error="window left the ring buffer")
    assembly.apply_manifest(case, gone, None, T0 + 101_000, policy)
    assert case.uploads[0].status == assembly.FAILED and case.status == cases_pb2.CASE_STATUS_FAILED


def test_a_late_trigger_that_grows_the_window_asks_again(policy):
    case = assembly.new_case(trig("hard_brake", 100), policy, T0)
    (first, _), _ = assembly.plan_vehicle([case], link(200), DayUsage(), T0 + 200_000, policy)
    assembly.add_trigger(case, trig("takeover", 112, category=MPI, severity=0.7), policy, T0 + 200_000)
    assert all(u.status == assembly.PENDING and u.attempt == 0 for u in case.uploads)
    stale = manifest_for(first, uploads_pb2.UPLOAD_STATE_COMPLETE, uri="file:///x", size_bytes=1, sha256="0" * 64)
    assert assembly.apply_manifest(case, stale, None, T0 + 200_000, policy) == "stale"
    (again, _), _ = assembly.plan_vehicle([case], link(200), DayUsage(), T0 + 200_000, policy)
    assert again.upload.window_end_ms > first.upload.window_end_ms
    assert again.upload.request_id != first.upload.request_id


def test_adjudication_is_a_new_revision_carrying_verdict_and_responsibility(policy):
    case = assembly.new_case(trig("hard_brake", 0, severity=0.5), policy, T0)
    revision = case.revision
    assembly.adjudicate(case, cases_pb2.Adjudication(verdict=cases_pb2.VERDICT_DANGEROUS,
                                                     responsibility=cases_pb2.RESPONSIBILITY_OURS, reviewer="ana"))
    assert case.revision == revision + 1
    assert (case.adjudication.verdict, case.adjudication.responsibility) == (cases_pb2.VERDICT_DANGEROUS,
                                                                             cases_pb2.RESPONSIBILITY_OURS)


def test_raw_tier_reserves_the_vehicles_declared_raw_volume(policy):
    # One statement of the ~4 GB per vehicle-minute: vehicle.yaml; the policy follows it.
    declared = load_vehicle_params()
    assert policy.tier("raw").estimate_bytes_per_s == declared.raw_bytes_per_minute / 60
    half = declared.model_copy(update={"raw_bytes_per_minute": declared.raw_bytes_per_minute / 2})
    assert load_policy(vehicle=half).tier("raw").estimate_bytes_per_s == policy.tier("raw").estimate_bytes_per_s / 2
    assert load_policy(vehicle=half).tier("minilog") == policy.tier("minilog")  # a stated estimate stays


def test_bad_policy_value_names_file_and_key_path(tmp_path):
    with pytest.raises(ConfigError, match=r"policy\.yaml: budget\.max_in_flight: .*greater than or equal to 1"):
        load_policy(overrides={"budget": {"max_in_flight": 0}})
    with pytest.raises(ConfigError, match=r"policy\.yaml: lifecycle\.answer_timeout_minutes: unknown key"):
        load_policy(overrides={"lifecycle": {"answer_timeout_minutes": 10}})
    with pytest.raises(ConfigError, match=r"category_bonus\.MPX: not an allowed key: .*\(got .MPX.\)"):
        load_policy(overrides={"priority": {"category_bonus": {"MPX": 1.0}}})
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT_PATH.read_text().replace("tier: raw", "tier: huge"))
    with pytest.raises(ConfigError, match=rf"{path}: \(top level\): .*unknown tier 'huge'"):
        load_policy(path)
