"""Compile a typed mining AST to parameterised ClickHouse SQL over the label table.

Three-valued logic. A tag is TRUE, FALSE or UNKNOWN per row (see fleetloop.labels.row);
a second matches only when the whole expression is TRUE, so `!rain` never matches a
second without perception. The compiler emits two-valued SQL for "e is TRUE" and "e is
FALSE" (`_Predicate._node(e, want_true)`) by De Morgan: T(!a) = F(a), T(a & b) = T(a) AND T(b),
F(a & b) = F(a) OR F(b), and dually for `|`. This avoids Nullable columns entirely.

Bit tests. Tag literals under one n-ary node are grouped by 64-bit word, so
`rain & night & tricycle` is one `bitAnd(t0, mask) = mask`; the four group shapes are

    all TRUE   bitAnd(t, M) = M            any TRUE   bitAnd(t, M) != 0
    all FALSE  bitAnd(k, M) = M AND bitAnd(t, M) = 0
    any FALSE  bitAnd(bitAnd(k, bitNot(t)), M) != 0

Masks come from the taxonomy (never from the user) and are inlined as integer literals so
the engine folds them; every user value (numbers, vehicle ids, parks, time range, clip
options, limit) is a server-side `{name:Type}` parameter.

Numeric comparisons are on Float32 columns with NaN = unknown. Every comparison with NaN
is false except `!=`, so "x != v" is emitted as `(x < v OR x > v)` and FALSE(x op v) as the
complementary operator (`>` <-> `<=`, …), which is also false on NaN.

Clips (gaps-and-islands, in SQL): matching seconds of one vehicle are ordered by time; a
second starts a new clip when it follows the previous match by more than
(1 + merge_gap_s) s; clips shorter than min_clip_s are dropped. A clip spans
[first second, last second + 1 s).

Measured (chdb 4.4 = ClickHouse 26.9 embedded, 20 M synthetic rows = 1,000 vehicles x
20,000 s, 2 shared CPU cores, so absolute times are noisy; ratios are within one run):
- layout: a 2-tag query inside one word, `bitAnd(t0, m) = m` 84-125 ms vs one UInt8
  column per tag 101-117 ms (even); the 5-tag headline query touching t0, t1, k1: words
  248-431 ms vs per-tag columns 202-250 ms (per-tag up to 1.7x faster); separate
  `bitTest` calls instead of one mask: 369-449 ms (the folded mask is kept). Words are
  kept because a new tag needs no DDL and inserts write 8 bitset columns instead of two
  per tag; tags queried together share a word (bits are grouped by family). Re-measure
  against per-tag columns on a quiet multi-core server at 100 M rows.
- FINAL (needed for idempotent re-labelling) costs 1.3-1.45x on a count.
- clips: gaps-and-islands in SQL 684-1246 ms and 2,006 rows shipped, vs fetching the
  60,480 matching seconds and merging in numpy 1,846 ms: SQL wins and ships 30x less.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetloop.labels.row import LABEL_TABLE
from fleetloop.labels.taxonomy import Taxonomy
from fleetloop.query.ast import And, Compare, Expr, Not, TagAtom
from fleetloop.query.parser import parse

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_COMPLEMENT = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}
MAX_LIMIT = 1_000_000
# Safe because the partition key toYYYYMM(ts) is a function of the replacing key, so
# duplicates never straddle partitions; measured 884 -> 723 ms on the 20 M-row bench.
_SETTINGS = "SETTINGS do_not_merge_across_partitions_select_final = 1"


@dataclass(frozen=True)
class MineRequest:
    """A mining request: the expression plus options that are not part of it.

    start_ms / end_ms: time range [start, end), epoch ms UTC; None = open.
    vehicle_ids / parks: restrict to these (empty = all).
    output: "seconds" (every matching vehicle-second) or "clips" (merged runs).
    merge_gap_s: clips only; up to this many non-matching seconds may lie inside a clip.
    min_clip_s: clips only; drop clips shorter than this (a clip of n seconds lasts n s).
    limit: at most this many result rows, in (vehicle_id, time) order.
    """

    expression: str
    start_ms: int | None = None
    end_ms: int | None = None
    vehicle_ids: tuple[str, ...] = ()
    parks: tuple[str, ...] = ()
    output: Literal["seconds", "clips"] = "clips"
    merge_gap_s: int = 0
    min_clip_s: int = 0
    limit: int = 10_000

    def __post_init__(self) -> None:
        if self.output not in ("seconds", "clips"):
            raise ValueError(f"output must be 'seconds' or 'clips', not {self.output!r}")
        if self.output == "seconds" and (self.merge_gap_s or self.min_clip_s):
            raise ValueError("merge_gap_s and min_clip_s apply to output='clips' only")
        if self.merge_gap_s < 0 or self.min_clip_s < 0:
            raise ValueError("merge_gap_s and min_clip_s must be >= 0")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must lie in [1, {MAX_LIMIT}]")
        if self.start_ms is not None and self.end_ms is not None and self.end_ms <= self.start_ms:
            raise ValueError("end_ms must be after start_ms")


@dataclass(frozen=True)
class CompiledQuery:
    """SQL with `{name:Type}` placeholders and the values to bind to them server-side.

    Run with `client.query(sql, parameters=parameters)`. Result columns: `columns`
    ("seconds": vehicle_id, ts_ms; "clips": vehicle_id, start_ms, end_ms, matched_seconds;
    times are epoch ms). `expression` is the normalised expression.
    """

    sql: str
    parameters: dict[str, Any]
    columns: tuple[str, ...]
    expression: str


@dataclass(frozen=True)
class Explanation:
    """The normalised expression, its WHERE predicate and that predicate's parameters."""

    expression: str
    where_sql: str
    parameters: dict[str, Any]


@dataclass
class _Predicate:
    """Builds TRUE/FALSE predicates; collects numeric literals as parameters."""

    parameters: dict[str, Any] = field(default_factory=dict)

    def param(self, value: float) -> str:
        name = f"v{len(self.parameters)}"
        self.parameters[name] = value
        return f"{{{name}:Float32}}"

    def true(self, e: Expr) -> str:
        return self._node(e, want_true=True)

    def _node(self, e: Expr, want_true: bool) -> str:
        if isinstance(e, Not):
            return self._node(e.operand, not want_true)
        if isinstance(e, TagAtom):
            return self._bits([e.tag.bit], e.tag.word, want_true, require_all=True)
        if isinstance(e, Compare):
            return self._compare(e, want_true)
        # TRUE(And) and FALSE(Or) need every operand; TRUE(Or) and FALSE(And) need any.
        require_all = isinstance(e, And) == want_true
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        others: list[str] = []
        for operand in e.operands:
            literal, positive = operand, True
            while isinstance(literal, Not):
                literal, positive = literal.operand, not positive
            if isinstance(literal, TagAtom):
                groups[(literal.tag.word, positive == want_true)].append(literal.tag.bit)
            else:
                others.append(self._node(operand, want_true))
        parts = [self._bits(bits, word, state, require_all) for (word, state), bits in sorted(groups.items())]
        parts += others
        joiner = " AND " if require_all else " OR "
        return parts[0] if len(parts) == 1 else "(" + joiner.join(parts) + ")"

    @staticmethod
    def _bits(bits: list[int], word: int, state: bool, require_all: bool) -> str:
        mask = 0
        for bit in bits:
            mask |= 1 << (bit % 64)
        t, k = f"t{word}", f"k{word}"
        if state and require_all:
            return f"bitAnd({t}, {mask}) = {mask}"
        if state:
            return f"bitAnd({t}, {mask}) != 0"
        if require_all:
            return f"(bitAnd({k}, {mask}) = {mask} AND bitAnd({t}, {mask}) = 0)"
        return f"bitAnd(bitAnd({k}, bitNot({t})), {mask}) != 0"

    def _compare(self, e: Compare, want_true: bool) -> str:
        column, p = e.numeric.column, self.param(e.value)
        op = e.op if want_true else {"=": "!=", "!=": "="}.get(e.op, _COMPLEMENT.get(e.op))
        if op == "!=":
            return f"({column} < {p} OR {column} > {p})"
        return f"{column} {op} {p}"


def explain(expr: Expr) -> Explanation:
    """The normalised expression and the WHERE predicate (with its parameters) for `expr`."""
    predicate = _Predicate()
    where = predicate.true(expr)
    return Explanation(expression=str(expr), where_sql=where, parameters=predicate.parameters)


def request_filters(request: MineRequest, params: dict) -> list[str]:
    """WHERE conditions for the request's time range, vehicles and parks; values go into `params`."""
    where = []
    if request.start_ms is not None:
        where.append("ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')")
        params["start_ms"] = request.start_ms
    if request.end_ms is not None:
        where.append("ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')")
        params["end_ms"] = request.end_ms
    if request.vehicle_ids:
        where.append("vehicle_id IN {vehicle_ids:Array(String)}")
        params["vehicle_ids"] = list(request.vehicle_ids)
    if request.parks:
        where.append("park IN {parks:Array(String)}")
        params["parks"] = list(request.parks)
    return where


def compile_query(request: MineRequest, taxonomy: Taxonomy, table: str = LABEL_TABLE,
                  tag_words: bool = False) -> CompiledQuery:
    """Parse `request.expression` and compile the whole request to parameterised SQL.

    Raises QueryError for a bad expression. `table` is a trusted identifier from code
    (validated), never user input. `tag_words` adds the TRUE bitset words t0.. as result
    columns: per second, or per clip the OR over its seconds (which tags held at some point).
    """
    if not _IDENTIFIER.match(table):
        raise ValueError(f"bad table name {table!r}")
    expr = parse(request.expression, taxonomy)
    explanation = explain(expr)
    params = dict(explanation.parameters)
    where = [f"({explanation.where_sql})", *request_filters(request, params)]
    params["limit"] = request.limit
    words = [f"t{w}" for w in range(taxonomy.word_count)] if tag_words else []
    extra = "".join(f", {word}" for word in words)
    seconds = (f"SELECT vehicle_id, toUnixTimestamp64Milli(ts) AS ts_ms{extra} FROM {table} FINAL "
               f"WHERE {' AND '.join(where)}")
    if request.output == "seconds":
        sql = f"{seconds} ORDER BY vehicle_id, ts LIMIT {{limit:UInt64}} {_SETTINGS}"
        return CompiledQuery(sql, params, ("vehicle_id", "ts_ms", *words), explanation.expression)
    params["gap_ms"] = 1000 * (1 + request.merge_gap_s)
    params["min_clip_ms"] = 1000 * request.min_clip_s
    any_words = "".join(f", groupBitOr({word}) AS {word}" for word in words)
    sql = (
        "SELECT vehicle_id, min(ts_ms) AS start_ms, max(ts_ms) + 1000 AS end_ms, count() AS matched_seconds"
        f"{any_words} "
        f"FROM (SELECT vehicle_id, ts_ms{extra}, sum(starts_clip) OVER (PARTITION BY vehicle_id ORDER BY ts_ms "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS clip_no "
        f"FROM (SELECT vehicle_id, ts_ms{extra}, ts_ms - lagInFrame(ts_ms, 1, ts_ms - {{gap_ms:Int64}} - 1) "
        "OVER (PARTITION BY vehicle_id ORDER BY ts_ms ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) "
        "> {gap_ms:Int64} AS starts_clip "
        f"FROM ({seconds}))) "
        "GROUP BY vehicle_id, clip_no HAVING end_ms - start_ms >= {min_clip_ms:Int64} "
        f"ORDER BY vehicle_id, start_ms LIMIT {{limit:UInt64}} {_SETTINGS}"
    )
    return CompiledQuery(sql, params, ("vehicle_id", "start_ms", "end_ms", "matched_seconds", *words),
                         explanation.expression)
