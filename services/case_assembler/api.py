"""CaseService: get, list with filters, adjudicate and export cases."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Protocol

import grpc
from fleetloop.request_checks import guarded, one_of, page_size, required, vehicle_id, window
from fleetloop.v1 import case_service_pb2, case_service_pb2_grpc, cases_pb2
from fleetloop.vehicle.objectstore import ObjectStore
from fleetloop.warehouse import Warehouse

from services.case_assembler.bundle import build_bundle
from services.case_assembler.rows import case_from_json


class CaseOwner(Protocol):
    """What the API needs of the case-assembler: the cases it holds and their adjudication."""

    async def case(self, case_id: str) -> cases_pb2.Case | None: ...

    async def adjudicate(self, case_id: str, adjudication: cases_pb2.Adjudication) -> cases_pb2.Case | None: ...


MAX_LIST = 10_000
TIER_STATUSES = ("pending", "requested", "uploading", "complete", "expired", "failed")


def list_query(request: case_service_pb2.ListCasesRequest) -> tuple[str, dict]:
    """Parameterised SQL over `cases FINAL` for the request's filters (client values are only bound)."""
    where, params = [], {}
    if request.vehicle_id:
        where.append("vehicle_id = {vehicle:String}")
        params["vehicle"] = request.vehicle_id
    if request.start_ms:
        where.append("window_end >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')")
        params["start_ms"] = request.start_ms
    if request.end_ms:
        where.append("window_start < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')")
        params["end_ms"] = request.end_ms
    if request.trigger:
        where.append("has(triggers, {trigger:String})")
        params["trigger"] = request.trigger
    if request.tier_status:
        where.append("has(mapValues(tier_status), {tier_status:String})")
        params["tier_status"] = request.tier_status
    if request.category:
        where.append("category = {category:UInt8}")
        params["category"] = request.category
    if request.status:
        where.append("status = {status:UInt8}")
        params["status"] = request.status
    params["limit"] = page_size(request.limit, default=100, maximum=MAX_LIST, field="limit")
    sql = ("SELECT case_json FROM cases FINAL" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY window_start DESC, case_id LIMIT {limit:UInt32}")
    return sql, params


class CaseApi(case_service_pb2_grpc.CaseServiceServicer):
    def __init__(self, service: CaseOwner, warehouse: Warehouse, store: ObjectStore, export_dir: Path) -> None:
        self.service = service
        self.warehouse = warehouse
        self.store = store
        self.export_dir = export_dir

    async def _case(self, case_id: str, context) -> cases_pb2.Case:
        case = await self.service.case(case_id) if case_id else None
        if case is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no case {case_id!r}")
        return case

    @guarded()
    async def GetCase(self, request, context):  # noqa: N802 - gRPC method name
        return await self._case(request.case_id, context)

    @guarded()
    async def ListCases(self, request, context):  # noqa: N802
        if request.tier_status:
            one_of("tier_status", request.tier_status, TIER_STATUSES)
        window(request.start_ms, request.end_ms)
        vehicle_id(request.vehicle_id)
        sql, params = list_query(request)
        found = await self.warehouse.aquery_dicts(sql, params)
        return case_service_pb2.ListCasesResponse(cases=[case_from_json(r["case_json"]) for r in found])

    @guarded()
    async def AdjudicateCase(self, request, context):  # noqa: N802
        required("verdict", request.verdict)
        required("reviewer", request.reviewer)
        required("case_id", request.case_id)
        adjudication = cases_pb2.Adjudication(
            verdict=request.verdict, responsibility=request.responsibility, reviewer=request.reviewer,
            note=request.note, adjudicated_ms=int(time.time() * 1000))  # when the human decided: wall time
        case = await self.service.adjudicate(request.case_id, adjudication)
        if case is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no case {request.case_id!r}")
        return case

    @guarded()
    async def ExportCaseBundle(self, request, context):  # noqa: N802
        case = await self._case(request.case_id, context)
        data, names = await asyncio.get_running_loop().run_in_executor(None, build_bundle, case, self.store)
        path = self.export_dir / f"{case.case_id}.zip"
        await asyncio.get_running_loop().run_in_executor(None, _write, path, data)
        return case_service_pb2.ExportCaseBundleResponse(uri=path.resolve().as_uri(), size_bytes=len(data),
                                                         files=names, bundle=data if request.inline else b"")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)
