"""Plain-text reports read from the warehouse's ADS layer (what `make demo` prints)."""

from __future__ import annotations

import time
from collections import defaultdict
from io import StringIO

from rich.box import Box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleetloop import tables
from fleetloop.v1 import common_pb2
from fleetloop.warehouse import Warehouse


def road_type_name(value: int) -> str:
    return common_pb2.RoadType.Name(value).removeprefix("ROAD_TYPE_").lower()


# No frame: a header line, a dashed line under each header, then one line per row (parseable by
# splitting on whitespace). Rows of a rich box: top, head, head/row rule, mid, row, foot rule, foot, bottom.
_PLAIN = Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A small table for the terminal as plain text (rich, no colour): first column left, the others right."""
    grid = Table(box=_PLAIN, show_edge=False, pad_edge=False, header_style="", highlight=False)
    for i, h in enumerate(headers):
        grid.add_column(Text(h), justify="right" if i else "left", no_wrap=True)
    for row in rows:
        grid.add_row(*(Text(str(v)) for v in row))
    out = StringIO()
    Console(file=out, width=100_000, color_system=None, force_terminal=False, legacy_windows=False).print(grid)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


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
        f"FROM {tables.FLEET_DAY}")[0]
    rows.append(["all", "", total["n"], f"{total['km']:,.1f}",
                 f"{total['auto_h'] / total['op_h']:.2%}" if total["op_h"] else "-", f"{total['kph']:.1f}",
                 *["" for _ in road_types]])
    return table(headers, rows)


METRICS = ("mps", "mpd_all", "mpd_resp", "mpi")


def metrics_table(response, group_by: str) -> str:
    """A GetMetricsResponse as a table: km, then per metric the count, the rate per 10k km and km per event."""
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
    return table(headers, rows)


def cases_report(warehouse: Warehouse, online_s: float, max_cases: int = 30) -> str:
    """What `make demo` prints for the case-assembler: the cases made, and the upload volume against the
    raw-equivalent of the same driving (`online_s` vehicle-seconds × vehicle.yaml's raw bytes per minute)."""
    from fleetloop.v1 import cases_pb2, triggers_pb2
    from fleetloop.vehicle.params import load_vehicle_params

    raw_per_minute = load_vehicle_params().raw_bytes_per_minute
    cases = warehouse.query_dicts(
        "SELECT case_id, vehicle_id, window_start, window_end, category, triggers, tier_status, status "
        "FROM cases FINAL ORDER BY window_start")
    logs = warehouse.query_dicts(
        "SELECT tier, count() AS n, sum(size_bytes) AS written, sum(declared_bytes) AS counted "
        "FROM case_logs FINAL WHERE status = 'complete' GROUP BY tier ORDER BY tier")
    lines = [table(["case", "vehicle", "window (UTC)", "s", "category", "triggers", "tiers", "status"], [
        [c["case_id"], c["vehicle_id"], c["window_start"].strftime("%H:%M:%S"),
         f"{(c['window_end'] - c['window_start']).total_seconds():.0f}",
         triggers_pb2.TriggerCategory.Name(c["category"]).removeprefix("TRIGGER_CATEGORY_").lower(),
         ",".join(sorted(set(c["triggers"]))), " ".join(f"{t}:{s}" for t, s in sorted(c["tier_status"].items())),
         cases_pb2.CaseStatus.Name(c["status"]).removeprefix("CASE_STATUS_").lower()]
        for c in cases[:max_cases]])]
    if len(cases) > max_cases:
        lines.append(f"... and {len(cases) - max_cases} more (`fleetloop cases list`)")
    uploaded = sum(r["counted"] for r in logs)
    raw_equivalent = online_s / 60 * raw_per_minute
    lines.append("uploads: " + ", ".join(
        f"{r['tier']} {r['n']} ({r['written'] / 1e3:,.0f} kB written"
        + (f", {r['counted'] / 1e9:,.1f} GB declared)" if r["tier"] == "raw" else ")") for r in logs))
    if uploaded:
        lines.append(f"uploaded {uploaded / 1e9:,.2f} GB (microlog/minilog real MCAP bytes, raw declared "
                     f"at {raw_per_minute / 1e9:g} GB/min) vs raw-equivalent {raw_equivalent / 1e9:,.0f} GB of "
                     f"{online_s / 3600:,.2f} online vehicle-hours: {raw_equivalent / uploaded:,.0f}x less")
    return "\n".join(lines)


def solutions_report(warehouse: Warehouse, max_rows: int = 30) -> str:
    """What `make demo` prints for the replay-validator: per replayed case the baseline's and the solution's
    total cost, the cost terms that moved most, the triggers the solution no longer fires, and the pair's size."""
    rows = warehouse.query_dicts(
        "SELECT case_id, vehicle_id, policy, verdict, baseline_terms, solution_terms, baseline_total, "
        f"solution_total, triggers_removed, pair_size_bytes FROM {tables.SOLUTIONS} FINAL ORDER BY requested, case_id")
    if not rows:
        return "no replay solutions"

    def moved(r: dict) -> str:
        deltas = {t: r["solution_terms"].get(t, 0.0) - v for t, v in r["baseline_terms"].items()}
        top = sorted(((d, t) for t, d in deltas.items() if abs(d) >= 0.005), key=lambda dt: (-abs(dt[0]), dt[1]))[:3]
        return " ".join(f"{t}{d:+.2f}" for d, t in top) or "-"

    lines = [table(["case", "vehicle", "policy", "verdict", "baseline", "solution", "terms moved most",
                    "triggers removed", "pair B"], [
        [r["case_id"], r["vehicle_id"], r["policy"], r["verdict"], f"{r['baseline_total']:.2f}",
         f"{r['solution_total']:.2f}", moved(r),
         ",".join(f"{t}x{n}" if n > 1 else t for t, n in sorted(r["triggers_removed"].items()) if n) or "-",
         f"{r['pair_size_bytes']:,}"] for r in rows[:max_rows]])]
    if len(rows) > max_rows:
        lines.append(f"... and {len(rows) - max_rows} more (`fleetloop replay list`)")
    verdicts: dict[str, int] = defaultdict(int)
    for r in rows:
        verdicts[r["verdict"]] += 1
    lines.append(f"{len(rows)} cases replayed: " + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
                 + f"; pairs {sum(r['pair_size_bytes'] for r in rows) / 1e3:,.1f} kB in all")
    return "\n".join(lines)


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


def miner_report(miner, expression: str) -> str:
    """What `make demo` prints for the miner: the clips of one mining query and the problem scenes.

    `miner` is the running miner service; only its public `api` (the MinerService servicer and its
    `miner`) is read."""
    from fleetloop.query import MineRequest
    from fleetloop.v1 import miner_pb2

    result = miner.api.miner.mine(MineRequest(expression, limit=10_000))
    clips = sorted(result.clips, key=lambda c: c.end_ms - c.start_ms, reverse=True)
    lines = [f"mine {expression!r}: {len(result.clips)} clips, "
             f"{sum(c.matched_seconds for c in result.clips):,} matching seconds ({result.plan})",
             table(["vehicle", "start (UTC)", "s", "cases"], [
                 [c.vehicle_id, time.strftime("%H:%M:%S", time.gmtime(c.start_ms / 1000)),
                  (c.end_ms - c.start_ms) // 1000, ",".join(x[:8] for x in c.case_ids)] for c in clips[:8]])]
    clusters = miner.api.clusters(miner_pb2.ClustersRequest())
    lines.append(f"\nproblem scenes: {clusters.problems} problems from {clusters.source}, "
                 f"{len(clusters.scenes)} clusters (silhouette {clusters.silhouette:.2f})")
    lines.append(table(["scene", "size", "dominant trigger", "similar seconds in the fleet", "mining expression"], [
        [s.name, s.size, s.dominant_trigger, f"{s.similar_seconds:,}", s.expression] for s in clusters.scenes]))
    return "\n".join(lines)
