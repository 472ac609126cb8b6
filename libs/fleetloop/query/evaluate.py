"""Brute-force reference semantics over Python `LabelRow`s (tests check the SQL against it).

Deliberately a different construction from the compiler: direct Kleene three-valued
logic (True / False / None = unknown) per row, per node, no bit grouping, no De Morgan.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleetloop.labels.row import LabelRow
from fleetloop.labels.taxonomy import Taxonomy
from fleetloop.query.ast import And, Compare, Expr, Not, Or, TagAtom
from fleetloop.query.compiler import MineRequest
from fleetloop.query.parser import parse

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "=": operator.eq,
        "!=": operator.ne}


@dataclass(frozen=True)
class Clip:
    """Matching seconds of one vehicle merged into [start_ms, end_ms), epoch ms UTC."""

    vehicle_id: str
    start_ms: int
    end_ms: int
    matched_seconds: int


def truth(expr: Expr, row: LabelRow) -> bool | None:
    """The expression's Kleene truth value on one row (None = unknown)."""
    if isinstance(expr, TagAtom):
        return row.tag_value(expr.tag)
    if isinstance(expr, Compare):
        value = row.numeric_value(expr.numeric)
        return None if value is None else _OPS[expr.op](value, expr.value)
    if isinstance(expr, Not):
        inner = truth(expr.operand, row)
        return None if inner is None else not inner
    values = [truth(operand, row) for operand in expr.operands]
    if isinstance(expr, And):
        return False if False in values else (None if None in values else True)
    if isinstance(expr, Or):
        return True if True in values else (None if None in values else False)
    raise TypeError(f"not an expression node: {expr!r}")


def evaluate_rows(expr: Expr, rows: Iterable[LabelRow]) -> list[LabelRow]:
    """The rows on which `expr` is TRUE (unknown does not match), in input order."""
    return [row for row in rows if truth(expr, row) is True]


def build_clips(rows: Sequence[LabelRow], merge_gap_s: int, min_clip_s: int) -> list[Clip]:
    """Merge matching seconds into clips per vehicle (see compiler docstring for the rule)."""
    clips: list[Clip] = []
    ordered = sorted(rows, key=lambda r: (r.vehicle_id, r.ts_ms))
    start = 0
    for i in range(1, len(ordered) + 1):
        prev = ordered[i - 1]
        if i < len(ordered) and ordered[i].vehicle_id == prev.vehicle_id \
                and ordered[i].ts_ms - prev.ts_ms <= 1000 * (1 + merge_gap_s):
            continue
        clip = Clip(prev.vehicle_id, ordered[start].ts_ms, prev.ts_ms + 1000, i - start)
        if clip.end_ms - clip.start_ms >= 1000 * min_clip_s:
            clips.append(clip)
        start = i
    return clips


def evaluate_request(request: MineRequest, rows: Iterable[LabelRow],
                     taxonomy: Taxonomy) -> list[LabelRow] | list[Clip]:
    """Reference answer to a whole request over in-memory rows (one row per vehicle-second).

    Returns matching rows sorted by (vehicle_id, ts_ms) for output="seconds", else clips;
    truncated to `request.limit` like the SQL.
    """
    expr = parse(request.expression, taxonomy)
    kept = [
        row for row in rows
        if (request.start_ms is None or row.ts_ms >= request.start_ms)
        and (request.end_ms is None or row.ts_ms < request.end_ms)
        and (not request.vehicle_ids or row.vehicle_id in request.vehicle_ids)
        and (not request.parks or row.park in request.parks)
    ]
    matched = sorted(evaluate_rows(expr, kept), key=lambda r: (r.vehicle_id, r.ts_ms))
    if request.output == "seconds":
        return matched[: request.limit]
    return build_clips(matched, request.merge_gap_s, request.min_clip_s)[: request.limit]
