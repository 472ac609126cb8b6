"""FleetService: a vehicle's live state and the fleet's business numbers for a period."""

from __future__ import annotations

import grpc
from fleetloop.request_checks import TooLarge, guarded, one_of, required, vehicle_id, window
from fleetloop.v1 import common_pb2, fleet_service_pb2, fleet_service_pb2_grpc
from fleetloop.warehouse import Warehouse

from services.heartbeat_ingest.live_state import LiveState

STOPPED_SPEED_MPS = 0.3  # below walking pace: the vehicle is standing, not creeping
MAX_SUMMARY_GROUPS = 10_000  # rows of one FleetSummary answer (a group per vehicle of a large fleet fits)

# group_by name -> SQL expression over dwd_vehicle_second. Only these strings reach the SQL.
GROUP_EXPRESSIONS = {
    "": "'fleet'",
    "park": "park",
    "city": "city",
    "route": "route",
    "road_type": "toString(road_type)",
    "vehicle": "vehicle_id",
    "software_version": "software_version",
    "day": "toString(toDate(ts))",
}

SUMMARY_SQL = """
SELECT {group} AS grp,
       sum(distance_m) / 1000 AS km,
       countIf(has_heartbeat = 1 AND task_state IN (2, 3)) / 3600 AS operating_h,
       countIf(has_heartbeat = 1 AND task_state IN (2, 3) AND mode = 1) / 3600 AS autonomous_h,
       countIf(distance_m > 0.1) / 3600 AS moving_h,
       uniqExact(vehicle_id) AS vehicles
FROM dwd_vehicle_second FINAL
WHERE ts >= fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC')
  AND ts < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC')
GROUP BY grp ORDER BY grp
LIMIT {{limit:UInt32}}
"""


def road_type_name(value: int) -> str:
    return common_pb2.RoadType.Name(value).removeprefix("ROAD_TYPE_").lower()


def status_of(state: dict[str, str], watermark_ms: int, offline_after_s: float) -> int:
    """Live status from the stored state and the fleet's event-time watermark."""
    if watermark_ms - int(state.get("last_seen_ms", 0)) > offline_after_s * 1000:
        return fleet_service_pb2.VEHICLE_STATUS_OFFLINE
    if (int(state.get("task_state", 0)) == common_pb2.TASK_STATE_RUNNING
            and float(state.get("speed_mps", 0)) < STOPPED_SPEED_MPS):
        return fleet_service_pb2.VEHICLE_STATUS_STOPPED
    return fleet_service_pb2.VEHICLE_STATUS_ONLINE


def to_message(vehicle_id: str, state: dict[str, str], status: int) -> fleet_service_pb2.VehicleState:
    return fleet_service_pb2.VehicleState(
        vehicle_id=vehicle_id, last_seen_ms=int(state.get("last_seen_ms", 0)),
        mode=int(state.get("mode", 0)), lat_deg=float(state.get("lat_deg", 0)),
        lon_deg=float(state.get("lon_deg", 0)), speed_mps=float(state.get("speed_mps", 0)),
        task_id=state.get("task_id", ""), task_state=int(state.get("task_state", 0)),
        park=state.get("park", ""), city=state.get("city", ""),
        software_version=state.get("software_version", ""), status=status,
        road_type=int(state.get("road_type", 0)),
    )


class FleetApi(fleet_service_pb2_grpc.FleetServiceServicer):
    def __init__(self, warehouse: Warehouse, live: LiveState, offline_after_s: float) -> None:
        self.warehouse = warehouse
        self.live = live
        self.offline_after_s = offline_after_s

    @guarded()
    async def GetVehicle(self, request, context):  # noqa: N802 - gRPC method name
        vehicle_id(required("vehicle_id", request.vehicle_id))
        state = await self.live.vehicle(request.vehicle_id)
        if state is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"vehicle {request.vehicle_id!r} has never been seen")
        watermark = await self.live.watermark_ms()
        return to_message(request.vehicle_id, state, status_of(state, watermark, self.offline_after_s))

    @guarded()
    async def ListVehicles(self, request, context):  # noqa: N802
        watermark = await self.live.watermark_ms()
        out = fleet_service_pb2.ListVehiclesResponse(as_of_ms=watermark)
        for state in await self.live.all_vehicles():
            status = status_of(state, watermark, self.offline_after_s)
            if request.status and status != request.status:
                continue
            if request.park and state.get("park") != request.park:
                continue
            if request.mode and int(state.get("mode", 0)) != request.mode:
                continue
            out.vehicles.append(to_message(state["vehicle_id"], state, status))
        return out

    @guarded()
    async def FleetSummary(self, request, context):  # noqa: N802
        one_of("group_by", request.group_by, GROUP_EXPRESSIONS)
        start_ms, end_ms = window(request.start_ms, request.end_ms)
        rows = await self.warehouse.aquery_dicts(
            SUMMARY_SQL.format(group=GROUP_EXPRESSIONS[request.group_by]),
            {"start_ms": start_ms, "end_ms": end_ms, "limit": MAX_SUMMARY_GROUPS + 1},
        )
        if len(rows) > MAX_SUMMARY_GROUPS:
            raise TooLarge(f"more than {MAX_SUMMARY_GROUPS:,} {request.group_by} groups: narrow the window "
                           "or group coarser")
        return fleet_service_pb2.FleetSummaryResponse(rows=[summary_row(r, request.group_by) for r in rows])


def summary_row(row: dict, group_by: str) -> fleet_service_pb2.FleetSummaryRow:
    group = row["grp"]
    if group_by == "road_type":
        group = road_type_name(int(group))
    operating_h, autonomous_h = row["operating_h"], row["autonomous_h"]
    return fleet_service_pb2.FleetSummaryRow(
        group=group or "(unknown)", km=row["km"], operating_h=operating_h, autonomous_h=autonomous_h,
        autonomy_rate=autonomous_h / operating_h if operating_h else 0.0,
        avg_speed_kph=row["km"] / row["moving_h"] if row["moving_h"] else 0.0,
        vehicles=row["vehicles"],
    )
