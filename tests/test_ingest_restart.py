"""Killing heartbeat-ingest (SIGKILL) mid-stream and starting it again loses and doubles nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fleetloop import topics
from fleetloop.bus import Bus, ensure_topics

from services.heartbeat_ingest.service import GROUP_ID
from tests.conftest import wait_until
from tests.fleetdata import drive

pytestmark = pytest.mark.integration

VEHICLES, SECONDS = 12, 150


async def committed_total(bootstrap: str) -> int:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP_ID, enable_auto_commit=False)
    await probe.start()
    try:
        total = 0
        for topic in (topics.HEARTBEAT, topics.POSE):
            for partition in range(topics.DEFAULT_PARTITIONS):
                total += await probe.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await probe.stop()


def start_service(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleetloop.cli", "serve", "heartbeat-ingest"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_sigkill_mid_stream_then_restart_neither_loses_nor_doubles(broker, redis_url, tmp_path):
    await ensure_topics(broker)
    bus = Bus(broker)
    await bus.start()
    messages = [m for v in range(VEHICLES) for m in drive(f"veh-{v:03d}", SECONDS, speed=8.0)]
    await bus.send_many([(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in messages])
    await bus.stop()
    total = len(messages)

    chdb_url = f"chdb://{tmp_path / 'warehouse'}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "REDIS_URL": redis_url, "CLICKHOUSE_URL": chdb_url,
           "FLEETLOOP_GRPC_PORT": "0", "FLEETLOOP_CONSUMER_BATCH_MAX": "150", "FLEETLOOP_DATA_DIR": str(tmp_path)}
    started: list[subprocess.Popen] = []
    try:
        await kill_mid_stream_and_restart(broker, env, total, chdb_url, started)
    finally:
        for proc in started:  # a failed assertion must not leave a service running
            if proc.poll() is None:
                proc.kill()


async def kill_mid_stream_and_restart(broker: str, env: dict[str, str], total: int, chdb_url: str,
                                      started: list[subprocess.Popen]) -> None:
    first = start_service(env)
    started.append(first)

    async def some_progress() -> bool:
        assert first.poll() is None, first.stderr.read().decode()
        return await committed_total(broker) >= total // 5

    await wait_until(some_progress, timeout_s=120, poll_s=0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_at_kill = await committed_total(broker)
    assert done_at_kill < total, "the kill must land mid-stream"

    second = start_service(env)
    started.append(second)

    async def all_committed() -> bool:
        assert second.poll() is None, second.stderr.read().decode()
        return await committed_total(broker) == total

    await wait_until(all_committed, timeout_s=180)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0, second.stderr.read().decode()

    # The service's chDB engine is gone with its process; read the warehouse from a fresh one.
    check = subprocess.run([sys.executable, "-c", (
        "import json, sys; from fleetloop.warehouse import Warehouse; w = Warehouse(sys.argv[1]); q = w.query_rows;"
        "print(json.dumps({"
        "'hb': q('SELECT count() FROM ods_heartbeat FINAL')[0][0],"
        "'hb_distinct': q('SELECT uniqExact(vehicle_id, ts) FROM ods_heartbeat')[0][0],"
        "'pose': q('SELECT count() FROM ods_pose FINAL')[0][0],"
        "'seconds': q('SELECT count() FROM dwd_vehicle_second FINAL')[0][0],"
        "'km': q('SELECT sum(distance_m) / 1000 FROM dws_fleet_day')[0][0]}))"), chdb_url],
        capture_output=True, text=True, env=env, check=True)
    counts = json.loads(check.stdout.strip().splitlines()[-1])
    assert counts["hb"] == counts["hb_distinct"] == VEHICLES * SECONDS
    assert counts["pose"] == VEHICLES * SECONDS * 10
    assert counts["seconds"] == VEHICLES * SECONDS
    assert counts["km"] == pytest.approx(VEHICLES * SECONDS * 8.0 / 1000)
