"""Mining latency at scale: the miner (hourly bitmap index) against a full ClickHouse scan and
DuckDB over Parquet, on the same synthetic labels, in one run.

Generates vehicle-seconds directly (vectorised numpy -> Arrow -> chDB, no simulator): 1,000
vehicles x 28 h = 100.8 M rows for the full run, 100 vehicles x 8 h = 2.9 M with --quick. Tags
persist in runs and correlate the way fleet data does: light follows the local hour, weather is
a per-city hourly Markov chain, junctions and crosswalks come in short runs on urban roads,
tricycles and pedestrians are likelier in the city by day, trucks on the highway, 2 % of seconds
lack perception (their environment and agent tags are unknown).

Engines, each answering the same fixed queries as clips (limit 10,000):
- index:    services.miner.engine.Miner (sealed hours -> bitmaps in memory), warm cache;
- scan:     the compiler's SQL over dwd_label_second FINAL (the miner without its index);
- duckdb:   the same predicate and clip SQL in DuckDB over the labels exported to Parquet.

    .venv/bin/python bench/mining.py [--quick] [--dir /tmp/fleetloop-bench-mining]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from fleetloop.labels import LABEL_TABLE, load_taxonomy  # noqa: E402
from fleetloop.query import MineRequest, compile_query, explain, parse  # noqa: E402
from fleetloop.query.index import HOUR_MS, build_hour_index  # noqa: E402
from fleetloop.warehouse import Warehouse  # noqa: E402

from services.label_indexer.service import MIGRATIONS, store_hour_index  # noqa: E402
from services.miner.engine import Miner  # noqa: E402

TX = load_taxonomy()
START_MS = 1_780_308_000_000  # 2026-06-01T10:00:00Z = 18:00 local: evening, night, then day
QUERIES = [
    "rain & night & junction.signalized & agent.tricycle & !mode.manual",
    "rain & night",
    "agent.pedestrian_from_occlusion & crosswalk",
    "junction.any & agent.pedestrian & !light.night",
    "road.highway & agent.truck & ego.speed.high",
    "(weather.fog | weather.rain) & road.tunnel",
    "ego.hard_brake | agent.cut_in",
    "turn.unprotected & ego.turn_left & agent.oncoming",
    "light.day & !weather.rain & road.urban",
]
LIMIT = 10_000


def runs(rng: np.random.Generator, n: int, mean_len: float, p: np.ndarray | float) -> np.ndarray:
    """Boolean (n,) series in runs of ~mean_len s whose share follows p (scalar or per-row)."""
    block = np.cumsum(rng.random(n) < 1.0 / mean_len)
    u = rng.random(int(block[-1]) + 1)
    return u[block] < p


def hour_columns(rng: np.random.Generator, vehicles: int, hour: int, weather: np.ndarray) -> dict:
    """One hour of the fleet: bitset words and the speed column, vehicle-major, second-minor."""
    n = vehicles * 3600
    vehicle_no = np.repeat(np.arange(vehicles), 3600)
    local_h = (START_MS // HOUR_MS + hour + 8) % 24              # the fleet runs in UTC+8
    night = np.full(n, local_h >= 20 or local_h < 5)
    dusk = np.full(n, local_h in (5, 19))
    city_weather = weather[vehicle_no % weather.size]             # 0 clear, 1 cloudy, 2 rain, 3 fog
    highway = runs(rng, n, 900, 0.15)
    park = ~highway & runs(rng, n, 600, 0.3)
    tunnel = ~park & runs(rng, n, 120, 0.04)
    urban = ~highway & ~park
    junction = urban & runs(rng, n, 12, 0.18) | park & runs(rng, n, 10, 0.1)
    signalized = junction & runs(rng, n, 40, 0.5)
    crosswalk = junction & runs(rng, n, 8, 0.5)
    day_factor = np.where(night, 0.3, 1.0)
    pedestrian = runs(rng, n, 15, np.where(park, 0.6, np.where(urban, 0.35, 0.01)) * day_factor)
    tricycle = runs(rng, n, 20, np.where(urban, 0.12, 0.01) * np.where(junction, 2.0, 1.0))
    truck = runs(rng, n, 60, np.where(highway, 0.5, 0.08))
    cyclist = runs(rng, n, 15, np.where(urban, 0.15, 0.02))
    car = runs(rng, n, 30, 0.7)
    occluded = pedestrian & runs(rng, n, 2, 0.01)
    cut_in = runs(rng, n, 3, np.where(highway | urban, 0.01, 0.0))
    oncoming = runs(rng, n, 5, np.where(urban, 0.2, 0.05))
    speed = np.where(highway, 80.0, np.where(park, 18.0, 35.0)) * (0.4 + 0.8 * runs(rng, n, 20, 0.7))
    speed = (speed * rng.uniform(0.8, 1.1, n)).astype(np.float32)
    stopped = runs(rng, n, 30, 0.08)
    speed[stopped] = 0
    turn_left = ~stopped & junction & runs(rng, n, 6, 0.25)
    unprotected = turn_left & ~signalized
    hard_brake = runs(rng, n, 2, 0.002)
    manual = runs(rng, n, 120, 0.03)
    perceived = runs(rng, n, 30, 0.98)
    band = np.searchsorted([10, 30, 60, 90], speed, side="right")
    tags = {
        "weather.clear": city_weather == 0, "weather.cloudy": city_weather == 1, "weather.rain": city_weather == 2,
        "weather.fog": city_weather == 3, "light.day": ~night & ~dusk, "light.dusk": dusk, "light.night": night,
        "road.park": park, "road.urban": urban & ~tunnel, "road.tunnel": tunnel, "road.highway": highway,
        "junction.any": junction, "junction.signalized": signalized, "junction.unsignalized": junction & ~signalized,
        "crosswalk": crosswalk, "turn.unprotected": unprotected, "agent.car": car, "agent.truck": truck,
        "agent.pedestrian": pedestrian, "agent.cyclist": cyclist, "agent.tricycle": tricycle,
        "agent.pedestrian_from_occlusion": occluded, "agent.cut_in": cut_in, "agent.oncoming": oncoming,
        "ego.stopped": stopped, "ego.turn_left": turn_left, "ego.hard_brake": hard_brake,
        "ego.cruise": ~stopped & ~turn_left, "mode.autonomous": ~manual, "mode.manual": manual,
        "task.running": ~stopped, "data.no_perception": ~perceived,
        **{name: band == i for i, name in enumerate(("ego.speed.crawl", "ego.speed.low", "ego.speed.medium",
                                                      "ego.speed.high", "ego.speed.very_high"))},
    }
    perception_families = ("environment", "agents")
    t = np.zeros((n, TX.word_count), np.uint64)
    k = np.zeros((n, TX.word_count), np.uint64)
    for name, value in tags.items():
        tag = TX.tag(name)
        known = perceived if tag.family in perception_families else np.ones(n, bool)
        bit = np.uint64(tag.bit % 64)
        t[:, tag.word] |= (value & known).astype(np.uint64) << bit
        k[:, tag.word] |= known.astype(np.uint64) << bit
    ts = START_MS + hour * HOUR_MS + 1000 * np.tile(np.arange(3600, dtype=np.int64), vehicles)
    return {"vehicle_no": vehicle_no, "ts": ts, "t": t, "k": k, "speed": speed}


def arrow_table(cols: dict, names: np.ndarray, parks: np.ndarray) -> pa.Table:
    n = cols["ts"].size
    data = {"vehicle_id": pa.DictionaryArray.from_arrays(pa.array(cols["vehicle_no"], pa.int32()), pa.array(names)),
            "ts": pa.array(cols["ts"], pa.timestamp("ms", tz="UTC")),
            "park": pa.DictionaryArray.from_arrays(pa.array(cols["vehicle_no"] % parks.size, pa.int32()),
                                                   pa.array(parks)),
            "city": pa.array(np.full(n, "suzhou")).dictionary_encode(),
            "taxonomy_version": pa.array(np.full(n, TX.version, np.uint16))}
    for prefix in ("t", "k"):
        for w in range(TX.word_count):
            data[f"{prefix}{w}"] = pa.array(cols[prefix][:, w])
    nan = pa.array(np.full(n, np.nan, np.float32))
    for numeric in TX.numeric:
        data[numeric.column] = pa.array(cols["speed"]) if numeric.name == "ego.speed_kph" else nan
    return pa.table(data)


def generate(warehouse: Warehouse, parquet: Path, vehicles: int, hours: int, seed: int) -> tuple[int, float, float]:
    """Fill the label table, the index and a Parquet copy; returns (rows, generate s, index s)."""
    rng = np.random.default_rng(seed)
    names = np.array([f"veh-{v:05d}" for v in range(vehicles)])
    parks = np.array([f"park-{p:02d}" for p in range(max(1, vehicles // 25))])
    chain = np.array([[0.75, 0.22, 0.02, 0.01], [0.25, 0.5, 0.22, 0.03], [0.05, 0.4, 0.55, 0.0],
                      [0.3, 0.5, 0.0, 0.2]])  # hourly weather, as the simulator's (sim/world.py)
    weather = np.zeros((hours, 3), int)
    weather[0] = rng.choice(4, size=3, p=[0.5, 0.3, 0.15, 0.05])
    for h in range(1, hours):
        weather[h] = [rng.choice(4, p=chain[w]) for w in weather[h - 1]]
    writer = None
    rows, t_gen, t_index = 0, 0.0, 0.0
    for hour in range(hours):
        started = time.perf_counter()
        cols = hour_columns(rng, vehicles, hour, weather[hour])
        table = arrow_table(cols, names, parks)
        warehouse.insert_arrow(LABEL_TABLE, table)
        writer = writer or pq.ParquetWriter(parquet, table.schema)
        writer.write_table(table)
        t_gen += time.perf_counter() - started
        started = time.perf_counter()
        index = build_hour_index(START_MS + hour * HOUR_MS, names[cols["vehicle_no"]], cols["ts"], cols["t"],
                                 cols["k"], parks[cols["vehicle_no"] % parks.size])
        store_hour_index(warehouse, index, version=1)
        t_index += time.perf_counter() - started
        rows += cols["ts"].size
        print(f"  hour {hour + 1}/{hours}: {rows:,} rows", flush=True)
    writer.close()
    warehouse.command(f"OPTIMIZE TABLE {LABEL_TABLE} FINAL")
    return rows, t_gen, t_index


def duckdb_sql(request: MineRequest) -> tuple[str, dict]:
    """The same predicate (ClickHouse bit functions as DuckDB macros) and clip rule in DuckDB."""
    explanation = explain(parse(request.expression, TX))
    where = re.sub(r"\{(\w+):[^}]+\}", r"$\1", explanation.where_sql)
    sql = f"""
        WITH m AS (SELECT vehicle_id, epoch_ms(ts) AS ts_ms FROM labels WHERE {where}),
        s AS (SELECT *, CASE WHEN ts_ms - lag(ts_ms) OVER w > {1000 * (1 + request.merge_gap_s)}
                             OR lag(ts_ms) OVER w IS NULL THEN 1 ELSE 0 END AS starts_clip FROM m
              WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts_ms)),
        c AS (SELECT *, sum(starts_clip) OVER (PARTITION BY vehicle_id ORDER BY ts_ms) AS clip_no FROM s)
        SELECT vehicle_id, min(ts_ms) AS start_ms, max(ts_ms) + 1000 AS end_ms, count(*) AS matched_seconds
        FROM c GROUP BY vehicle_id, clip_no ORDER BY vehicle_id, start_ms LIMIT {request.limit}"""
    return sql, dict(explanation.parameters)


def timed(fn, repeat: int) -> tuple[list[float], object]:
    out, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        out.append((time.perf_counter() - started) * 1000)
    return out, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 vehicles x 8 h (2.9 M rows), under a minute")
    parser.add_argument("--dir", default="/tmp/fleetloop-bench-mining")
    parser.add_argument("--repeat", type=int, default=0)
    args = parser.parse_args()
    vehicles, hours = (100, 8) if args.quick else (1000, 28)
    repeat = args.repeat or (5 if args.quick else 3)
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    warehouse = Warehouse(f"chdb://{root / 'chdb'}")
    warehouse.migrate("label_indexer", MIGRATIONS)
    parquet = root / "labels.parquet"
    print(f"generating {vehicles} vehicles x {hours} h ...", flush=True)
    rows, t_gen, t_index = generate(warehouse, parquet, vehicles, hours, seed=7)
    disk = subprocess.run(["du", "-sb", str(root / "chdb")], capture_output=True, text=True).stdout.split()[0]
    bitmap_bytes = warehouse.query_rows("SELECT sum(length(bitmap)) FROM dwd_label_index_bitmap FINAL")[0][0]
    print(f"{rows:,} vehicle-seconds: generate+insert {t_gen:.0f} s, index build {t_index:.0f} s; chDB "
          f"{int(disk) / 1e9:.2f} GB (bitmaps {bitmap_bytes / 1e6:.0f} MB), "
          f"Parquet {parquet.stat().st_size / 1e9:.2f} GB")

    miner = Miner(warehouse, TX)
    started = time.perf_counter()
    miner.mine(MineRequest(QUERIES[0], limit=LIMIT))
    cold_ms = (time.perf_counter() - started) * 1000
    duck = duckdb.connect()
    duck.execute("SET threads = 2")
    duck.execute("CREATE MACRO bitAnd(a, b) AS a & b")
    duck.execute("CREATE MACRO bitNot(a) AS ~a")
    duck.execute(f"CREATE VIEW labels AS SELECT * FROM read_parquet('{parquet}')")

    results = {"index": [], "scan": [], "duckdb": []}
    print(f"\n{'query':<70} {'clips':>6} {'index ms':>9} {'scan ms':>9} {'duckdb ms':>9}")
    for text in QUERIES:
        request = MineRequest(text, limit=LIMIT)
        t_index_ms, mined = timed(lambda r=request: miner.mine(r), repeat)
        compiled = compile_query(request, TX)
        t_scan_ms, scanned = timed(lambda c=compiled: warehouse.query_rows(c.sql, c.parameters), repeat)
        sql, params = duckdb_sql(request)
        t_duck_ms, ducked = timed(lambda s=sql, p=params: duck.execute(s, p).fetchall(), repeat)
        got = [(c.vehicle_id, c.start_ms, c.end_ms, c.matched_seconds) for c in mined.clips]
        assert got == [tuple(r) for r in scanned] == [tuple(r) for r in ducked], text
        results["index"] += t_index_ms
        results["scan"] += t_scan_ms
        results["duckdb"] += t_duck_ms
        print(f"{text:<70} {len(got):>6} {np.median(t_index_ms):>9.0f} {np.median(t_scan_ms):>9.0f} "
              f"{np.median(t_duck_ms):>9.0f}", flush=True)
    p50 = {k: float(np.percentile(v, 50)) for k, v in results.items()}
    p95 = {k: float(np.percentile(v, 95)) for k, v in results.items()}
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"\nP50 ms: index {p50['index']:.0f}, scan {p50['scan']:.0f}, duckdb {p50['duckdb']:.0f}; "
          f"P95 ms: index {p95['index']:.0f}, scan {p95['scan']:.0f}, duckdb {p95['duckdb']:.0f}")
    print(f"first query with a cold index cache: {cold_ms:.0f} ms; peak RSS {rss_gb:.1f} GB; cores {os.cpu_count()}")
    print(json.dumps({"bench": "mining", "value": round(p50["index"], 1), "unit": "ms P50 (clips, limit 10k)",
                      "baseline": round(p50["scan"], 1), "ratio": round(p50["scan"] / p50["index"], 1),
                      "duckdb_p50_ms": round(p50["duckdb"], 1), "p95_ms": {k: round(v, 1) for k, v in p95.items()},
                      "rows": rows, "chdb_bytes": int(disk), "bitmap_bytes": int(bitmap_bytes),
                      "parquet_bytes": parquet.stat().st_size, "peak_rss_gb": round(rss_gb, 2),
                      "cold_first_query_ms": round(cold_ms), "quick": args.quick}))


if __name__ == "__main__":
    main()
