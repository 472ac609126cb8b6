"""Compiler and reference evaluator without a database: SQL shape, parameters, semantics."""

from __future__ import annotations

import pytest
from fleetloop.labels import LabelRow, load_taxonomy
from fleetloop.query import (
    Clip,
    MineRequest,
    QueryError,
    build_clips,
    compile_query,
    evaluate_request,
    evaluate_rows,
    explain,
    parse,
    truth,
)

TX = load_taxonomy()
T0 = 1_700_000_000_000


def row(ts_s: int, true=(), false=(), values=None, vehicle="v1", park="p1") -> LabelRow:
    tags = TX.bitset(list(true))
    return LabelRow(vehicle, T0 + 1000 * ts_s, tags=tags, known=tags | TX.bitset(list(false)),
                    values=values or {}, park=park)


def test_tags_of_one_word_fold_into_one_mask():
    ex = explain(parse("rain & night & junction.signalized & agent.tricycle & !mode.manual", TX))
    mask = sum(1 << TX.tag(n).bit for n in ("weather.rain", "light.night", "junction.signalized",
                                             "agent.tricycle"))
    assert f"bitAnd(t0, {mask}) = {mask}" in ex.where_sql
    assert "(bitAnd(k1, 1) = 1 AND bitAnd(t1, 1) = 0)" in ex.where_sql   # mode.manual is bit 64
    assert ex.where_sql.count("bitAnd(t0") == 1 and ex.parameters == {}


def test_or_of_tags_is_an_any_bit_test():
    ex = explain(parse("rain | snow | fog", TX))
    assert ex.where_sql == "bitAnd(t0, 28) != 0"


def test_numeric_values_are_parameters_never_sql_text():
    ex = explain(parse("ego.speed_kph > 12345.5 & agent.lead_ttc_s != 1.25", TX))
    assert "12345.5" not in ex.where_sql and "1.25" not in ex.where_sql
    assert sorted(ex.parameters.values()) == [1.25, 12345.5]
    assert "{v0:Float32}" in ex.where_sql and "{v1:Float32}" in ex.where_sql


def test_request_values_with_sql_in_them_stay_out_of_the_sql_text():
    evil = "v1'); DROP TABLE dwd_label_second; --"
    park = 'p"1\\\' OR 1=1'
    compiled = compile_query(MineRequest("rain", vehicle_ids=(evil,), parks=(park,), start_ms=T0, end_ms=T0 + 5000,
                                         merge_gap_s=2, min_clip_s=3, limit=77), TX)
    for value in (evil, park, "DROP", str(T0), "77"):
        assert value not in compiled.sql
    assert compiled.parameters["vehicle_ids"] == [evil] and compiled.parameters["parks"] == [park]
    assert compiled.parameters["gap_ms"] == 3000 and compiled.parameters["min_clip_ms"] == 3000
    assert compiled.columns == ("vehicle_id", "start_ms", "end_ms", "matched_seconds")
    assert compiled.expression == "weather.rain"


def test_bad_expression_in_a_request_raises_query_error():
    with pytest.raises(QueryError, match="did you mean 'night'"):
        compile_query(MineRequest("rain & nigth"), TX)


@pytest.mark.parametrize("kwargs", [
    dict(output="frames"), dict(output="seconds", merge_gap_s=1), dict(merge_gap_s=-1), dict(limit=0),
    dict(start_ms=T0, end_ms=T0),
])
def test_invalid_requests_are_rejected(kwargs):
    with pytest.raises(ValueError):
        MineRequest("rain", **kwargs)


def test_table_name_is_validated():
    with pytest.raises(ValueError):
        compile_query(MineRequest("rain"), TX, table="labels; DROP TABLE x")


def test_unknown_is_neither_true_nor_false():
    unknown_rain = row(0, true=["light.night"])
    assert truth(parse("rain", TX), unknown_rain) is None
    assert truth(parse("!rain", TX), unknown_rain) is None
    assert truth(parse("rain | night", TX), unknown_rain) is True
    assert truth(parse("rain & !night", TX), unknown_rain) is False
    assert truth(parse("ego.speed_kph != 3", TX), unknown_rain) is None
    assert evaluate_rows(parse("!rain", TX), [unknown_rain, row(1, false=["weather.rain"])]) == [
        row(1, false=["weather.rain"])]


def test_clips_merge_gaps_and_drop_short_ones():
    # Matching seconds 0,1,2, 4, 8,9 of v1 and 0 of v2.
    rows = [row(s) for s in (0, 1, 2, 4, 8, 9)] + [row(0, vehicle="v2")]
    assert build_clips(rows, merge_gap_s=0, min_clip_s=0) == [
        Clip("v1", T0, T0 + 3000, 3), Clip("v1", T0 + 4000, T0 + 5000, 1), Clip("v1", T0 + 8000, T0 + 10000, 2),
        Clip("v2", T0, T0 + 1000, 1)]
    assert build_clips(rows, merge_gap_s=1, min_clip_s=2) == [
        Clip("v1", T0, T0 + 5000, 4), Clip("v1", T0 + 8000, T0 + 10000, 2)]
    assert build_clips(rows, merge_gap_s=3, min_clip_s=6) == [Clip("v1", T0, T0 + 10000, 6)]


def test_reference_request_applies_filters():
    rows = [row(s, true=["weather.rain"], park="p1" if s < 5 else "p2") for s in range(10)]
    got = evaluate_request(MineRequest("rain", output="seconds", start_ms=T0 + 2000, end_ms=T0 + 8000,
                                       parks=("p2",)), rows, TX)
    assert [r.ts_ms for r in got] == [T0 + 5000, T0 + 6000, T0 + 7000]
