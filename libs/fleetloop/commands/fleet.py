"""`fleetloop fleet`: summary, one vehicle, vehicles by status (FleetService on heartbeat-ingest)."""

from __future__ import annotations

import time

import typer

from fleetloop.commands.rpc import call, endpoint, fail
from fleetloop.report import table

app = typer.Typer(help="Query the fleet (FleetService on heartbeat-ingest)", no_args_is_help=True)


def _fleet(method: str, request):
    """One FleetService call on heartbeat-ingest; a failure is one line and exit code 2."""
    from fleetloop.v1 import fleet_service_pb2_grpc

    return call(endpoint("FLEET_GRPC"), fleet_service_pb2_grpc.FleetServiceStub, method, request)


@app.command("summary")
def fleet_summary(group_by: str = typer.Option("park", help="park, city, route, road_type, vehicle, "
                                                            "software_version, day, or '' for the fleet"),
                  start_ms: int = typer.Option(0), end_ms: int = typer.Option(0)) -> None:
    """Mileage, operating and autonomous hours, autonomy rate and average speed."""
    from fleetloop.v1 import fleet_service_pb2

    response = _fleet("FleetSummary",
                      fleet_service_pb2.FleetSummaryRequest(start_ms=start_ms, end_ms=end_ms, group_by=group_by))
    typer.echo(table(["group", "vehicles", "km", "operating h", "autonomous h", "autonomy", "avg km/h"],
                     [[r.group, r.vehicles, f"{r.km:,.1f}", f"{r.operating_h:,.1f}", f"{r.autonomous_h:,.1f}",
                       f"{r.autonomy_rate:.2%}", f"{r.avg_speed_kph:.1f}"] for r in response.rows]))


@app.command("vehicle")
def fleet_vehicle(vehicle_id: str) -> None:
    """One vehicle's live state."""
    from google.protobuf.json_format import MessageToJson

    from fleetloop.v1 import fleet_service_pb2

    typer.echo(MessageToJson(_fleet("GetVehicle", fleet_service_pb2.GetVehicleRequest(vehicle_id=vehicle_id))))


VEHICLE_STATUSES = ("online", "offline", "stopped")


@app.command("list")
def fleet_list(status: str = typer.Option("", help="online, offline or stopped"),
               park: str = typer.Option("")) -> None:
    """Vehicles by live status."""
    from fleetloop.v1 import common_pb2, fleet_service_pb2

    if status and status.lower() not in VEHICLE_STATUSES:
        fail(f"unknown status {status!r}; one of: {', '.join(VEHICLE_STATUSES)}")
    wanted = fleet_service_pb2.VehicleStatus.Value(f"VEHICLE_STATUS_{status.upper()}") if status else 0
    response = _fleet("ListVehicles", fleet_service_pb2.ListVehiclesRequest(status=wanted, park=park))
    typer.echo(table(["vehicle", "status", "mode", "park", "km/h", "last seen (UTC)"], [
        [v.vehicle_id, fleet_service_pb2.VehicleStatus.Name(v.status).removeprefix("VEHICLE_STATUS_").lower(),
         common_pb2.DrivingMode.Name(v.mode).removeprefix("DRIVING_MODE_").lower(), v.park,
         f"{v.speed_mps * 3.6:.1f}", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.last_seen_ms / 1000))]
        for v in response.vehicles]))
