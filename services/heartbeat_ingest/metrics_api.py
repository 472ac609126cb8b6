"""MetricsService: MPS / MPD_all / MPD_resp / MPI rates and intervals over gRPC (see metrics.py)."""

from __future__ import annotations

from fleetloop.request_checks import guarded, one_of, window
from fleetloop.v1 import metrics_pb2, metrics_pb2_grpc
from fleetloop.warehouse import Warehouse

from services.heartbeat_ingest.metrics import GROUPS, METRICS, acompute_metrics


class MetricsApi(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse

    @guarded()
    async def GetMetrics(self, request, context):  # noqa: N802 - gRPC method name
        return await self.metrics(request)

    async def metrics(self, request: metrics_pb2.GetMetricsRequest) -> metrics_pb2.GetMetricsResponse:
        """The metrics rows of `request` (what GetMetrics answers; in-process callers use this)."""
        one_of("group_by", request.group_by, GROUPS)
        window(request.start_ms, request.end_ms)
        rows = await acompute_metrics(self.warehouse, request.start_ms, request.end_ms, request.group_by,
                                      request.weighted)
        return metrics_pb2.GetMetricsResponse(rows=[
            metrics_pb2.MetricsRow(group=r["group"], km=r["km"],
                                   **{m: metrics_pb2.MetricValue(**r[m]) for m in METRICS})
            for r in rows])
