"""`fleetloop metrics`: MPS / MPD_all / MPD_resp / MPI from MetricsService (on heartbeat-ingest)."""

from __future__ import annotations

import typer

from fleetloop.commands.rpc import call, endpoint
from fleetloop.report import table

app = typer.Typer(help="MPS, MPD and MPI per 10,000 km and km per event (MetricsService)",
                  invoke_without_command=True)

METRICS = ("mps", "mpd_all", "mpd_resp", "mpi")


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
    headers = [group_by or "fleet", "km"]
    for m in METRICS:
        headers += [m.upper(), "/10k km", "km/event"]
    rows = []
    for r in response.rows:
        line: list[object] = [r.group, f"{r.km:,.1f}"]
        for m in METRICS:
            v = getattr(r, m)
            line += [f"{v.events:g}", f"{v.per_10k_km:,.1f}", f"{v.km_per_event:,.1f}" if v.events else "-"]
        rows.append(line)
    typer.echo(table(headers, rows))
