"""`fleetloop alerts`: list, acknowledge and resolve fleet alerts (AlertService on heartbeat-ingest)."""

from __future__ import annotations

import time

import typer

from fleetloop.commands.rpc import call, endpoint
from fleetloop.report import alerts_report

app = typer.Typer(help="Fleet alerts: list, acknowledge, resolve (AlertService)", no_args_is_help=True)


def _call(method: str, request):
    """One AlertService call on heartbeat-ingest; a failure is one line and exit code 2."""
    from fleetloop.v1 import alerts_pb2_grpc

    return call(endpoint("FLEET_GRPC"), alerts_pb2_grpc.AlertServiceStub, method, request)


@app.command("list")
def list_alerts(state: list[str] = typer.Option([], help="open, acknowledged, resolved (repeatable)"),
                kind: list[str] = typer.Option([], help="offline, recovered, stop_not_go, park_stall, error_burst"),
                park: str = typer.Option(""), vehicle: str = typer.Option(""),
                page_size: int = typer.Option(100)) -> None:
    """Alerts, newest first, filtered."""
    from fleetloop.v1 import alerts_pb2

    try:
        states = [alerts_pb2.AlertState.Value(f"ALERT_STATE_{s.upper()}") for s in state]
        kinds = [alerts_pb2.AlertKind.Value(f"ALERT_KIND_{k.upper()}") for k in kind]
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    response = _call("ListAlerts", alerts_pb2.ListAlertsRequest(
        states=states, kinds=kinds, park=park, vehicle_id=vehicle, page_size=page_size))
    typer.echo(alerts_report(list(response.alerts)))
    if response.next_page_token:
        typer.echo(f"(more: page token {response.next_page_token})")


@app.command()
def ack(alert_id: str, actor: str = typer.Option(..., help="who takes it"), note: str = typer.Option("")) -> None:
    """OPEN -> ACKNOWLEDGED."""
    from fleetloop.v1 import alerts_pb2

    alert = _call("AcknowledgeAlert", alerts_pb2.AcknowledgeAlertRequest(alert_id=alert_id, actor=actor,
                                                                               note=note))
    typer.echo(f"{alert.alert_id}: acknowledged by {alert.acknowledged_by} at "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(alert.acknowledged_ms / 1000))} UTC")


@app.command()
def resolve(alert_id: str, actor: str = typer.Option(..., help="who closes it"), note: str = typer.Option("")) -> None:
    """OPEN or ACKNOWLEDGED -> RESOLVED."""
    from fleetloop.v1 import alerts_pb2

    alert = _call("ResolveAlert", alerts_pb2.ResolveAlertRequest(alert_id=alert_id, actor=actor, note=note))
    typer.echo(f"{alert.alert_id}: resolved by {alert.resolved_by}")
