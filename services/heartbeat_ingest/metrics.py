"""MPS, MPD_all, MPD_resp and MPI (ARCHITECTURE §1): the sink that lands triggers and case verdicts,
and the query that turns them into rates per 10,000 km and km per event.

Counting rules (the numbers the company optimises, so each is a decision):

- An event counts once per trigger_id (re-sent and replayed events collapse in ClickHouse).
  `weighted=True` sums the triggers' configured `weight` instead (a view for weighted targets).
- Without adjudication an event counts toward its trigger's category (MPS, MPD or MPI; info none).
- A reviewer's verdict on the event's case overrides the category for MPS/MPD: DANGEROUS → MPD
  (even for an MPS trigger, e.g. a rider fell avoiding our hard brake), STUPID → MPS,
  NOT_AN_ISSUE → neither (and out of MPI too: a false trigger is no intervention). An intervention
  (MPI trigger) stays in MPI under DANGEROUS/STUPID and counts in MPD/MPS as well.
- MPD_resp = MPD_all minus the events whose case says RESPONSIBILITY_THIRD_PARTY. An MPD event not
  yet adjudicated counts in MPD_resp (conservative: ours until a reviewer says otherwise).
  Responsibility never removes an event from MPD_all.
- When cases disagree about one trigger (it should sit in one case), the latest-updated case wins.
- An event's road type, park, city and software version are those of its vehicle-second at onset
  (dwd_vehicle_second); none known → "(unknown)". Mileage is dwd_vehicle_second's distance_m.
"""

from __future__ import annotations

import pyarrow as pa
from fleetloop import codec, topics
from fleetloop.bus import Record, Refusal
from fleetloop.report import road_type_name
from fleetloop.v1 import cases_pb2, triggers_pb2
from fleetloop.warehouse import Warehouse
from google.protobuf.message import DecodeError

METRICS = ("mps", "mpd_all", "mpd_resp", "mpi")
PER_KM = 10_000.0  # rates are events per 10,000 km
TOPICS = (topics.TRIGGERS, topics.CASES)

# group_by name -> (expression over dwd_vehicle_second `s`, expression over an event `e` joined with
# its vehicle-second `d`). Only these strings reach the SQL.
GROUPS: dict[str, tuple[str, str]] = {
    "": ("'fleet'", "'fleet'"),
    "day": ("toString(toDate(ts))", "toString(toDate(e.onset_ts))"),
    "week": ("toString(toMonday(ts))", "toString(toMonday(e.onset_ts))"),
    "vehicle": ("vehicle_id", "e.vehicle_id"),
    "park": ("park", "d.park"),
    "city": ("city", "d.city"),
    "road_type": ("toString(road_type)", "toString(d.road_type)"),
    "software_version": ("software_version", "d.software_version"),
}

KM_SQL = """
SELECT {group} AS grp, sum(distance_m) / 1000 AS km
FROM dwd_vehicle_second FINAL
WHERE ts >= fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC')
  AND ts < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC')
GROUP BY grp
"""

EVENTS_SQL = """
WITH verdicts AS (
    SELECT tid AS trigger_id, argMax(verdict, updated_ms) AS verdict,
           argMax(responsibility, updated_ms) AS responsibility
    FROM case_verdicts FINAL ARRAY JOIN trigger_ids AS tid
    GROUP BY tid
),
judged AS (
    SELECT e.trigger_id AS trigger_id, e.vehicle_id AS vehicle_id, e.onset_ts AS onset_ts,
           e.category AS category, if({{weighted:UInt8}} = 1, e.weight, 1.0) AS w,
           v.verdict AS verdict, v.responsibility AS responsibility
    FROM trigger_events_metric AS e FINAL
    LEFT JOIN verdicts AS v ON v.trigger_id = e.trigger_id
    WHERE e.onset_ts >= fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC')
      AND e.onset_ts < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC')
),
flagged AS (
    SELECT *, verdict = {dangerous} OR (verdict = 0 AND category = {mpd}) AS is_mpd,
           verdict = {stupid} OR (verdict = 0 AND category = {mps}) AS is_mps,
           category = {mpi} AND verdict != {not_an_issue} AS is_mpi
    FROM judged
)
SELECT {group} AS grp,
       sum(w * is_mps) AS mps, sum(w * is_mpd) AS mpd_all,
       sum(w * (is_mpd AND responsibility != {third_party})) AS mpd_resp, sum(w * is_mpi) AS mpi
FROM flagged AS e
LEFT JOIN (
    SELECT vehicle_id, ts, park, city, road_type, software_version FROM dwd_vehicle_second FINAL
    WHERE ts >= toDateTime(intDiv({{start_ms:Int64}}, 1000), 'UTC')
      AND ts <= toDateTime(intDiv({{end_ms:Int64}}, 1000), 'UTC')
) AS d ON d.vehicle_id = e.vehicle_id AND d.ts = toDateTime(e.onset_ts, 'UTC')
GROUP BY grp
""".format(
    group="{group}", dangerous=cases_pb2.VERDICT_DANGEROUS, stupid=cases_pb2.VERDICT_STUPID,
    not_an_issue=cases_pb2.VERDICT_NOT_AN_ISSUE, third_party=cases_pb2.RESPONSIBILITY_THIRD_PARTY,
    mpd=triggers_pb2.TRIGGER_CATEGORY_MPD, mps=triggers_pb2.TRIGGER_CATEGORY_MPS,
    mpi=triggers_pb2.TRIGGER_CATEGORY_MPI,
)

TRIGGER_COLUMNS = ("trigger_id", "vehicle_id", "trigger", "category", "severity", "weight", "onset_ts", "end_ts",
                   "config_version")
CASE_COLUMNS = ("case_id", "vehicle_id", "revision", "verdict", "responsibility", "trigger_ids", "updated_ms")


class MetricsSink:
    """Handler for loop.triggers.v1 (TriggerEvent) and loop.cases.v1 (Case): lands them in
    `trigger_events_metric` and `case_verdicts` (idempotent: ReplacingMergeTree by trigger_id and by
    case_id with the highest revision). Undecodable or id-less messages are refused."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse

    async def handle(self, records: list[Record]) -> list[Refusal]:
        refusals: list[Refusal] = []
        triggers: list[triggers_pb2.TriggerEvent] = []
        cases: list[cases_pb2.Case] = []
        for record in records:
            try:
                if record.topic == topics.TRIGGERS:
                    # Counting needs ids and an onset only: the case-assembler checks the rest.
                    triggers.append(codec.decode_trigger(record.value, record.key, strict=False))
                elif record.topic == topics.CASES:
                    case = cases_pb2.Case.FromString(codec.check_size(record.topic, record.value))
                    if not case.case_id:
                        refusals.append(Refusal(record, "missing_field", "case_id"))
                        continue
                    cases.append(case)
                    triggers.extend(t for t in case.triggers if t.trigger_id and codec.in_time_range(t.onset_ms))
            except DecodeError as exc:
                refusals.append(Refusal(record, "decode_error", str(exc) or "not a Case"))
            except codec.Rejected as rejected:
                refusals.append(Refusal(record, rejected.reason, rejected.detail))
        if triggers:
            await self.warehouse.ainsert_arrow("trigger_events_metric", trigger_table(triggers))
        if cases:
            await self.warehouse.ainsert_arrow("case_verdicts", case_table(cases))
        return refusals


def trigger_table(events: list[triggers_pb2.TriggerEvent]) -> pa.Table:
    ts = pa.timestamp("ms", tz="UTC")
    return pa.table({
        "trigger_id": [e.trigger_id for e in events], "vehicle_id": [e.vehicle_id for e in events],
        "trigger": [e.trigger for e in events], "category": pa.array([e.category for e in events], pa.uint8()),
        "severity": [e.severity for e in events], "weight": [e.weight for e in events],
        "onset_ts": pa.array([e.onset_ms for e in events], ts),
        "end_ts": pa.array([max(e.end_ms, e.onset_ms) for e in events], ts),
        "config_version": [e.config_version for e in events],
    })


def case_table(cases: list[cases_pb2.Case]) -> pa.Table:
    return pa.table({
        "case_id": [c.case_id for c in cases], "vehicle_id": [c.vehicle_id for c in cases],
        "revision": pa.array([c.revision for c in cases], pa.uint64()),
        "verdict": pa.array([c.adjudication.verdict for c in cases], pa.uint8()),
        "responsibility": pa.array([c.adjudication.responsibility for c in cases], pa.uint8()),
        "trigger_ids": [[t.trigger_id for t in c.triggers] + list(c.suppressed_trigger_ids) for c in cases],
        "updated_ms": pa.array([c.updated_ms for c in cases], pa.int64()),
    })


def metric_queries(group_by: str) -> tuple[str, str]:
    """(mileage SQL, events SQL) for `group_by` (a key of GROUPS; raises KeyError otherwise)."""
    km_group, event_group = GROUPS[group_by]
    return KM_SQL.format(group=km_group), EVENTS_SQL.replace("{group}", event_group)


def combine(km_rows: list[dict], event_rows: list[dict], group_by: str) -> list[dict]:
    """Join mileage and event counts by group; add per-10k-km rates and km-per-event intervals.

    Returns dicts {group, km, <metric>: {events, per_10k_km, km_per_event}} sorted by group; a rate
    over 0 km and an interval over 0 events are 0.
    """
    km = {r["grp"]: float(r["km"]) for r in km_rows}
    counts = {r["grp"]: r for r in event_rows}
    out = []
    for group in sorted(set(km) | set(counts)):
        distance = km.get(group, 0.0)
        row: dict = {"group": _label(group, group_by), "km": distance}
        for metric in METRICS:
            events = float(counts[group][metric]) if group in counts else 0.0
            row[metric] = {"events": events, "per_10k_km": events / distance * PER_KM if distance else 0.0,
                           "km_per_event": distance / events if events else 0.0}
        out.append(row)
    return out


def _label(group: str, group_by: str) -> str:
    if group_by == "road_type" and group.isdigit():
        return road_type_name(int(group))
    return group or "(unknown)"


def _parameters(start_ms: int, end_ms: int, weighted: bool) -> dict:
    return {"start_ms": start_ms, "end_ms": end_ms or codec.MAX_EVENT_MS, "weighted": int(weighted)}


def compute_metrics(warehouse: Warehouse, start_ms: int = 0, end_ms: int = 0, group_by: str = "",
                    weighted: bool = False) -> list[dict]:
    """The metrics rows (see `combine`) for event time [start_ms, end_ms) (end 0 = open)."""
    km_sql, events_sql = metric_queries(group_by)
    params = _parameters(start_ms, end_ms, weighted)
    return combine(warehouse.query_dicts(km_sql, params), warehouse.query_dicts(events_sql, params), group_by)


async def acompute_metrics(warehouse: Warehouse, start_ms: int = 0, end_ms: int = 0, group_by: str = "",
                           weighted: bool = False) -> list[dict]:
    """`compute_metrics` off the event loop (the gRPC servicer's path)."""
    km_sql, events_sql = metric_queries(group_by)
    params = _parameters(start_ms, end_ms, weighted)
    return combine(await warehouse.aquery_dicts(km_sql, params), await warehouse.aquery_dicts(events_sql, params),
                   group_by)

