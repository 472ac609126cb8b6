"""Replay requests and solution ids (`protos/fleetloop/v1/replay_service.proto`): built by whoever asks
for a replay (the case-assembler, ReplayService, a client), decoded and checked by the replay-validator.

Both ids are deterministic, so asking twice, or a batch replayed after a crash, makes the same request
and the same solution: `request_id` hashes what was asked (case, policy, configuration name, overrides),
`solution_id` what was solved (case, policy version, effective search-section version). Pure: no torch.
"""

from __future__ import annotations

import hashlib
import re

from fleetloop import topics
from fleetloop.codec.rejected import Rejected, check_fields, check_size, parse
from fleetloop.v1 import replay_service_pb2

SCHEMA_VERSION = 1
POLICY_SPEC = re.compile(r"[a-z][a-z0-9_]*@[0-9]+")  # name@version (fleetloop.replay.policies.parse_spec)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def request_id(request: replay_service_pb2.ReplayRequest) -> str:
    """hash(case_id, policy, search_config, overrides) of `request` (its own request_id left out)."""
    overrides = request.overrides.SerializeToString(deterministic=True) if request.HasField("overrides") else b""
    return _digest("request", request.case_id, request.policy, request.search_config, overrides.hex())


def replay_request(case_id: str, *, requested_by: str, requested_ms: int, policy: str = "",
                   search_config: str = "",
                   overrides: replay_service_pb2.SearchOverrides | None = None) -> replay_service_pb2.ReplayRequest:
    """A ReplayRequest with its deterministic request id; "" policy / search_config = the validator's default."""
    request = replay_service_pb2.ReplayRequest(
        schema_version=SCHEMA_VERSION, case_id=case_id, policy=policy, search_config=search_config,
        requested_by=requested_by, requested_ms=requested_ms)
    if overrides is not None and overrides.ListFields():
        request.overrides.CopyFrom(overrides)
    request.request_id = request_id(request)
    return request


def solution_id(case_id: str, policy: str, search_config_version: str) -> str:
    """The id of the solution of one case x policy version x effective search configuration."""
    return _digest("solution", case_id, policy, search_config_version)


def decode_replay_request(value: bytes | None, key: bytes | None) -> replay_service_pb2.ReplayRequest:
    """A ReplayRequest from loop.replay.requests.v1, checked; raises Rejected: decode_error,
    unknown_schema_version, missing_field (case_id), key_mismatch (key is not the case id), bad_policy
    (not name@version), oversized_field / out_of_range (limits.yaml), bad_overrides (a zero budget)."""
    request = parse(replay_service_pb2.ReplayRequest(), check_size(topics.REPLAY_REQUESTS, value), "ReplayRequest")
    if request.schema_version != SCHEMA_VERSION:
        raise Rejected("unknown_schema_version", f"schema_version={request.schema_version}")
    if not request.case_id:
        raise Rejected("missing_field", "case_id is required")
    check_fields(request)
    if key is not None and key != request.case_id.encode():
        raise Rejected("key_mismatch", f"key {key[:80]!r} != case_id {request.case_id!r}")
    if request.policy and not POLICY_SPEC.fullmatch(request.policy):
        raise Rejected("bad_policy", f"policy {request.policy[:80]!r} is not name@version")
    o = request.overrides
    if o.HasField("candidates_per_iteration") and o.candidates_per_iteration == 0:
        raise Rejected("bad_overrides", "overrides.candidates_per_iteration must be at least 1")
    if o.HasField("method") and o.method not in ("cem", "mppi"):
        raise Rejected("bad_overrides", f"overrides.method {o.method[:40]!r} is neither 'cem' nor 'mppi'")
    return request


def search_overrides(overrides: replay_service_pb2.SearchOverrides) -> dict[str, object]:
    """The set fields of `overrides` as a `search:` section patch."""
    return {f.name: value for f, value in overrides.ListFields()}
