"""Pose samples per second through heartbeat-ingest end to end (Kafka -> ClickHouse + Redis).

The service consumes a pre-published fleet stream (heartbeat + pose per vehicle-second) until
caught up; the baseline consumes the same topics and writes each message as it arrives (one
INSERT and one Redis write per message), measured in the same run on the same stack. The
process is pinned to one core; the broker runs beside it, as it would on its own host.

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
from services.heartbeat_ingest.service import HeartbeatIngest  # noqa: E402
from tests.fleetdata import drive  # noqa: E402


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
    """Row by row: decode, INSERT each message's rows or write Redis, commit; per message.

    The cost of each kind of message is timed separately until `per_kind` of each were handled,
    so the rate holds for the stream's mix (one heartbeat and one pose batch per vehicle-second)
    whatever order the partitions are fetched in.
    """
    redis = connect(settings.redis_url)
    spent = {"pose": 0.0, "heartbeat": 0.0}
    handled = {"pose": 0, "heartbeat": 0}

    async def per_message(records):
        for record in records:
            started = time.perf_counter()
            payload = "pose" if record.topic == topics.POSE else "heartbeat"
            env = codec.decode_envelope(record.value, record.key, payload)
            if payload == "pose":
                arrays = codec.pose_arrays(env.pose)
                ods, _ = rows.pose_tables([env], arrays, np.array([env.pose.sample_count]))
                warehouse.insert_arrow("baseline_pose", ods)
            else:
                await redis.hset(f"fl:bench:vehicle:{env.vehicle_id}", mapping={"last_seen_ms": env.event_time_ms})
            spent[payload] += time.perf_counter() - started
            handled[payload] += 1
        return []

    warehouse.command("CREATE TABLE IF NOT EXISTS baseline_pose AS ods_pose")
    bus = Bus(settings.kafka_bootstrap_servers)
    await bus.start()
    consumer = BatchConsumer(bootstrap=settings.kafka_bootstrap_servers, group_id="baseline",
                             topic_names=[topics.HEARTBEAT, topics.POSE], handler=per_message, bus=bus,
                             service="baseline", batch_max=1)
    await consumer.start()
    while min(handled.values()) < per_kind:
        await consumer.poll_once()
    await consumer.stop()
    await bus.stop()
    await redis.aclose()
    vehicle_second_s = spent["pose"] / handled["pose"] + spent["heartbeat"] / handled["heartbeat"]
    return 10 / vehicle_second_s


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
    print(f"baseline (row by row, per-message INSERT + Redis write): {baseline:,.0f} samples/s")
    return {"bench": "ingest", "value": round(value), "unit": "pose samples/s", "baseline": round(baseline),
            "ratio": round(value / baseline, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(json.dumps(asyncio.run(main(args.quick))))
