"""Killing heartbeat-ingest (SIGKILL) mid-stream and starting it again loses and doubles nothing.

The kill is repeated until one lands after a batch's heartbeats were written to ClickHouse but before
its offsets were committed (the warehouse, read after the kill, holds more heartbeats than the
committed offsets cover), so the restart must replay rows that are already there and absorb them.
The stream carries heartbeats, poses and triggers (MPS/MPD/MPI), and one vehicle standing still long
enough for a stop-and-not-go alert: rows, Redis live state, metrics and alerts are checked after it.
"""

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
from fleetloop.v1 import alerts_pb2, triggers_pb2

from services.heartbeat_ingest.alert_store import AlertStore
from services.heartbeat_ingest.live_state import LiveState
from services.heartbeat_ingest.service import GROUP_ID
from tests.conftest import wait_until
from tests.fleetdata import T0_MS, drive

pytestmark = pytest.mark.integration

VEHICLES, SECONDS, TRIGGERS = 12, 150, 40
STANDING = "veh-stop"  # speed 0 with a running task: a stop-and-not-go alert opens at 60 s
MAX_KILLS = 6

READ = """
import json, sys
from fleetloop.warehouse import Warehouse
w = Warehouse(sys.argv[1])
q = w.query_rows
tables = {r[0] for r in q("SELECT name FROM system.tables WHERE database = currentDatabase()")}
print(json.dumps({
    "hb": q("SELECT count() FROM ods_heartbeat FINAL")[0][0] if "ods_heartbeat" in tables else 0,
    "hb_distinct": q("SELECT uniqExact(vehicle_id, ts) FROM ods_heartbeat")[0][0] if "ods_heartbeat" in tables else 0,
    "pose": q("SELECT count() FROM ods_pose FINAL")[0][0] if "ods_pose" in tables else 0,
    "seconds": q("SELECT count() FROM dwd_vehicle_second FINAL")[0][0] if "dwd_vehicle_second" in tables else 0,
    "km": q("SELECT sum(distance_m) / 1000 FROM dws_fleet_day")[0][0] if "dws_fleet_day" in tables else 0,
    "triggers": list(q("SELECT count(), uniqExact(trigger_id) FROM trigger_events_metric FINAL")[0])
                if "trigger_events_metric" in tables else [0, 0],
}))
"""


def trigger(i: int) -> triggers_pb2.TriggerEvent:
    vehicle_id, onset = f"veh-{i % VEHICLES:03d}", T0_MS + 1000 * (5 + 3 * i)
    return triggers_pb2.TriggerEvent(
        trigger_id=f"{vehicle_id}-hb-{onset}", vehicle_id=vehicle_id, trigger="hard_brake",
        category=triggers_pb2.TRIGGER_CATEGORY_MPS, severity=0.4, weight=1.0, onset_ms=onset, peak_ms=onset + 300,
        end_ms=onset + 1000, window_pre_s=10.0, window_post_s=5.0, measurements={"peak_decel_mps2": 5.2})


async def committed(bootstrap: str, group_id: str, topic_names: tuple[str, ...]) -> int:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await probe.start()
    try:
        total = 0
        for topic in topic_names:
            for partition in range(topics.DEFAULT_PARTITIONS):
                total += await probe.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await probe.stop()


def start_service(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleetloop.cli", "serve", "heartbeat-ingest"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_warehouse(chdb_url: str, env: dict[str, str]) -> dict:
    """The service's chDB engine is gone with its process; read the warehouse from a fresh one."""
    out = subprocess.run([sys.executable, "-c", READ, chdb_url], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def test_sigkill_mid_stream_then_restart_neither_loses_nor_doubles(broker, redis_url, redis_client, tmp_path):
    await ensure_topics(broker)
    bus = Bus(broker)
    await bus.start()
    messages = [m for v in range(VEHICLES) for m in drive(f"veh-{v:03d}", SECONDS, speed=8.0)]
    messages += drive(STANDING, SECONDS, speed=0.0)
    messages.sort(key=lambda m: m[1].event_time_ms)  # as a fleet sends: second by second, all vehicles
    await bus.send_many([(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in messages]
                        + [(topics.TRIGGERS, e.vehicle_id.encode(), e.SerializeToString())
                           for e in map(trigger, range(TRIGGERS))])
    await bus.stop()
    total = len(messages)

    chdb_url = f"chdb://{tmp_path / 'warehouse'}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "REDIS_URL": redis_url, "CLICKHOUSE_URL": chdb_url,
           "FLEETLOOP_GRPC_PORT": "0", "FLEETLOOP_CONSUMER_BATCH_MAX": "150", "FLEETLOOP_DATA_DIR": str(tmp_path),
           "FLEETLOOP_MONITOR_CLOCK": "event"}
    started: list[subprocess.Popen] = []
    try:
        await kill_until_a_replay_is_due_then_finish(broker, redis_url, redis_client, env, total, chdb_url, started)
    finally:
        for proc in started:  # a failed assertion must not leave a service running
            if proc.poll() is None:
                proc.kill()


async def kill_until_a_replay_is_due_then_finish(broker: str, redis_url: str, redis_client, env: dict[str, str],
                                                 total: int, chdb_url: str, started: list[subprocess.Popen]) -> None:
    async def ingested() -> int:
        return await committed(broker, GROUP_ID, (topics.HEARTBEAT, topics.POSE))

    kills = []  # (heartbeats covered by committed offsets, heartbeats in the warehouse) after each kill
    while len(kills) < MAX_KILLS and not any(written > covered for covered, written in kills):
        proc = start_service(env)
        started.append(proc)
        before = await ingested()

        async def some_progress(proc=proc, before=before) -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()
            return await ingested() >= before + total // 10

        await wait_until(some_progress, timeout_s=120, poll_s=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert await ingested() < total, "the kill must land mid-stream"
        covered = await committed(broker, GROUP_ID, (topics.HEARTBEAT,))
        kills.append((covered, read_warehouse(chdb_url, env)["hb"]))
    covered, written = kills[-1]
    assert written > covered, f"no kill landed between a batch's insert and its commit: {kills}"

    last = start_service(env)
    started.append(last)
    alerts = AlertStore(redis_url)

    async def all_done() -> bool:
        assert last.poll() is None, last.stderr.read().decode()
        return (await ingested() == total
                and await committed(broker, f"{GROUP_ID}-metrics", (topics.TRIGGERS,)) == TRIGGERS
                and any(a.vehicle_id == STANDING for a in await alerts.newest(100)))

    await wait_until(all_done, timeout_s=180)
    last.send_signal(signal.SIGTERM)
    assert last.wait(timeout=60) == 0, last.stderr.read().decode()

    counts = read_warehouse(chdb_url, env)
    n_vehicles = VEHICLES + 1
    # The replayed heartbeats [covered, written) were inserted a second time and collapsed.
    assert counts["hb"] == counts["hb_distinct"] == n_vehicles * SECONDS
    assert counts["pose"] == n_vehicles * SECONDS * 10
    assert counts["seconds"] == n_vehicles * SECONDS
    assert counts["km"] == pytest.approx(VEHICLES * SECONDS * 8.0 / 1000)
    assert counts["triggers"] == [TRIGGERS, TRIGGERS]

    # Redis live state: every vehicle at its last heartbeat, none rolled back by the replay.
    live = {v["vehicle_id"]: v for v in await LiveState(redis_client).all_vehicles()}
    assert sorted(live) == sorted([f"veh-{v:03d}" for v in range(VEHICLES)] + [STANDING])
    assert {v["last_seen_ms"] for v in live.values()} == {str(T0_MS + 1000 * (SECONDS - 1))}
    assert float(live[STANDING]["speed_mps"]) == 0.0 and float(live["veh-000"]["speed_mps"]) == 8.0

    # Alerts: exactly the standing vehicle's one stop-and-not-go alert, still open, no spurious offline.
    got = await alerts.newest(100)
    assert [(a.kind, a.vehicle_id, a.state) for a in got] == [
        (alerts_pb2.ALERT_KIND_STOP_NOT_GO, STANDING, alerts_pb2.ALERT_STATE_OPEN)]
    assert got[0].incident_start_ms == T0_MS
