"""Killing case-assembler (SIGKILL) in the middle of the uploads and starting it again loses and
duplicates neither a case nor a log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fleetloop import topics
from fleetloop.bus import Bus, ensure_topics
from fleetloop.config import Settings
from fleetloop.state import key
from fleetloop.v1 import triggers_pb2
from fleetloop.vehicle import FleetVehicles, open_store

from services.case_assembler.service import GROUP_ID
from tests.conftest import wait_until
from tests.support.fleetdata import T0_MS, drive

pytestmark = pytest.mark.integration

VEHICLES, SECONDS, TIERS = 30, 150, 2  # one hard-brake case per vehicle: microlog + minilog
# Runs `fleetloop serve case-assembler` whether or not the service is registered in runtime.SERVICES yet.
SERVE = ("from fleetloop import runtime; runtime.SERVICES.setdefault('case-assembler', "
         "('services.case_assembler.service:CaseAssembler', 50052)); from fleetloop.cli import app; "
         "app(['serve', 'case-assembler'])")


def hard_brake(vehicle_id: str, onset_s: float) -> triggers_pb2.TriggerEvent:
    onset = T0_MS + int(onset_s * 1000)
    return triggers_pb2.TriggerEvent(
        trigger_id=f"{vehicle_id}-hb-{onset}", vehicle_id=vehicle_id, trigger="hard_brake",
        category=triggers_pb2.TRIGGER_CATEGORY_MPS, severity=0.4, weight=1.0, onset_ms=onset, peak_ms=onset + 300,
        end_ms=onset + 1000, window_pre_s=10.0, window_post_s=5.0, measurements={"peak_decel_mps2": 5.2})


async def committed(bootstrap: str, topic: str) -> int:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP_ID, enable_auto_commit=False)
    await probe.start()
    try:
        return sum([await probe.committed(TopicPartition(topic, p)) or 0 for p in range(topics.DEFAULT_PARTITIONS)])
    finally:
        await probe.stop()


def start_service(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SERVE], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


async def test_sigkill_mid_upload_then_restart_neither_loses_nor_duplicates(broker, redis_url, redis_client,
                                                                            tmp_path: Path):
    await ensure_topics(broker)
    objects = (tmp_path / "objects").as_uri()
    settings = Settings(kafka_bootstrap_servers=broker, redis_url=redis_url, data_dir=tmp_path,
                        consumer_batch_max=500, consumer_poll_ms=100, object_store_url=objects)
    bus = Bus(broker)
    await bus.start()
    vehicles = FleetVehicles(settings, bus)
    telemetry = [m for v in range(VEHICLES) for m in drive(f"veh-{v:03d}", SECONDS, speed=8.0)]
    for topic, env in telemetry:
        vehicles.observe(topic, env)
    triggers = [hard_brake(f"veh-{v:03d}", 40 + v) for v in range(VEHICLES)]
    await bus.send_many([(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in telemetry
                         if t == topics.HEARTBEAT]
                        + [(topics.TRIGGERS, t.vehicle_id.encode(), t.SerializeToString()) for t in triggers])
    stop = asyncio.Event()
    vehicle_task = asyncio.create_task(vehicles.run(stop))

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "REDIS_URL": redis_url, "FLEETLOOP_GRPC_PORT": "0",
           "CLICKHOUSE_URL": f"chdb://{tmp_path / 'warehouse'}", "FLEETLOOP_CONSUMER_BATCH_MAX": "40",
           "FLEETLOOP_DATA_DIR": str(tmp_path), "FLEETLOOP_OBJECT_STORE_URL": objects}
    first = start_service(env)

    async def some_uploads_done() -> bool:
        assert first.poll() is None, first.stderr.read().decode()
        return vehicles.stats.completed >= VEHICLES * TIERS // 5

    await wait_until(some_uploads_done, timeout_s=180, poll_s=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert await redis_client.scard(key("case-assembler", "active")) > 0, "the kill must land mid-upload"

    second = start_service(env)

    async def all_done() -> bool:
        assert second.poll() is None, second.stderr.read().decode()
        return (vehicles.stats.completed == VEHICLES * TIERS
                and await committed(broker, topics.UPLOADS) == vehicles.stats.manifests
                and await redis_client.scard(key("case-assembler", "active")) == 0)

    await wait_until(all_done, timeout_s=240)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0, second.stderr.read().decode()
    stop.set()
    await vehicle_task
    await bus.stop()

    # The service's chDB engine is gone with its process; read the warehouse from a fresh one.
    check = subprocess.run([sys.executable, "-c", (
        "import json, sys; from fleetloop.warehouse import Warehouse; w = Warehouse(sys.argv[1]); q = w.query_rows;"
        "print(json.dumps({"
        "'cases': q('SELECT count(), uniqExact(case_id), countIf(status = 4) FROM cases FINAL')[0],"
        "'per_vehicle': q('SELECT max(n) FROM (SELECT vehicle_id, uniqExact(case_id) n FROM cases GROUP BY 1)')[0][0],"
        "'triggers': q('SELECT count(), countIf(case_id != \\'\\') FROM trigger_events FINAL')[0],"
        "'logs': q('SELECT uri, sha256, size_bytes, status FROM case_logs FINAL')}, default=str))"),
        env["CLICKHOUSE_URL"]], capture_output=True, text=True, env=env, check=True)
    found = json.loads(check.stdout.strip().splitlines()[-1])
    assert found["cases"] == [VEHICLES, VEHICLES, VEHICLES]
    assert found["per_vehicle"] == 1
    assert found["triggers"] == [VEHICLES, VEHICLES]
    logs = found["logs"]
    assert len(logs) == VEHICLES * TIERS and {status for *_, status in logs} == {"complete"}
    store = open_store(objects)
    assert all(store.stat(uri) == (size, sha) for uri, sha, size, _ in logs)
    written = sorted(p for p in (tmp_path / "objects").rglob("*") if p.is_file())
    assert len(written) == VEHICLES * TIERS  # no object written twice, none left half-written
    assert vehicles.stats.failed == 0
