"""MetricsService: MPS / MPD_all / MPD_resp / MPI rates and intervals over gRPC (see metrics.py)."""

from __future__ import annotations

import grpc
from fleetloop.v1 import metrics_pb2, metrics_pb2_grpc
from fleetloop.warehouse import Warehouse

from services.heartbeat_ingest.metrics import GROUPS, METRICS, acompute_metrics


class MetricsApi(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse

    async def GetMetrics(self, request, context):  # noqa: N802 - gRPC method name
        if request.group_by not in GROUPS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"group_by {request.group_by!r} is not one of {sorted(GROUPS)}")
        if request.end_ms and request.end_ms <= request.start_ms:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "end_ms must be after start_ms")
        rows = await acompute_metrics(self.warehouse, request.start_ms, request.end_ms, request.group_by,
                                      request.weighted)
        return metrics_pb2.GetMetricsResponse(rows=[
            metrics_pb2.MetricsRow(group=r["group"], km=r["km"],
                                   **{m: metrics_pb2.MetricValue(**r[m]) for m in METRICS})
            for r in rows])
