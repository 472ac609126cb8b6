"""The mining engine: answers a `MineRequest` from the hourly bitmap index where it can and by
scanning the label table where it must.

Plan per request (docs/MINING.md):
- an expression with a numeric comparison has no bitmaps: one SQL scan (`compile_query`);
- otherwise every sealed hour in range is answered from its bitmaps (cached in memory per
  hour and version), the unsealed hours (still being written) by a scan restricted to them,
  and the seconds of both are merged into clips per vehicle, vehicles in sorted order, in
  batches, stopping once `limit` clips are found.
Clip rule, matched tags and ordering are the compiler's (tests compare them to the SQL and to
the brute-force evaluator).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from fleetloop import tables
from fleetloop.labels import LABEL_TABLE, Taxonomy
from fleetloop.query import MineRequest, QueryError, compile_query, explain, parse
from fleetloop.query.ast import And, Expr, Not, Or, TagAtom
from fleetloop.query.compiler import MAX_LIMIT, request_filters
from fleetloop.query.index import (
    HOUR_MS,
    HourIndex,
    evaluate,
    ids_of,
    indexable,
    read_hour_index,
    read_hour_rows,
    scope,
)
from fleetloop.warehouse import Warehouse
from pyroaring import BitMap

INDEX_HOUR_TABLE = tables.INDEX_HOUR.name
VEHICLE_SECOND_TABLE = tables.VEHICLE_SECOND.name
CASES_TABLE = tables.CASES.name
FIRST_BATCH_VEHICLES = 64


@dataclass
class MinedClip:
    vehicle_id: str
    start_ms: int
    end_ms: int
    matched_seconds: int
    matched_tags: tuple[str, ...] = ()
    case_ids: tuple[str, ...] = ()


@dataclass
class MineResult:
    expression: str
    plan: str
    clips: list[MinedClip] = field(default_factory=list)


@dataclass
class _Seconds:
    """Matching seconds: vehicle codes (positions in a sorted name list), ts, and per checked
    positive atom whether it is TRUE in the second."""

    code: np.ndarray         # int64
    ts_ms: np.ndarray        # int64
    atoms: np.ndarray        # bool (n, n_checked)


def positive_atoms(expr: Expr, negated: bool = False) -> list[TagAtom]:
    """Tag atoms under an even number of negations, in first-appearance order, no repeats."""
    if isinstance(expr, TagAtom):
        return [] if negated else [expr]
    if isinstance(expr, Not):
        return positive_atoms(expr.operand, not negated)
    if isinstance(expr, And | Or):
        seen: dict[str, TagAtom] = {}
        for operand in expr.operands:
            for atom in positive_atoms(operand, negated):
                seen.setdefault(atom.tag.name, atom)
        return list(seen.values())
    return []


def always_true_atoms(expr: Expr) -> set[str]:
    """Tags TRUE in every matching second: the expression itself or its top-level positive conjuncts."""
    if isinstance(expr, TagAtom):
        return {expr.tag.name}
    if isinstance(expr, And):
        return {o.tag.name for o in expr.operands if isinstance(o, TagAtom)}
    return set()


def algebra(expr: Expr, want_true: bool = True) -> str:
    """The bitmap algebra the index evaluates, e.g. `t2 ∩ (k64 − t64)`."""
    if isinstance(expr, TagAtom):
        return f"t{expr.tag.bit}" if want_true else f"(k{expr.tag.bit} − t{expr.tag.bit})"
    if isinstance(expr, Not):
        return algebra(expr.operand, not want_true)
    if not isinstance(expr, And | Or):
        return "?"
    joiner = " ∩ " if isinstance(expr, And) == want_true else " ∪ "
    return "(" + joiner.join(algebra(o, want_true) for o in expr.operands) + ")"


def merge_clips(seconds: _Seconds, names: Sequence[str], merge_gap_s: int, min_clip_s: int,
                atoms: Sequence[TagAtom], always: set[str]) -> list[MinedClip]:
    """Clips from seconds sorted by (vehicle, ts): the rule of `fleetloop.query.build_clips`.

    atoms: the positive atoms; those in `always` hold in every second, the others are the
    columns of `seconds.atoms` in order.
    """
    n = seconds.ts_ms.size
    if n == 0:
        return []
    code, ts = seconds.code, seconds.ts_ms
    breaks = np.r_[True, (code[1:] != code[:-1]) | (np.diff(ts) > 1000 * (1 + merge_gap_s))]
    starts = np.flatnonzero(breaks)
    ends = np.r_[starts[1:], n]
    start_ms, end_ms = ts[starts], ts[ends - 1] + 1000
    keep = np.flatnonzero(end_ms - start_ms >= 1000 * min_clip_s)
    checked = [a for a in atoms if a.tag.name not in always]
    hits = np.logical_or.reduceat(seconds.atoms, starts, axis=0) if checked else np.zeros((starts.size, 0), bool)
    out = []
    for i in keep.tolist():
        hit = dict(zip((a.tag.name for a in checked), hits[i].tolist(), strict=True))
        tags = tuple(a.tag.name for a in atoms if a.tag.name in always or hit[a.tag.name])
        out.append(MinedClip(names[code[starts[i]]], int(start_ms[i]), int(end_ms[i]),
                             int(ends[i] - starts[i]), tags))
    return out


class Miner:
    """Mining over one warehouse. Keeps decoded hour indexes in memory, keyed by version."""

    def __init__(self, warehouse: Warehouse, taxonomy: Taxonomy, label_table: str = LABEL_TABLE) -> None:
        self.warehouse = warehouse
        self.taxonomy = taxonomy
        self.label_table = label_table
        self._cache: dict[int, tuple[int, HourIndex]] = {}

    # -- the index ------------------------------------------------------------------------------
    def hours(self, start_ms: int | None, end_ms: int | None) -> tuple[list[tuple[int, int, list[str]]], list[int]]:
        """(sealed [(hour_ms, version, vehicles)], unsealed [hour_ms]) overlapping the range."""
        if not self.has_table(INDEX_HOUR_TABLE):
            return [], []
        lo = 0 if start_ms is None else start_ms - start_ms % HOUR_MS
        hi = 2**42 if end_ms is None else end_ms
        rows = read_hour_rows(self.warehouse, lo, hi)
        sealed = [(h, v, vs) for h, v, s, vs in rows if s]
        unsealed = [h for h, _, s, _ in rows if not s]
        return sealed, unsealed

    def hour_index(self, hour_ms: int, version: int, vehicles: Sequence[str]) -> HourIndex:
        cached = self._cache.get(hour_ms)
        if cached and cached[0] == version:
            return cached[1]
        index = read_hour_index(self.warehouse, hour_ms, version, vehicles)
        self._cache[hour_ms] = (version, index)
        return index

    # -- requests -------------------------------------------------------------------------------
    def plan(self, request: MineRequest) -> tuple[Expr, bool]:
        expr = parse(request.expression, self.taxonomy)
        return expr, indexable(expr)

    def mine(self, request: MineRequest) -> MineResult:
        """Clips of the request, at most `request.limit`, in (vehicle, start) order, with case ids."""
        expr, use_index = self.plan(request)
        if use_index:
            clips = list(self._index_clips(expr, request, request.limit))
        else:
            clips = self._scan_clips(expr, request)
        result = MineResult(str(expr), "index" if use_index else "scan", clips[: request.limit])
        self._attach_cases(result.clips)
        return result

    def _scan_clips(self, expr: Expr, request: MineRequest) -> list[MinedClip]:
        atoms = positive_atoms(expr)
        compiled = compile_query(replace(request, output="clips"), self.taxonomy, self.label_table, tag_words=True)
        out = []
        for vehicle, start, end, matched, *words in self.warehouse.query_rows(compiled.sql, compiled.parameters):
            tags = tuple(a.tag.name for a in atoms if (int(words[a.tag.word]) >> (a.tag.bit % 64)) & 1)
            out.append(MinedClip(vehicle, int(start), int(end), int(matched), tags))
        return out

    def _tail_seconds(self, request: MineRequest, spans: list[tuple[int, int]],
                      atoms: list[TagAtom]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Matching seconds of the unsealed spans, by scanning: (vehicle names, ts_ms, atom flags)."""
        vehicles, stamps, flags = [], [], []
        for lo, hi in spans:
            start = lo if request.start_ms is None else max(lo, request.start_ms)
            end = hi if request.end_ms is None else min(hi, request.end_ms)
            if start >= end:
                continue
            sub = replace(request, start_ms=start, end_ms=end, output="seconds", merge_gap_s=0, min_clip_s=0,
                          limit=MAX_LIMIT)
            compiled = compile_query(sub, self.taxonomy, self.label_table, tag_words=True)
            for vehicle, ts, *words in self.warehouse.query_rows(compiled.sql, compiled.parameters):
                vehicles.append(vehicle)
                stamps.append(int(ts))
                flags.append([bool((int(words[a.tag.word]) >> (a.tag.bit % 64)) & 1) for a in atoms])
        return (np.array(vehicles, dtype=object), np.array(stamps, np.int64),
                np.array(flags, bool).reshape(len(stamps), len(atoms)))

    def matched_hours(self, expr: Expr,
                      request: MineRequest) -> tuple[list[tuple[HourIndex, BitMap]], list[tuple[int, int]]]:
        """Per sealed hour its matching ids; and the unsealed spans [lo, hi) to scan."""
        sealed, unsealed = self.hours(request.start_ms, request.end_ms)
        matched = []
        for hour_ms, version, vehicles in sealed:
            index = self.hour_index(hour_ms, version, vehicles)
            ids = evaluate(expr, index)
            allowed = scope(index, request.start_ms, request.end_ms, request.vehicle_ids, request.parks)
            if allowed is not None:
                ids = ids & allowed
            if ids:
                matched.append((index, ids))
        spans: list[tuple[int, int]] = []
        for hour_ms in unsealed:
            if spans and spans[-1][1] == hour_ms:
                spans[-1] = (spans[-1][0], hour_ms + HOUR_MS)
            else:
                spans.append((hour_ms, hour_ms + HOUR_MS))
        return matched, spans

    def _index_clips(self, expr: Expr, request: MineRequest, limit: int) -> Iterator[MinedClip]:
        atoms = positive_atoms(expr)
        always = always_true_atoms(expr)
        checked = [a for a in atoms if a.tag.name not in always]
        matched, spans = self.matched_hours(expr, request)
        tail_vehicle, tail_ts, tail_flags = self._tail_seconds(request, spans, checked)
        names = sorted(set(tail_vehicle.tolist()).union(*(index.vehicles for index, _ in matched)))
        name_arr = np.array(names, dtype=object)
        hour_codes = [np.searchsorted(name_arr, np.array(index.vehicles, dtype=object)) for index, _ in matched]
        tail = _Seconds(np.searchsorted(name_arr, tail_vehicle).astype(np.int64), tail_ts, tail_flags)
        found = 0
        lo, size = 0, FIRST_BATCH_VEHICLES
        while lo < len(names) and found < limit:
            hi = min(lo + size, len(names))
            seconds = self._batch_seconds(matched, hour_codes, tail, checked, lo, hi)
            for clip in merge_clips(seconds, names, request.merge_gap_s, request.min_clip_s, atoms, always):
                yield clip
                found += 1
            lo, size = hi, size * 2

    @staticmethod
    def _batch_seconds(matched: list[tuple[HourIndex, BitMap]], hour_codes: list[np.ndarray], tail: _Seconds,
                       checked: list[TagAtom], lo: int, hi: int) -> _Seconds:
        """The matching seconds of vehicles with codes in [lo, hi), sorted by (vehicle, ts)."""
        codes, stamps, flags = [], [], []
        for (index, ids), hour_code in zip(matched, hour_codes, strict=True):
            lo_no = int(np.searchsorted(hour_code, lo, side="left"))
            hi_no = int(np.searchsorted(hour_code, hi, side="left"))
            if hi_no <= lo_no:
                continue
            lo_rank = ids.rank(lo_no * 3600 - 1) if lo_no else 0
            block = ids[lo_rank: ids.rank(hi_no * 3600 - 1)]
            if not block:
                continue
            block_ids = ids_of(block)
            nos, ts = index.seconds_of(block_ids)
            codes.append(hour_code[nos])
            stamps.append(ts)
            cols = [np.isin(block_ids, ids_of(block & index.bitmap(f"t{a.tag.bit}")), assume_unique=True)
                    for a in checked]
            flags.append(np.stack(cols, axis=1) if cols else np.zeros((block_ids.size, 0), bool))
        keep = (tail.code >= lo) & (tail.code < hi)
        codes.append(tail.code[keep])
        stamps.append(tail.ts_ms[keep])
        flags.append(tail.atoms[keep])
        code = np.concatenate(codes)
        # Hours come in time order and each is sorted by (vehicle, ts); the tail is sorted too,
        # but it may interleave with the hours, so sort by the combined key.
        order = np.argsort(code * (1 << 42) + np.concatenate(stamps), kind="stable")
        return _Seconds(code[order], np.concatenate(stamps)[order], np.concatenate(flags)[order])

    def count(self, request: MineRequest) -> dict[str, float]:
        """seconds, clips and vehicles of the request (no limit), and km driven in those seconds."""
        expr, use_index = self.plan(request)
        unlimited = replace(request, limit=MAX_LIMIT)
        if use_index:
            clips = list(self._index_clips(expr, unlimited, limit=2**62))
        else:
            clips = self._scan_clips(expr, unlimited)
        return {"expression": str(expr), "seconds": sum(c.matched_seconds for c in clips), "clips": len(clips),
                "vehicles": len({c.vehicle_id for c in clips}), "km": self.km(expr, request)}

    def has_table(self, name: str) -> bool:
        return bool(self.warehouse.query_rows(
            "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {n:String}",
            {"n": name})[0][0])

    def _filters(self, request: MineRequest, params: dict) -> list[str]:
        return request_filters(request, params)

    def km(self, expr: Expr | None, request: MineRequest) -> float:
        """km driven in the matching seconds (dwd_vehicle_second.distance_m; 0 without that table)."""
        if not self.has_table(VEHICLE_SECOND_TABLE):
            return 0.0
        explanation = explain(expr) if expr is not None else None
        params: dict = dict(explanation.parameters) if explanation else {}
        where = ([f"({explanation.where_sql})"] if explanation else []) + self._filters(request, params)
        sql = (f"SELECT sum(d.distance_m) / 1000 FROM (SELECT vehicle_id, toDateTime(ts, 'UTC') AS ts "
               f"FROM {self.label_table} FINAL WHERE {' AND '.join(where) or '1'}) AS l "
               f"INNER JOIN (SELECT vehicle_id, ts, distance_m FROM {VEHICLE_SECOND_TABLE} FINAL) AS d "
               "ON l.vehicle_id = d.vehicle_id AND l.ts = d.ts")
        return float(self.warehouse.query_rows(sql, params)[0][0] or 0.0)

    def distribution(self, expression: str, group_by: Sequence[str], request: MineRequest) -> list[dict]:
        """Seconds and km per combination of `group_by` tag states within `expression` (may be empty)."""
        expr = parse(expression, self.taxonomy) if expression.strip() else None
        groups = []
        for name in group_by:
            atom = parse(name, self.taxonomy)
            if not isinstance(atom, TagAtom):
                raise QueryError(f"group_by entry {name!r} is not a boolean tag at 0", name, 0)
            groups.append(atom)
        params: dict = {}
        where = []
        if expr is not None:
            explanation = explain(expr)
            params.update(explanation.parameters)
            where.append(f"({explanation.where_sql})")
        where += self._filters(request, params)
        states = [f"multiIf({explain(g).where_sql}, '{g.tag.name}', {explain(Not(g)).where_sql}, "
                  f"'!{g.tag.name}', '?{g.tag.name}') AS g{i}" for i, g in enumerate(groups)]
        keys = [f"g{i}" for i in range(len(groups))]
        inner = (f"SELECT vehicle_id, toDateTime(ts, 'UTC') AS ts{''.join(', ' + s for s in states)} "
                 f"FROM {self.label_table} FINAL WHERE {' AND '.join(where) or '1'}")
        if self.has_table(VEHICLE_SECOND_TABLE):
            source = (f"({inner}) AS l LEFT JOIN (SELECT vehicle_id, ts, distance_m FROM {VEHICLE_SECOND_TABLE} "
                      "FINAL) AS d ON l.vehicle_id = d.vehicle_id AND l.ts = d.ts")
            km = "sum(d.distance_m) / 1000"
        else:
            source, km = f"({inner}) AS l", "0"
        group = f"GROUP BY {', '.join(keys)} " if keys else ""
        sql = (f"SELECT {''.join(k + ', ' for k in keys)}count() AS seconds, {km} AS km FROM {source} "
               f"{group}ORDER BY seconds DESC")
        rows = self.warehouse.query_rows(sql, params)
        total = sum(int(r[len(keys)]) for r in rows)
        return [{"combination": list(r[:len(keys)]), "seconds": int(r[len(keys)]), "km": float(r[len(keys) + 1] or 0),
                 "share": int(r[len(keys)]) / total if total else 0.0} for r in rows]

    def explain(self, request: MineRequest) -> dict[str, str]:
        expr, use_index = self.plan(request)
        compiled = compile_query(request, self.taxonomy, self.label_table)
        if use_index:
            sealed, unsealed = self.hours(request.start_ms, request.end_ms)
            plan = (f"bitmap index over {len(sealed)} sealed hour(s); scan of {len(unsealed)} unsealed hour(s); "
                    "clips merged per vehicle in sorted batches")
            bitmaps = algebra(expr)
        else:
            plan, bitmaps = "full scan of the label table (a numeric comparison has no bitmap)", ""
        return {"expression": str(expr), "plan": plan, "bitmap_algebra": bitmaps, "sql": compiled.sql,
                "parameters_json": json.dumps(compiled.parameters, sort_keys=True)}

    def _attach_cases(self, clips: list[MinedClip]) -> None:
        """Fill `case_ids` from the cases table (none when it does not exist yet)."""
        if not clips or not self.has_table(CASES_TABLE):
            return
        rows = self.warehouse.query_rows(
            f"SELECT DISTINCT case_id, vehicle_id, toUnixTimestamp64Milli(window_start), "
            f"toUnixTimestamp64Milli(window_end) FROM {CASES_TABLE} WHERE vehicle_id IN {{v:Array(String)}} "
            "AND window_end > fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
            "AND window_start < fromUnixTimestamp64Milli({hi:Int64}, 'UTC')",
            {"v": sorted({c.vehicle_id for c in clips}), "lo": min(c.start_ms for c in clips),
             "hi": max(c.end_ms for c in clips)})
        by_vehicle: dict[str, list[tuple[str, int, int]]] = {}
        for case_id, vehicle, start, end in rows:
            by_vehicle.setdefault(vehicle, []).append((case_id, int(start), int(end)))
        for clip in clips:
            clip.case_ids = tuple(sorted(case for case, start, end in by_vehicle.get(clip.vehicle_id, ())
                                         if start < clip.end_ms and end > clip.start_ms))
