"""AlertService request checks over a real gRPC server and the real Redis."""

from __future__ import annotations

import grpc
import pytest
from fleetloop.grpc_server import Servicer, start_server
from fleetloop.v1 import alerts_pb2, alerts_pb2_grpc

from services.heartbeat_ingest.alert_store import AlertStore
from services.heartbeat_ingest.alerts_api import MAX_PAGE, AlertApi

pytestmark = pytest.mark.integration


async def test_bad_pages_are_invalid_argument_with_the_field(redis_url):
    store = AlertStore(redis_url)
    server, port = await start_server([Servicer(alerts_pb2_grpc.add_AlertServiceServicer_to_server,
                                                AlertApi(store, bus=None), "fleetloop.v1.AlertService")],
                                      "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = alerts_pb2_grpc.AlertServiceStub(channel)
            await stub.ListAlerts(alerts_pb2.ListAlertsRequest(page_token="0", page_size=10))  # a good page
            for request, field in ((alerts_pb2.ListAlertsRequest(page_token="-5"), "page_token"),
                                   (alerts_pb2.ListAlertsRequest(page_token=" 7"), "page_token"),
                                   (alerts_pb2.ListAlertsRequest(page_token="x" * 5000), "page_token"),
                                   (alerts_pb2.ListAlertsRequest(page_size=MAX_PAGE + 1), "page_size")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ListAlerts(request)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert field in err.value.details() and len(err.value.details()) < 200
    finally:
        await server.stop(grace=0)
        await store.close()
