"""The replay-validator's pure parts: deterministic request and solution ids, the request decoder's
refusals, plans (policy, named budget, overrides) and their errors, the verdict rule and the row."""

from __future__ import annotations

import math

import pytest
from fleetloop.codec.rejected import Rejected
from fleetloop.replay.requests import decode_replay_request, replay_request, solution_id
from fleetloop.v1 import replay_service_pb2

from services.replay_validator.plans import Planner, Unplannable, load_validator_config
from services.replay_validator.rows import (
    SOLUTION_COLUMNS,
    VERDICT_NAMES,
    solution_from_json,
    solution_json,
    solution_row,
    verdict_of,
)

Verdict = replay_service_pb2.SolutionVerdict
PLANNER = Planner(load_validator_config())


def request(**kw) -> replay_service_pb2.ReplayRequest:
    return replay_request(kw.pop("case_id", "case-1"), requested_by="test", requested_ms=1_000, **kw)


def test_request_id_depends_on_what_is_asked_not_on_who_or_when():
    a = replay_request("case-1", requested_by="case-assembler", requested_ms=1)
    b = replay_request("case-1", requested_by="ana", requested_ms=99)
    assert a.request_id == b.request_id and len(a.request_id) == 32
    assert request(policy="logged@1").request_id != a.request_id
    assert request(search_config="full").request_id != a.request_id
    quick = replay_service_pb2.SearchOverrides(iterations=1)
    assert request(overrides=quick).request_id != a.request_id
    assert request(overrides=replay_service_pb2.SearchOverrides()).request_id == a.request_id  # empty = none


def test_decoder_round_trips_a_request_keyed_by_its_case():
    sent = request(policy="rule@1", overrides=replay_service_pb2.SearchOverrides(method="mppi"))
    assert decode_replay_request(sent.SerializeToString(), b"case-1") == sent


@pytest.mark.parametrize("value, key, reason", [
    (b"\xff\xfe garbage", b"case-1", "decode_error"),
    (replay_service_pb2.ReplayRequest(case_id="case-1").SerializeToString(), b"case-1", "unknown_schema_version"),
    (replay_service_pb2.ReplayRequest(schema_version=1).SerializeToString(), b"", "missing_field"),
    (request().SerializeToString(), b"case-2", "key_mismatch"),
    (request(policy="rule").SerializeToString(), b"case-1", "bad_policy"),
    (request(case_id="c" * 500).SerializeToString(), b"c" * 500, "oversized_field"),
    (request(overrides=replay_service_pb2.SearchOverrides(method="genetic")).SerializeToString(), b"case-1",
     "bad_overrides"),
    (request(overrides=replay_service_pb2.SearchOverrides(candidates_per_iteration=0)).SerializeToString(),
     b"case-1", "bad_overrides"),
    (None, b"case-1", "tombstone"),
])
def test_decoder_refuses_malformed_requests_with_a_reason(value, key, reason):
    with pytest.raises(Rejected) as refused:
        decode_replay_request(value, key)
    assert refused.value.reason == reason


def test_plan_defaults_and_solution_id_follow_the_effective_search_section():
    default = PLANNER.plan("case-1", "", "", None)
    config = PLANNER.config
    assert (default.policy, default.search_config) == (config.default_policy, config.default_search_config)
    # the same budget asked by name or by overrides is the same solution
    fleet = dict(config.search_configs[config.default_search_config])
    same = PLANNER.plan("case-1", config.default_policy, "full", replay_service_pb2.SearchOverrides(**fleet))
    assert same.solution_id == default.solution_id and same.search_config_version == default.search_config_version
    assert PLANNER.plan("case-1", "logged@1", "", None).solution_id != default.solution_id
    assert PLANNER.plan("case-2", "", "", None).solution_id != default.solution_id
    assert PLANNER.plan("case-1", "", "full", None).solution_id != default.solution_id
    assert default.solution_id == solution_id("case-1", default.policy, default.search_config_version)


@pytest.mark.parametrize("policy, search_config, overrides, reason, field", [
    ("bc@99", "", None, "unknown_policy", "policy"),
    ("", "enormous", None, "unknown_search_config", "search_config"),
    ("", "", replay_service_pb2.SearchOverrides(iterations=10_000), "bad_overrides", "overrides.iterations"),
    ("", "", replay_service_pb2.SearchOverrides(candidates_per_iteration=10**6), "bad_overrides",
     "overrides.candidates_per_iteration"),
])
def test_unplannable_requests_name_reason_and_field(policy, search_config, overrides, reason, field):
    with pytest.raises(Unplannable) as refused:
        PLANNER.plan("case-1", policy, search_config, overrides)
    assert (refused.value.reason, refused.value.field) == (reason, field)


def test_verdict_rule():
    assert verdict_of("baseline", 1.0, 0.5) == Verdict.SOLUTION_VERDICT_BASELINE_STANDS
    assert verdict_of("search", 0.5, 0.5) == Verdict.SOLUTION_VERDICT_IMPROVED
    assert verdict_of("proposal", 0.25, 0.5) == Verdict.SOLUTION_VERDICT_FRAGILE
    assert verdict_of("policy", None, 0.5) == Verdict.SOLUTION_VERDICT_IMPROVED  # not re-validated


def test_solution_row_and_json_round_trip_nan_terms():
    solution = replay_service_pb2.Solution(
        solution_id="s1", case_id="case-1", vehicle_id="veh-1", verdict=Verdict.SOLUTION_VERDICT_FRAGILE,
        terms=[replay_service_pb2.TermScore(name="ttc", baseline=2.0, solution=0.5),
               replay_service_pb2.TermScore(name="progress", baseline=math.nan, solution=math.nan)],
        triggers_removed={"hard_brake": 1}, requested_ms=1_700_000_000_000)
    row = dict(zip(SOLUTION_COLUMNS, solution_row(solution), strict=True))
    assert row["verdict"] == VERDICT_NAMES[Verdict.SOLUTION_VERDICT_FRAGILE] == "fragile"
    assert row["baseline_terms"]["ttc"] == 2.0 and math.isnan(row["solution_terms"]["progress"])
    back = solution_from_json(solution_json(solution))
    assert back.terms[0] == solution.terms[0] and math.isnan(back.terms[1].baseline)


def test_case_assembler_requests_a_replay_once_a_marked_case_has_its_minilog():
    from fleetloop.v1 import cases_pb2

    from services.case_assembler.service import replay_request_for

    case = cases_pb2.Case(case_id="case-1", vehicle_id="veh-1", replay_queued=True)
    minilog = case.uploads.add(tier="minilog", status=cases_pb2.UPLOAD_STATUS_UPLOADING)
    assert replay_request_for(case) is None
    minilog.status, minilog.updated_ms = cases_pb2.UPLOAD_STATUS_COMPLETE, 5_000
    first = replay_request_for(case)
    assert (first.case_id, first.requested_by, first.requested_ms) == ("case-1", "case-assembler", 5_000)
    case.revision += 1  # a later revision (raw uploaded, a verdict) asks the same request again
    assert replay_request_for(case) == first
    assert decode_replay_request(first.SerializeToString(), b"case-1") == first
    case.replay_queued = False
    assert replay_request_for(case) is None
