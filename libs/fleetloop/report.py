"""Plain-text reports read from the warehouse's ADS layer (what `make demo` prints)."""

from __future__ import annotations

import time
from collections import defaultdict

from fleetloop.v1 import common_pb2
from fleetloop.warehouse import Warehouse


def road_type_name(value: int) -> str:
    return common_pb2.RoadType.Name(value).removeprefix("ROAD_TYPE_").lower()


def table(headers: list[str], rows: list[list[object]]) -> str:
    """Align a small table for the terminal: first column left, the others right."""
    text = [[str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
              for r in text]
    return "\n".join(lines)


def fleet_report(warehouse: Warehouse) -> str:
    """Per park: km driven, autonomy rate, average speed, and km by road type (ADS views)."""
    parks = warehouse.query_dicts(
        "SELECT city, park, sum(a.km) AS park_km, sum(a.autonomous_h) AS auto_h, sum(a.operating_h) AS op_h, "
        "sum(a.km) / greatest(sum(a.moving_h), 1e-9) AS avg_speed_kph, max(a.vehicles) AS vehicles "
        "FROM ads_fleet_park_day AS a GROUP BY city, park ORDER BY city, park")
    by_road = warehouse.query_dicts(
        "SELECT park, road_type, sum(r.km) AS road_km FROM ads_fleet_road_type_day AS r GROUP BY park, road_type")
    road_km: dict[str, dict[str, float]] = defaultdict(dict)
    road_types = sorted({r["road_type"] for r in by_road})
    for r in by_road:
        road_km[r["park"]][road_type_name(r["road_type"])] = r["road_km"]
    headers = ["city", "park", "vehicles", "km", "autonomy", "avg km/h",
               *[f"km {road_type_name(t)}" for t in road_types]]
    rows = []
    for p in parks:
        rows.append([p["city"] or "(unknown)", p["park"] or "(unknown)", p["vehicles"], f"{p['park_km']:,.1f}",
                     f"{p['auto_h'] / p['op_h']:.2%}" if p["op_h"] else "-", f"{p['avg_speed_kph']:.1f}",
                     *[f"{road_km[p['park']].get(road_type_name(t), 0.0):,.1f}" for t in road_types]])
    total = warehouse.query_dicts(
        "SELECT sum(distance_m) / 1000 AS km, sum(operating_s) / 3600 AS op_h, sum(autonomous_s) / 3600 AS auto_h, "
        "sum(distance_m) / 1000 / greatest(sum(moving_s) / 3600, 1e-9) AS kph, uniqExact(vehicle_id) AS n "
        "FROM dws_fleet_day")[0]
    rows.append(["all", "", total["n"], f"{total['km']:,.1f}",
                 f"{total['auto_h'] / total['op_h']:.2%}" if total["op_h"] else "-", f"{total['kph']:.1f}",
                 *["" for _ in road_types]])
    return table(headers, rows)


def alerts_report(alerts: list) -> str:
    """The alerts of a run (fleet.v1 Alert messages), oldest first, one line per incident."""
    from fleetloop.v1 import alerts_pb2

    def name(enum, value: int, prefix: str) -> str:
        return enum.Name(value).removeprefix(prefix).lower()

    rows = []
    for a in sorted(alerts, key=lambda a: (a.opened_ms, a.alert_id)):
        rows.append([
            time.strftime("%H:%M:%S", time.gmtime(a.opened_ms / 1000)),
            name(alerts_pb2.AlertKind, a.kind, "ALERT_KIND_"),
            name(alerts_pb2.AlertSeverity, a.severity, "ALERT_SEVERITY_"),
            name(alerts_pb2.AlertState, a.state, "ALERT_STATE_"),
            a.vehicle_id or a.park,
            a.summary[:90],
        ])
    return table(["opened (UTC)", "kind", "severity", "state", "vehicle / park", "summary"], rows)
