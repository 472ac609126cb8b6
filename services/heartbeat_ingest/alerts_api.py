"""AlertService: list, acknowledge and resolve fleet alerts (lifecycle kept in Redis)."""

from __future__ import annotations

import time

import grpc
from fleetloop import topics
from fleetloop.bus import Bus
from fleetloop.monitors import AlertTransitionError
from fleetloop.request_checks import guarded, offset_token, page_size, required, vehicle_id
from fleetloop.v1 import alerts_pb2, alerts_pb2_grpc

from services.heartbeat_ingest.alert_store import AlertStore

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def matches(alert: alerts_pb2.Alert, req: alerts_pb2.ListAlertsRequest) -> bool:
    return ((not req.states or alert.state in req.states)
            and (not req.kinds or alert.kind in req.kinds)
            and alert.severity >= req.min_severity
            and (not req.park or alert.park == req.park)
            and (not req.city or alert.city == req.city)
            and (not req.vehicle_id or alert.vehicle_id == req.vehicle_id)
            and alert.event_ms >= req.since_ms
            and (not req.until_ms or alert.event_ms < req.until_ms))


class AlertApi(alerts_pb2_grpc.AlertServiceServicer):
    def __init__(self, store: AlertStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus

    @guarded(repeated_max={"states": len(alerts_pb2.AlertState.values()),
                           "kinds": len(alerts_pb2.AlertKind.values())})
    async def ListAlerts(self, request, context):  # noqa: N802 - gRPC method name
        page = page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE)
        offset = offset_token(request.page_token)
        vehicle_id(request.vehicle_id)
        out = alerts_pb2.ListAlertsResponse()
        total = await self.store.count()
        # Scan the newest-first index in chunks until the page is full (filters are applied here).
        while offset < total and len(out.alerts) < page:
            chunk = await self.store.newest(MAX_PAGE, offset)
            for alert in chunk:
                offset += 1
                if matches(alert, request):
                    out.alerts.append(alert)
                    if len(out.alerts) == page:
                        break
            if not chunk:
                break
        out.next_page_token = str(offset) if offset < total else ""
        return out

    async def _transition(self, request, context, action):
        required("actor", request.actor)
        required("alert_id", request.alert_id)
        try:
            alert = await action(request.alert_id, request.actor, int(time.time() * 1000), request.note)
        except AlertTransitionError as err:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        if alert is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no alert {request.alert_id!r}")
        await self.bus.send(topics.ALERTS, alert.SerializeToString(), key=alert.alert_id.encode())
        return alert

    @guarded()
    async def AcknowledgeAlert(self, request, context):  # noqa: N802
        return await self._transition(request, context, self.store.acknowledge)

    @guarded()
    async def ResolveAlert(self, request, context):  # noqa: N802
        return await self._transition(request, context, self.store.resolve)
