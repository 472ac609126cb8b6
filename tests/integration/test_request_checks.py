"""The one request-validation path (fleetloop.request_checks): its checks as properties
(hypothesis), and `guarded` handlers over a real gRPC server, Redis and chDB answering every bad
request with INVALID_ARGUMENT / RESOURCE_EXHAUSTED and a message naming the field, and an
unexpected failure with INTERNAL, never UNKNOWN (issue 11 §4/§5)."""

from __future__ import annotations

import grpc
import pytest
from fleetloop import request_checks as rc
from fleetloop.codec import LIMITS
from fleetloop.grpc_server import Servicer, start_server
from fleetloop.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    case_service_pb2,
    fleet_service_pb2,
    fleet_service_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
)
from hypothesis import given
from hypothesis import strategies as st

from services.case_assembler.api import list_query
from services.heartbeat_ingest.alert_store import AlertStore
from services.heartbeat_ingest.alerts_api import AlertApi
from services.heartbeat_ingest.api import FleetApi
from services.heartbeat_ingest.live_state import LiveState
from services.heartbeat_ingest.metrics_api import MetricsApi
from services.heartbeat_ingest.service import MIGRATIONS


@given(st.integers(min_value=-2**40, max_value=2**40))
def test_page_size_is_default_or_within_bounds_or_refused(value):
    try:
        got = rc.page_size(value, default=100, maximum=1000)
    except rc.BadRequest as exc:
        assert exc.field == "page_size" and not 0 <= value <= 1000
    else:
        assert got == (100 if value == 0 else value) and 1 <= got <= 1000


@given(st.text(max_size=30))
def test_an_offset_token_is_plain_digits_or_refused(token):
    try:
        got = rc.offset_token(token)
    except rc.BadRequest as exc:
        assert exc.field == "page_token"
        assert not (token.isascii() and token.isdigit() and len(token) <= rc.MAX_OFFSET_TOKEN_DIGITS)
    else:
        assert got == (int(token) if token else 0) and got >= 0


@given(st.integers(min_value=-2**63, max_value=2**63 - 1), st.integers(min_value=-2**63, max_value=2**63 - 1))
def test_a_window_is_ordered_and_inside_the_time_range_or_refused(start, end):
    try:
        lo, hi = rc.window(start, end)
    except rc.BadRequest as exc:
        assert exc.field in ("start_ms", "end_ms")
    else:
        assert 0 <= lo < hi <= LIMITS.time.max_event_ms
        assert lo == start and (hi == end or end == 0)


@given(st.text(max_size=100))
def test_a_vehicle_id_matches_the_fleet_syntax_or_is_refused(value):
    try:
        assert rc.vehicle_id(value) == value
    except rc.BadRequest as exc:
        assert exc.field == "vehicle_id" and value and not LIMITS.strings.vehicle_id.fullmatch(value)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_list_cases_limit_is_within_bounds_or_refused(limit):
    try:
        _, params = list_query(case_service_pb2.ListCasesRequest(limit=limit))
    except rc.BadRequest as exc:
        assert exc.field == "limit" and limit > 10_000
    else:
        assert params["limit"] == (limit or 100)


@pytest.fixture
async def channel(redis_client, redis_url, warehouse):
    warehouse.migrate("heartbeat_ingest", MIGRATIONS)
    live = LiveState(redis_client)
    broken = FleetApi(None, live, offline_after_s=30)  # no warehouse: its queries fail unexpectedly
    server, port = await start_server([
        Servicer(fleet_service_pb2_grpc.add_FleetServiceServicer_to_server, FleetApi(warehouse, live, 30),
                 "fleetloop.v1.FleetService"),
        Servicer(alerts_pb2_grpc.add_AlertServiceServicer_to_server, AlertApi(AlertStore(redis_url), None),
                 "fleetloop.v1.AlertService"),
        Servicer(metrics_pb2_grpc.add_MetricsServiceServicer_to_server, MetricsApi(warehouse),
                 "fleetloop.v1.MetricsService"),
    ], "127.0.0.1:0")
    broken_server, broken_port = await start_server([
        Servicer(fleet_service_pb2_grpc.add_FleetServiceServicer_to_server, broken, "fleetloop.v1.FleetService"),
    ], "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch, \
            grpc.aio.insecure_channel(f"127.0.0.1:{broken_port}") as broken_ch:
        yield ch, broken_ch
    await server.stop(grace=None)
    await broken_server.stop(grace=None)


BAD_REQUESTS = [
    ("FleetService", "GetVehicle", fleet_service_pb2.GetVehicleRequest(vehicle_id="veh\n0001"), "vehicle_id"),
    ("FleetService", "GetVehicle", fleet_service_pb2.GetVehicleRequest(), "vehicle_id: is required"),
    ("FleetService", "ListVehicles", fleet_service_pb2.ListVehiclesRequest(park="p" * 10_000), "park holds 10000"),
    ("FleetService", "ListVehicles", fleet_service_pb2.ListVehiclesRequest(status=300), "status=300"),
    ("FleetService", "FleetSummary", fleet_service_pb2.FleetSummaryRequest(group_by="park; DROP"), "group_by"),
    ("FleetService", "FleetSummary", fleet_service_pb2.FleetSummaryRequest(start_ms=5, end_ms=4), "end_ms"),
    ("FleetService", "FleetSummary", fleet_service_pb2.FleetSummaryRequest(start_ms=-1), "start_ms"),
    ("MetricsService", "GetMetrics", metrics_pb2.GetMetricsRequest(group_by="nope"), "group_by"),
    ("MetricsService", "GetMetrics", metrics_pb2.GetMetricsRequest(end_ms=2**62), "end_ms"),
    ("AlertService", "ListAlerts", alerts_pb2.ListAlertsRequest(page_size=5000), "page_size"),
    ("AlertService", "ListAlerts", alerts_pb2.ListAlertsRequest(page_token="-5"), "page_token"),
    ("AlertService", "ListAlerts", alerts_pb2.ListAlertsRequest(states=[1] * 50), "states holds 50 items"),
    ("AlertService", "ListAlerts", alerts_pb2.ListAlertsRequest(vehicle_id="x" * 65), "vehicle_id"),
    ("AlertService", "AcknowledgeAlert", alerts_pb2.AcknowledgeAlertRequest(alert_id="a"), "actor: is required"),
    ("AlertService", "AcknowledgeAlert", alerts_pb2.AcknowledgeAlertRequest(alert_id="a", actor="me",
                                                                          note="n" * 5000), "note holds 5000"),
]
RESPONSES = {"GetVehicle": fleet_service_pb2.VehicleState, "ListVehicles": fleet_service_pb2.ListVehiclesResponse,
             "FleetSummary": fleet_service_pb2.FleetSummaryResponse, "GetMetrics": metrics_pb2.GetMetricsResponse,
             "ListAlerts": alerts_pb2.ListAlertsResponse, "AcknowledgeAlert": alerts_pb2.Alert}


def rpc(channel, service: str, method: str):
    return channel.unary_unary(f"/fleetloop.v1.{service}/{method}", request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=RESPONSES[method].FromString)


@pytest.mark.integration
async def test_every_bad_request_is_invalid_argument_naming_its_field(channel):
    ch, _ = channel
    for service, method, request, words in BAD_REQUESTS:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rpc(ch, service, method)(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value.details())
        assert words in err.value.details(), (method, err.value.details())


@pytest.mark.integration
async def test_an_unexpected_failure_is_internal_with_a_message_not_unknown(channel):
    _, broken = channel
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rpc(broken, "FleetService", "FleetSummary")(fleet_service_pb2.FleetSummaryRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error (AttributeError); see the service log"


@pytest.mark.integration
async def test_good_requests_still_answer(channel):
    ch, _ = channel
    reply = await rpc(ch, "FleetService", "FleetSummary")(fleet_service_pb2.FleetSummaryRequest(group_by="park"),
                                                          timeout=30)
    assert isinstance(reply, fleet_service_pb2.FleetSummaryResponse)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rpc(ch, "FleetService", "GetVehicle")(fleet_service_pb2.GetVehicleRequest(vehicle_id="veh-9999"),
                                                    timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the handler's own abort passes through


@pytest.mark.integration
async def test_the_miner_refuses_oversized_repeated_fields_and_long_expressions(warehouse):
    from fleetloop.config import load_yaml
    from fleetloop.labels import load_taxonomy
    from fleetloop.v1 import miner_pb2, miner_pb2_grpc

    from services.miner.api import MinerConfig, make_api
    from services.miner.service import CONFIG

    api = make_api(warehouse, load_taxonomy(), load_yaml(CONFIG, MinerConfig))
    server, port = await start_server([Servicer(miner_pb2_grpc.add_MinerServiceServicer_to_server, api,
                                                "fleetloop.v1.MinerService")], "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = miner_pb2_grpc.MinerServiceStub(ch)
            for call, request, words in [
                    (stub.Count, miner_pb2.MineRequest(expression="clear", parks=["p"] * 1001), "parks holds 1001"),
                    (stub.Count, miner_pb2.MineRequest(expression="clear | " * 2000), "expression holds"),
                    (stub.Distribution, miner_pb2.DistributionRequest(group_by=["clear"] * 17), "group_by holds 17"),
                    (stub.Curriculum, miner_pb2.CurriculumRequest(yaml="x" * 70_000), "yaml holds 70000")]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(request, timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
                assert words in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Mine(miner_pb2.MineRequest(expression="clear", vehicle_ids=["veh-1"] * 10_001),
                                         timeout=30):
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "vehicle_ids holds 10001" in err.value.details()
    finally:
        await server.stop(grace=None)
