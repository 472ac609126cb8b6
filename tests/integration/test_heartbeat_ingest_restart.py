"""Killing heartbeat-ingest (SIGKILL) mid-stream and starting it again loses and doubles nothing.

Two kills. The first lands wherever the stream happens to be. The second is made to land after a
batch's heartbeats were written to ClickHouse but before its offsets were committed: the service's
Redis is stopped (SIGSTOP), so the batch that follows the inserts waits on its live-state write, and
the kill comes once the service logs that stall. The warehouse, read after that kill, holds more
heartbeats than the committed offsets cover, so the restart must replay rows that are already there
and absorb them. The stream carries heartbeats, poses and triggers (MPS/MPD/MPI), and one vehicle
standing still long enough for a stop-and-not-go alert: rows, Redis live state, metrics and alerts
are checked after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fleetloop import topics
from fleetloop.bus import Bus, ensure_topics
from fleetloop.embedded import start_redis
from fleetloop.state import connect
from fleetloop.v1 import alerts_pb2, triggers_pb2

from services.heartbeat_ingest.alert_store import AlertStore
from services.heartbeat_ingest.live_state import LiveState
from services.heartbeat_ingest.service import GROUP_ID
from tests.conftest import wait_until
from tests.support.fleetdata import T0_MS, drive

pytestmark = pytest.mark.integration

VEHICLES, SECONDS, TRIGGERS = 12, 150, 40
STANDING = "veh-stop"  # speed 0 with a running task: a stop-and-not-go alert opens at 60 s

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


class Service:
    """One `fleetloop serve heartbeat-ingest` process; a thread keeps its stderr lines."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fleetloop.cli", "serve", "heartbeat-ingest"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()

    def alive(self) -> None:
        assert self.proc.poll() is None, "".join(self.lines)

    def stalled_on_redis(self) -> bool:
        return any(f"group {GROUP_ID}: stalled" in line and "redis" in line.lower() for line in self.lines)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def read_warehouse(chdb_url: str, env: dict[str, str]) -> dict:
    """The service's chDB engine is gone with its process; read the warehouse from a fresh one."""
    out = subprocess.run([sys.executable, "-c", READ, chdb_url], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def test_sigkill_mid_stream_then_restart_neither_loses_nor_doubles(broker, tmp_path):
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

    (tmp_path / "redis").mkdir()
    redis_proc, redis_url = start_redis(tmp_path / "redis")  # private: the test stops and continues it
    chdb_url = f"chdb://{tmp_path / 'warehouse'}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "REDIS_URL": redis_url, "CLICKHOUSE_URL": chdb_url,
           "FLEETLOOP_GRPC_PORT": "0", "FLEETLOOP_CONSUMER_BATCH_MAX": "150", "FLEETLOOP_DATA_DIR": str(tmp_path),
           "FLEETLOOP_MONITOR_CLOCK": "event"}
    started: list[Service] = []
    try:
        await kill_twice_then_finish(broker, redis_proc, redis_url, env, total, chdb_url, started)
    finally:
        for service in started:  # a failed assertion must not leave a service running
            if service.proc.poll() is None:
                service.kill()
        os.kill(redis_proc.pid, signal.SIGCONT)
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


async def kill_twice_then_finish(broker: str, redis_proc: subprocess.Popen, redis_url: str, env: dict[str, str],
                                 total: int, chdb_url: str, started: list[Service]) -> None:
    async def ingested() -> int:
        return await committed(broker, GROUP_ID, (topics.HEARTBEAT, topics.POSE))

    async def run_until_progress() -> Service:
        service = Service(env)
        started.append(service)
        before = await ingested()

        async def some_progress() -> bool:
            service.alive()
            return await ingested() >= before + total // 10

        await wait_until(some_progress, timeout_s=120, poll_s=0.02)
        return service

    # Kill 1: wherever the stream is.
    (await run_until_progress()).kill()
    assert await ingested() < total, "the kill must land mid-stream"

    # Kill 2: between a batch's inserts and its commit, held there by a stopped Redis.
    service = await run_until_progress()
    os.kill(redis_proc.pid, signal.SIGSTOP)
    try:
        async def stalled() -> bool:
            service.alive()
            return service.stalled_on_redis()

        await wait_until(stalled, timeout_s=120)
        service.kill()
    finally:
        os.kill(redis_proc.pid, signal.SIGCONT)
    assert await ingested() < total, "the kill must land mid-stream"
    covered = await committed(broker, GROUP_ID, (topics.HEARTBEAT,))
    written = read_warehouse(chdb_url, env)["hb"]
    assert written > covered, f"the stalled batch's heartbeats must be in the warehouse: {written} <= {covered}"

    last = Service(env)
    started.append(last)
    alerts = AlertStore(redis_url)

    async def all_done() -> bool:
        last.alive()
        return (await ingested() == total
                and await committed(broker, f"{GROUP_ID}-metrics", (topics.TRIGGERS,)) == TRIGGERS
                and any(a.vehicle_id == STANDING for a in await alerts.newest(100)))

    await wait_until(all_done, timeout_s=180)
    last.proc.send_signal(signal.SIGTERM)
    assert last.proc.wait(timeout=60) == 0, "".join(last.lines)

    counts = read_warehouse(chdb_url, env)
    n_vehicles = VEHICLES + 1
    # The replayed heartbeats [covered, written) were inserted a second time and collapsed.
    assert counts["hb"] == counts["hb_distinct"] == n_vehicles * SECONDS
    assert counts["pose"] == n_vehicles * SECONDS * 10
    assert counts["seconds"] == n_vehicles * SECONDS
    assert counts["km"] == pytest.approx(VEHICLES * SECONDS * 8.0 / 1000)
    assert counts["triggers"] == [TRIGGERS, TRIGGERS]

    # Redis live state: every vehicle at its last heartbeat, none rolled back by the replay.
    client = connect(redis_url)
    try:
        live = {v["vehicle_id"]: v for v in await LiveState(client).all_vehicles()}
    finally:
        await client.aclose()
    assert sorted(live) == sorted([f"veh-{v:03d}" for v in range(VEHICLES)] + [STANDING])
    assert {v["last_seen_ms"] for v in live.values()} == {str(T0_MS + 1000 * (SECONDS - 1))}
    assert float(live[STANDING]["speed_mps"]) == 0.0 and float(live["veh-000"]["speed_mps"]) == 8.0

    # Alerts: exactly the standing vehicle's one stop-and-not-go alert, still open, no spurious offline.
    got = await alerts.newest(100)
    assert [(a.kind, a.vehicle_id, a.state) for a in got] == [
        (alerts_pb2.ALERT_KIND_STOP_NOT_GO, STANDING, alerts_pb2.ALERT_STATE_OPEN)]
    assert got[0].incident_start_ms == T0_MS
