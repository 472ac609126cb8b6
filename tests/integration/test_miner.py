"""The miner against the real chDB: index + scan answers equal the brute-force evaluator, and the
gRPC surface (errors with positions, streaming, explain, tags, counts, distribution)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import grpc
import numpy as np
import pytest
from fleetloop.labels import LABEL_TABLE, LabelRow, load_taxonomy, rows_to_columns
from fleetloop.query import MineRequest, evaluate_request, parse, truth
from fleetloop.query.ast import Not, TagAtom
from fleetloop.query.index import HOUR_MS, build_hour_index
from fleetloop.v1 import miner_pb2, miner_pb2_grpc

from services.label_indexer.service import INDEX_HOUR_TABLE, MIGRATIONS, store_hour_index
from services.miner.engine import Miner
from services.miner.service import MinerService
from tests.conftest import truncate_owned_tables, wait_until
from tests.integration.test_query_chdb import PARKS, TAGS, VEHICLES, random_expression

pytestmark = pytest.mark.integration

TX = load_taxonomy()
HOUR0 = 1_780_304_400_000          # 2026-06-01T09:00:00Z
SECONDS = 3 * 3600 - 1200          # 09:00 .. 11:40: hours 9 and 10 sealed, hour 11 unsealed


def random_rows(rng: random.Random) -> list[LabelRow]:
    """Per-vehicle Markov chains over three hours, with gaps, unknowns and numeric values."""
    rows = []
    for v_index, vehicle in enumerate(VEHICLES):
        value = {t: rng.random() < 0.4 for t in TAGS}
        known = {t: rng.random() < 0.9 for t in TAGS}
        speed = rng.uniform(0, 60)
        for s in range(0, SECONDS, 2 if v_index % 2 else 1):
            for t in TAGS:
                if rng.random() < 0.05:
                    value[t] = not value[t]
                if rng.random() < 0.01:
                    known[t] = not known[t]
            speed = min(max(speed + rng.gauss(0, 4), 0.0), 90.0)
            if rng.random() < 0.05:
                continue
            rows.append(LabelRow(vehicle, HOUR0 + 1000 * s, TX.bitset([t for t in TAGS if known[t] and value[t]]),
                                 TX.bitset([t for t in TAGS if known[t]]),
                                 {"ego.speed_kph": float(np.float32(speed))}, park=PARKS[v_index % len(PARKS)]))
    return rows


def load(warehouse, rows: list[LabelRow], sealed_hours: int) -> None:
    """Insert the rows; seal the first `sealed_hours` hours, mark the rest unsealed."""
    warehouse.migrate("label_indexer", MIGRATIONS)
    truncate_owned_tables(warehouse, (LABEL_TABLE, "dwd_label_index"))
    columns = rows_to_columns(rows, TX)
    warehouse.insert_rows(LABEL_TABLE, list(zip(*columns.values(), strict=True)), list(columns))
    hours = sorted({r.ts_ms - r.ts_ms % HOUR_MS for r in rows})
    for number, hour in enumerate(hours):
        if number >= sealed_hours:
            warehouse.insert_rows(INDEX_HOUR_TABLE, [(hour // 1000, 1, 0, [], 0)],
                                  ["hour", "version", "sealed", "vehicles", "rows"])
            continue
        in_hour = [r for r in rows if hour <= r.ts_ms < hour + HOUR_MS]
        t = np.array([[(r.tags >> (64 * w)) & (2**64 - 1) for w in range(TX.word_count)] for r in in_hour], np.uint64)
        k = np.array([[(r.known >> (64 * w)) & (2**64 - 1) for w in range(TX.word_count)] for r in in_hour], np.uint64)
        index = build_hour_index(hour, [r.vehicle_id for r in in_hour], [r.ts_ms for r in in_hour], t, k,
                                 [r.park for r in in_hour])
        store_hour_index(warehouse, index, version=2)


@pytest.fixture(scope="module")
def mined(warehouse):
    rows = random_rows(random.Random(17))
    load(warehouse, rows, sealed_hours=2)
    return Miner(warehouse, TX), rows


def asserted_tags(expr, negated: bool = False) -> list[str]:
    """The tags an expression asks to be present (under an even number of `!`), first appearance first;
    the test's own reading of `matched_tags`, written apart from the miner's."""
    if isinstance(expr, TagAtom):
        return [] if negated else [expr.tag.name]
    if isinstance(expr, Not):
        return asserted_tags(expr.operand, not negated)
    names = [name for operand in getattr(expr, "operands", ()) for name in asserted_tags(operand, negated)]
    return list(dict.fromkeys(names))


def test_asserted_tags_reads_negations_and_repeats():
    expr = parse("weather.rain & !(light.night | !junction.signalized) & (weather.rain | agent.car) & "
                 "ego.speed_kph > 30", TX)
    assert asserted_tags(expr) == ["weather.rain", "junction.signalized", "agent.car"]


def expected_clips(request: MineRequest, rows: list[LabelRow]) -> list[tuple]:
    expr = parse(request.expression, TX)
    atoms = asserted_tags(expr)
    by_vehicle: dict[str, list[LabelRow]] = {}
    for row in rows:
        by_vehicle.setdefault(row.vehicle_id, []).append(row)
    out = []
    for clip in evaluate_request(request, rows, TX):
        seconds = [r for r in by_vehicle[clip.vehicle_id] if clip.start_ms <= r.ts_ms < clip.end_ms
                   and truth(expr, r) is True]
        tags = tuple(name for name in atoms if any(r.tag_value(TX.tag(name)) for r in seconds))
        out.append((clip.vehicle_id, clip.start_ms, clip.end_ms, clip.matched_seconds, tags))
    return out


def got_clips(miner: Miner, request: MineRequest) -> list[tuple]:
    return [(c.vehicle_id, c.start_ms, c.end_ms, c.matched_seconds, c.matched_tags) for c in miner.mine(request).clips]


def test_index_plus_scan_equals_the_brute_force_evaluator(mined):
    miner, rows = mined
    rng = random.Random(23)
    texts = ["rain & night & junction.signalized & agent.tricycle & !mode.manual", "rain | !night"]
    texts += [random_expression(rng, rng.randint(1, 3)) for _ in range(25)]
    plans = set()
    for text in texts:
        request = MineRequest(text, merge_gap_s=rng.randint(0, 2), min_clip_s=rng.randint(0, 3), limit=1_000_000)
        assert got_clips(miner, request) == expected_clips(request, rows), text
        plans.add(miner.mine(replace(request, limit=1)).plan)
    assert plans == {"index", "scan"}     # both paths were exercised


def test_filters_limits_and_hour_boundaries(mined):
    miner, rows = mined
    rng = random.Random(4)
    for _ in range(12):
        text = random_expression(rng, 2)
        request = MineRequest(text, start_ms=HOUR0 + 1000 * rng.randint(0, 5000),
                              end_ms=HOUR0 + 1000 * rng.randint(5500, SECONDS), merge_gap_s=rng.randint(0, 3),
                              vehicle_ids=tuple(rng.sample(VEHICLES, 4)), parks=tuple(rng.sample(PARKS, 2)),
                              limit=rng.randint(1, 40))
        assert got_clips(miner, request) == expected_clips(request, rows), request
    # Clips running across the sealed/sealed and the sealed/unsealed hour boundary stay one clip.
    request = MineRequest("road.urban | !road.urban", merge_gap_s=5, limit=1_000_000)
    got = got_clips(miner, request)
    assert got == expected_clips(request, rows)
    for boundary in (HOUR0 + HOUR_MS, HOUR0 + 2 * HOUR_MS):
        assert any(start < boundary < end for _, start, end, _, _ in got)


def test_count_explain_and_distribution(mined):
    miner, rows = mined
    expr = parse("rain & !night", TX)
    want = sum(1 for r in rows if truth(expr, r) is True)
    counts = miner.count(MineRequest("rain & !night"))
    assert counts["seconds"] == want and counts["km"] == 0.0
    assert counts["clips"] == len(evaluate_request(MineRequest("rain & !night", limit=1_000_000), rows, TX))
    explained = miner.explain(MineRequest("rain & !night"))
    assert explained["expression"] == "weather.rain & !light.night"
    assert explained["bitmap_algebra"] == "(t2 ∩ (k7 − t7))" and "2 sealed hour(s)" in explained["plan"]
    assert "bitAnd(t0, 4) = 4" in explained["sql"]
    dist = miner.distribution("", ["weather.rain"], MineRequest("rain | !rain"))
    counts_by = {tuple(r["combination"]): r["seconds"] for r in dist}
    rain = TX.tag("weather.rain")
    assert counts_by[("weather.rain",)] == sum(1 for r in rows if r.tag_value(rain) is True)
    assert counts_by[("?weather.rain",)] == sum(1 for r in rows if r.tag_value(rain) is None)
    assert sum(r["share"] for r in dist) == pytest.approx(1.0)


async def test_grpc_mine_streams_and_bad_queries_get_positions(mined, settings):
    service = MinerService(settings, mined[0].warehouse, bus=None)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await wait_until(lambda: asyncio.sleep(0, service.grpc_port != 0))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = miner_pb2_grpc.MinerServiceStub(channel)
            chunks = [c async for c in stub.Mine(miner_pb2.MineRequest(expression="rain", chunk_size=7, limit=30))]
            assert [len(c.clips) for c in chunks] == [7, 7, 7, 7, 2] and chunks[-1].last
            assert chunks[0].expression == "weather.rain" and chunks[0].plan == "index"
            clips = [c for chunk in chunks for c in chunk.clips]
            want = expected_clips(MineRequest("rain", limit=30), mined[1])
            assert [(c.vehicle_id, c.start_ms, c.end_ms, c.matched_seconds) for c in clips] == [w[:4] for w in want]
            for text, position, fragment in (("rain & nite", 7, "unknown tag 'nite' at 7; did you mean 'night'"),
                                             ("rain & (night", 13, "expected ')'"),
                                             ("ego.speed_kph > fast", 16, "expected a number")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Count(miner_pb2.MineRequest(expression=text))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert fragment in err.value.details()
                assert err.value.details().splitlines()[-1] == "  " + " " * position + "^"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [c async for c in stub.Mine(miner_pb2.MineRequest(expression="rain", start_ms=5, end_ms=4))]
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            tags = await stub.ListTags(miner_pb2.ListTagsRequest())
            names = {t.name for t in tags.tags}
            assert len(names) >= 60 and "junction.signalized" in names and "ego.speed_kph" in names
            explained = await stub.Explain(miner_pb2.MineRequest(expression="rain & ego.speed_kph > 3"))
            assert explained.plan.startswith("full scan") and explained.bitmap_algebra == ""
    finally:
        stop.set()
        await task
