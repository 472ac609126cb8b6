"""ReplayService: replay a case (publishes a request, returns the solution id to poll), get and list
solutions, list policies. Every handler is `@guarded` (fleetloop.request_checks)."""

from __future__ import annotations

import time
from typing import Protocol

import grpc
from fleetloop import tables, topics
from fleetloop.bus import Bus
from fleetloop.replay.requests import replay_request
from fleetloop.request_checks import BadRequest, guarded, offset_token, page_size, required, vehicle_id
from fleetloop.v1 import replay_service_pb2, replay_service_pb2_grpc
from fleetloop.warehouse import Warehouse

from services.replay_validator.plans import Planner, Unplannable, ValidatorConfig
from services.replay_validator.rows import VERDICT_NAMES, solution_from_json


class ReplayOwner(Protocol):
    """What the API needs of the replay-validator: its planner and configuration, the producer, the warehouse,
    and its two lookups."""

    planner: Planner
    config: ValidatorConfig
    bus: Bus
    warehouse: Warehouse

    async def cases(self, case_ids: list[str]) -> dict[str, tuple[str, dict | None]]: ...

    async def existing(self, solution_ids: list[str]) -> set[str]: ...


MAX_PAGE = 1000
DEFAULT_PAGE = 50


def list_query(request: replay_service_pb2.ListSolutionsRequest) -> tuple[str, dict]:
    """Parameterised SQL over `replay_solutions FINAL` for the request's filters (values are only bound)."""
    where, params = [], {}
    for field, column in (("case_id", "case_id"), ("vehicle_id", "vehicle_id"), ("policy", "policy")):
        if getattr(request, field):
            where.append(f"{column} = {{{field}:String}}")
            params[field] = getattr(request, field)
    if request.verdict:
        where.append("verdict = {verdict:String}")
        params["verdict"] = VERDICT_NAMES[request.verdict]
    params["limit"] = page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE) + 1  # one more: a next page?
    params["offset"] = offset_token(request.page_token)
    sql = (f"SELECT solution_json FROM {tables.SOLUTIONS} FINAL" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY requested DESC, solution_id LIMIT {limit:UInt32} OFFSET {offset:UInt64}")
    return sql, params


class ReplayApi(replay_service_pb2_grpc.ReplayServiceServicer):
    def __init__(self, service: ReplayOwner) -> None:
        self.service = service

    @guarded()
    async def ReplayCase(self, request, context):  # noqa: N802 - gRPC method name
        case_id = required("case_id", request.case_id)
        overrides = request.overrides if request.HasField("overrides") else None
        try:
            plan = self.service.planner.plan(case_id, request.policy, request.search_config, overrides)
        except Unplannable as exc:
            raise BadRequest(exc.field, exc.detail) from None
        found = await self.service.cases([case_id])
        if case_id not in found:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"case_id: no case {case_id[:80]!r}")
        _, minilog = found[case_id]
        if minilog is None or minilog["status"] != "complete":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"case_id: case {case_id!r} has no complete minilog yet "
                                f"(minilog: {minilog['status'] if minilog else 'not requested'})")
        if await self.service.existing([plan.solution_id]):
            return replay_service_pb2.ReplayCaseResponse(solution_id=plan.solution_id, already_solved=True)
        message = replay_request(case_id, requested_by=request.requested_by or "ReplayService",
                                 requested_ms=int(time.time() * 1000),  # when the client asked: wall time
                                 policy=request.policy, search_config=request.search_config, overrides=overrides)
        await self.service.bus.send(topics.REPLAY_REQUESTS, message.SerializeToString(), key=case_id.encode())
        return replay_service_pb2.ReplayCaseResponse(solution_id=plan.solution_id, request_id=message.request_id)

    @guarded()
    async def GetSolution(self, request, context):  # noqa: N802
        solution_id = required("solution_id", request.solution_id)
        found = await self.service.warehouse.aquery_dicts(
            f"SELECT solution_json FROM {tables.SOLUTIONS} FINAL WHERE solution_id = {{id:String}}",
            {"id": solution_id})
        if not found:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"solution_id: no solution {solution_id[:80]!r} (not requested, or not solved yet)")
        return solution_from_json(found[0]["solution_json"])

    @guarded()
    async def ListSolutions(self, request, context):  # noqa: N802
        vehicle_id(request.vehicle_id)
        sql, params = list_query(request)
        found = await self.service.warehouse.aquery_dicts(sql, params)
        more = len(found) == params["limit"]
        page = found[:params["limit"] - 1]
        return replay_service_pb2.ListSolutionsResponse(
            solutions=[solution_from_json(r["solution_json"]) for r in page],
            next_page_token=str(params["offset"] + len(page)) if more else "")

    @guarded()
    async def ListPolicies(self, request, context):  # noqa: N802
        config = self.service.config
        return replay_service_pb2.ListPoliciesResponse(
            policies=self.service.planner.policies(), default_policy=config.default_policy,
            search_configs=sorted(config.search_configs), default_search_config=config.default_search_config)
