"""`fleetloop metrics`: MPS / MPD_all / MPD_resp / MPI from MetricsService (on heartbeat-ingest)."""

from __future__ import annotations

import typer

from fleetloop.commands.rpc import call, endpoint
from fleetloop.report import metrics_table

app = typer.Typer(help="MPS, MPD and MPI per 10,000 km and km per event (MetricsService)",
                  invoke_without_command=True)


@app.callback()
def metrics(group_by: str = typer.Option("", "--group-by", help="day, week, vehicle, park, city, road_type, "
                                                               "software_version, or '' for the fleet"),
            start_ms: int = typer.Option(0, help="event time from, epoch ms UTC"),
            end_ms: int = typer.Option(0, help="event time until (exclusive); 0 = open"),
            weighted: bool = typer.Option(False, help="sum trigger weights instead of counting events")) -> None:
    """Print the metrics table, one row per group."""
    from fleetloop.v1 import metrics_pb2, metrics_pb2_grpc

    response = call(endpoint("FLEET_GRPC"), metrics_pb2_grpc.MetricsServiceStub, "GetMetrics",
                    metrics_pb2.GetMetricsRequest(start_ms=start_ms, end_ms=end_ms, group_by=group_by,
                                                  weighted=weighted))
    typer.echo(metrics_table(response, group_by))
