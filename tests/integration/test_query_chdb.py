"""Compiled SQL against the real embedded ClickHouse (chDB) equals the brute-force evaluator.

One chDB engine per process: this module uses the session-wide `warehouse` fixture of
tests/conftest.py and its own table (the migration's DDL under a test name), dropped after.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import yaml
from fleetloop.labels import LABEL_TABLE, LabelRow, label_columns, load_taxonomy, parse_taxonomy, rows_to_columns
from fleetloop.labels.taxonomy import DEFAULT_PATH
from fleetloop.query import MineRequest, QueryError, compile_query, evaluate_request
from fleetloop.warehouse import split_statements

from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration

MIGRATION = REPO_ROOT / "services" / "label_indexer" / "migrations" / "001_labels.sql"
TX = load_taxonomy()
T0 = 1_700_000_000_000
# Tags spanning both bit words, and numeric values, that the random rows and expressions use.
TAGS = ["weather.rain", "light.night", "junction.signalized", "agent.tricycle", "agent.pedestrian", "crosswalk",
        "ego.stopped", "road.urban", "mode.manual", "mode.autonomous", "data.no_perception", "connectivity.none"]
NUMERIC = ["ego.speed_kph", "agent.pedestrian_count", "agent.lead_ttc_s"]
VEHICLES = ["veh-001", "veh-002", "veh-003", "veh-004", "v'5\"); DROP TABLE dwd_label_second; --", "veh-006"]
PARKS = ["park-north", "park-south", "o'hare"]
SECONDS = 600
TABLE = "test_query_label_second"


def random_rows(rng: random.Random, stale: bool = False) -> list[LabelRow]:
    """Per-vehicle Markov chains (tags persist for several seconds, so clips form), with
    dropped seconds, unknown tags and unknown numeric values."""
    rows = []
    for v_index, vehicle in enumerate(VEHICLES):
        value = {t: rng.random() < 0.4 for t in TAGS}
        known = {t: rng.random() < 0.9 for t in TAGS}
        speed = rng.uniform(0, 60)
        for s in range(SECONDS):
            for t in TAGS:
                if rng.random() < 0.12:
                    value[t] = not value[t]
                if rng.random() < 0.03:
                    known[t] = not known[t]
            speed = min(max(speed + rng.gauss(0, 4), 0.0), 90.0)
            if rng.random() < 0.1:
                continue
            values = {"ego.speed_kph": float(np.float32(round(speed) if rng.random() < 0.2 else speed))}
            if known["agent.pedestrian"]:
                values["agent.pedestrian_count"] = float(rng.randint(0, 5))
            if rng.random() < 0.5:
                values["agent.lead_ttc_s"] = float(np.float32(rng.uniform(0.2, 8.0)))
            true_bits = TX.bitset([t for t in TAGS if known[t] and value[t]])
            known_bits = TX.bitset([t for t in TAGS if known[t]])
            if stale:
                true_bits, known_bits = known_bits, known_bits
            rows.append(LabelRow(vehicle, T0 + 1000 * s, true_bits, known_bits, values,
                                 park=PARKS[v_index % len(PARKS)]))
    return rows


def random_expression(rng: random.Random, depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        if rng.random() < 0.7:
            return rng.choice(TAGS)
        name = rng.choice(NUMERIC)
        op = rng.choice([">", ">=", "<", "<=", "=", "!="])
        number = {"ego.speed_kph": lambda: rng.choice([rng.randint(0, 60), round(rng.uniform(0, 60), 2)]),
                  "agent.pedestrian_count": lambda: rng.randint(0, 5),
                  "agent.lead_ttc_s": lambda: round(rng.uniform(0, 8), 1)}[name]()
        return f"{name} {op} {number}"
    kind = rng.choice(["&", "|", "!"])
    if kind == "!":
        return f"!({random_expression(rng, depth - 1)})"
    return f"({random_expression(rng, depth - 1)} {kind} {random_expression(rng, depth - 1)})"


def insert(warehouse, rows: list[LabelRow]) -> None:
    columns = rows_to_columns(rows, TX)
    warehouse.insert_rows(TABLE, list(zip(*columns.values(), strict=True)), list(columns))


@pytest.fixture(scope="module")
def label_db(warehouse):
    """(warehouse, rows): the label table holding random rows, after a stale re-label."""
    warehouse.command(f"DROP TABLE IF EXISTS {TABLE}")
    for statement in split_statements(MIGRATION.read_text().replace(LABEL_TABLE, TABLE)):
        warehouse.command(statement)
    insert(warehouse, random_rows(random.Random(7), stale=True))   # superseded by the next insert
    rows = random_rows(random.Random(7))
    insert(warehouse, rows)
    yield warehouse, rows
    warehouse.command(f"DROP TABLE IF EXISTS {TABLE}")


def run(warehouse, request: MineRequest, taxonomy=TX) -> list[tuple]:
    compiled = compile_query(request, taxonomy, table=TABLE)
    return [tuple(r) for r in warehouse.query_rows(compiled.sql, compiled.parameters)]


def expected(request: MineRequest, rows, taxonomy=TX) -> list[tuple]:
    result = evaluate_request(request, rows, taxonomy)
    if request.output == "seconds":
        return [(r.vehicle_id, r.ts_ms) for r in result]
    return [(c.vehicle_id, c.start_ms, c.end_ms, c.matched_seconds) for c in result]


def test_migration_matches_the_taxonomy_layout(label_db):
    warehouse, _ = label_db
    described = warehouse.query_rows(f"DESCRIBE TABLE {TABLE}")
    assert tuple(r[0] for r in described) == label_columns(TX)
    types = {r[0]: r[1] for r in described}
    assert types["ts"] == "DateTime64(3, 'UTC')" and types["t0"] == "UInt64"


def test_rows_round_trip_through_the_table(label_db):
    warehouse, rows = label_db
    stored = warehouse.query_rows(f"SELECT count(), sum(toUInt128(t0)), sum(toUInt128(k1)) FROM {TABLE} FINAL")[0]
    assert stored[0] == len(rows)
    assert stored[1] == sum(r.tags & (2**64 - 1) for r in rows)
    assert stored[2] == sum((r.known >> 64) & (2**64 - 1) for r in rows)


def test_random_expressions_match_the_brute_force_evaluator(label_db):
    warehouse, rows = label_db
    rng = random.Random(11)
    expressions = ["rain & night & junction.signalized & agent.tricycle & !mode.manual"]
    expressions += [random_expression(rng, rng.randint(1, 4)) for _ in range(40)]
    nonempty = 0
    for text in expressions:
        seconds = MineRequest(text, output="seconds", limit=1_000_000)
        got = run(warehouse, seconds)
        assert got == expected(seconds, rows), text
        nonempty += bool(got)
        clips = MineRequest(text, merge_gap_s=rng.randint(0, 3), min_clip_s=rng.randint(0, 4), limit=1_000_000)
        assert run(warehouse, clips) == expected(clips, rows), (text, clips)
    assert nonempty >= len(expressions) // 2   # the comparison is not vacuous


def test_filters_and_limit_match_the_brute_force_evaluator(label_db):
    warehouse, rows = label_db
    rng = random.Random(5)
    for _ in range(12):
        text = random_expression(rng, 2)
        options = dict(start_ms=T0 + 1000 * rng.randint(0, 200), end_ms=T0 + 1000 * rng.randint(300, SECONDS),
                       vehicle_ids=tuple(rng.sample(VEHICLES, 3)), parks=tuple(rng.sample(PARKS, 2)))
        for request in (MineRequest(text, output="seconds", limit=rng.randint(1, 50), **options),
                        MineRequest(text, merge_gap_s=1, min_clip_s=2, limit=rng.randint(1, 20), **options)):
            assert run(warehouse, request) == expected(request, rows), request


def test_quoted_vehicle_ids_are_bound_not_spliced(label_db):
    warehouse, rows = label_db
    request = MineRequest("!rain | rain", output="seconds", vehicle_ids=(VEHICLES[4],), limit=1_000_000)
    got = run(warehouse, request)
    assert got and {v for v, _ in got} == {VEHICLES[4]}
    assert got == expected(request, rows)


def test_a_tag_newer_than_the_rows_is_unknown_not_false(label_db):
    warehouse, rows = label_db
    data = copy.deepcopy(yaml.safe_load(DEFAULT_PATH.read_text()))
    data["version"] = 2
    data["tags"].append({"name": "road.bridge", "bit": 78, "family": "road", "since": 2})
    tx2 = parse_taxonomy(data)
    for text in ("road.bridge", "!road.bridge", "rain & !road.bridge"):
        request = MineRequest(text, output="seconds", limit=1_000_000)
        assert run(warehouse, request, tx2) == [] == expected(request, rows, tx2)
    with pytest.raises(QueryError):
        compile_query(MineRequest("road.bridge"), TX)
