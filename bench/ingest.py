"""Pose samples per second through heartbeat-ingest end to end (Kafka -> ClickHouse + Redis).

The service consumes a pre-published fleet stream (heartbeat + pose per vehicle-second) until
caught up. The baseline, in the same run on the same stack, consumes the same topics one message at
a time and does the same work for each: decode, screen (the per-message rules), INSERT its ODS and
DWD rows, write the heartbeat's live state to Redis (the service's `LiveState`), commit its offset.
Both are timed the same way, by wall clock from the first poll to the last message handled, fetches
and commits included, and both report pose samples per second with the heartbeats handled alongside.
The process is pinned to one core; the broker runs beside it, as it would on its own host.

    .venv/bin/python bench/ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from fleetloop import codec, topics  # noqa: E402
from fleetloop.bus import BatchConsumer, Bus, ensure_topics  # noqa: E402
from fleetloop.config import Settings  # noqa: E402
from fleetloop.embedded import start_broker, start_redis  # noqa: E402
from fleetloop.state import connect  # noqa: E402
from fleetloop.warehouse import Warehouse  # noqa: E402

from services.heartbeat_ingest import rows  # noqa: E402
from services.heartbeat_ingest.live_state import LiveState  # noqa: E402
from services.heartbeat_ingest.service import HeartbeatIngest  # noqa: E402
from tests.support.fleetdata import drive  # noqa: E402


async def publish(bootstrap: str, vehicles: int, seconds: int) -> int:
    await ensure_topics(bootstrap)
    bus = Bus(bootstrap)
    await bus.start()
    for v in range(vehicles):
        batch = drive(f"veh-{v:05d}", seconds, speed=9.0)
        await bus.send_many([(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in batch])
    await bus.stop()
    return vehicles * seconds * 10


async def run_service(settings: Settings, warehouse: Warehouse, samples: int) -> float:
    bus = Bus(settings.kafka_bootstrap_servers)
    await bus.start()
    service = HeartbeatIngest(settings, warehouse, bus)
    service.migrate()
    await service.consumer.start()
    started = time.perf_counter()
    while True:
        # Stop at the poll that drained the topics, so no idle poll timeout is timed.
        handled = await service.consumer.poll_once()
        if handled and await service.consumer.lag() == 0:
            break
    elapsed = time.perf_counter() - started
    await service.consumer.stop()
    await bus.stop()
    landed = warehouse.query_rows("SELECT count() FROM ods_pose")[0][0]
    assert landed >= samples, f"only {landed} of {samples} samples landed"
    return samples / elapsed


async def run_baseline(settings: Settings, warehouse: Warehouse, per_kind: int) -> float:
    """Row by row: per message, decode, screen, INSERT its ODS and DWD rows (pose) or its ODS and DWD
    rows plus the Redis live state (heartbeat), then commit; until `per_kind` of each kind were handled.
    Returns pose samples per wall-clock second, as `run_service` does."""
    redis = connect(settings.redis_url)
    await redis.flushdb()  # the service's live state is not left for the baseline to skip over
    live = LiveState(redis)
    handled = {"pose": 0, "heartbeat": 0}

    async def per_message(records):
        for record in records:
            payload = "pose" if record.topic == topics.POSE else "heartbeat"
            env = codec.decode_envelope(record.value, record.key, payload)
            if payload == "pose":
                arrays = codec.pose_arrays(env.pose)
                ods, dwd = rows.pose_tables([env], arrays, np.array([env.pose.sample_count]))
                warehouse.insert_arrow("baseline_pose", ods)
            else:
                codec.check_heartbeat(env.heartbeat)
                ods, dwd = rows.heartbeat_tables([env])
                warehouse.insert_arrow("baseline_heartbeat", ods)
                await live.apply([env])
            warehouse.insert_arrow("baseline_second", dwd)
            handled[payload] += 1
        return []

    for table, like in (("baseline_pose", "ods_pose"), ("baseline_heartbeat", "ods_heartbeat"),
                        ("baseline_second", "dwd_vehicle_second")):
        warehouse.command(f"CREATE TABLE IF NOT EXISTS {table} AS {like}")
    bus = Bus(settings.kafka_bootstrap_servers)
    await bus.start()
    # One consumer per topic, polled in turn: the stream's mix (a heartbeat per pose batch) whatever
    # the fetcher has buffered, and each consumer keeps its own prefetched records.
    consumers = {kind: BatchConsumer(bootstrap=settings.kafka_bootstrap_servers, group_id=f"baseline-{kind}",
                                     topic_names=[topic], handler=per_message, bus=bus, service="baseline",
                                     batch_max=1)
                 for kind, topic in (("pose", topics.POSE), ("heartbeat", topics.HEARTBEAT))}
    for consumer in consumers.values():
        await consumer.start()
    started = time.perf_counter()
    while min(handled.values()) < per_kind:
        kind = "pose" if handled["pose"] <= handled["heartbeat"] else "heartbeat"
        await consumers[kind].poll_once()  # one message: fetch, handle, commit
    elapsed = time.perf_counter() - started
    for consumer in consumers.values():
        await consumer.stop()
    await bus.stop()
    await redis.aclose()
    assert abs(handled["pose"] - handled["heartbeat"]) <= 1, f"the mix drifted: {handled}"
    return 10 * handled["pose"] / elapsed


async def main(quick: bool) -> dict:
    vehicles, seconds = (100, 120) if quick else (500, 240)
    workdir = Path(tempfile.mkdtemp(prefix="fleetloop-bench-"))
    broker, bootstrap = start_broker()
    redis_proc, redis_url = start_redis(workdir)
    try:
        samples = await publish(bootstrap, vehicles, seconds)
        warehouse = Warehouse(f"chdb://{workdir / 'warehouse'}")
        settings = Settings(kafka_bootstrap_servers=bootstrap, redis_url=redis_url, clickhouse_url=warehouse.url,
                            data_dir=workdir, consumer_batch_max=5000)
        value = await run_service(settings, warehouse, samples)
        baseline = await run_baseline(settings, warehouse, 300 if quick else 1000)
    finally:
        broker.terminate()
        redis_proc.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"heartbeat-ingest: {samples:,} pose samples ({vehicles} vehicles x {seconds} s, with heartbeats) "
          f"at {value:,.0f} samples/s")
    print(f"baseline (row by row: per message decode, screen, ODS + DWD INSERT, Redis live state, commit): "
          f"{baseline:,.0f} samples/s")
    print("both timed by wall clock from the first poll, fetches and commits included")
    return {"bench": "ingest", "value": round(value), "unit": "pose samples/s", "baseline": round(baseline),
            "ratio": round(value / baseline, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(json.dumps(asyncio.run(main(args.quick))))
