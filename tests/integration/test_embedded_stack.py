"""Embedded mode (issue 11 §7): children die with `fleetloop up`, Redis keeps its data across a
restart, and `up` fails loudly when a service cannot start (docs/ARCHITECTURE.md, embedded vs cluster)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from fleetloop.embedded import start_redis

pytestmark = pytest.mark.integration

FLEETLOOP = Path(sys.executable).with_name("fleetloop")


def children_of(pid: int) -> list[int]:
    """Direct child pids of `pid`, from /proc (Linux)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(part) for part in text.split()]


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate, polls: int = 600, poll_s: float = 0.1) -> bool:
    """Poll `predicate` until true or the polls run out; returns its last value."""
    for _ in range(polls):
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def start_up(data_dir: Path) -> subprocess.Popen:
    """`fleetloop up` on its own data dir; returns once it printed that it is up."""
    env = {**os.environ, "FLEETLOOP_DATA_DIR": str(data_dir)}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CLICKHOUSE_URL"):
        env.pop(name, None)
    proc = subprocess.Popen([str(FLEETLOOP), "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("fleetloop is up"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def test_persistent_redis_keeps_its_keys_across_a_restart(tmp_path: Path) -> None:
    proc, url = start_redis(tmp_path, persist=True)
    try:
        redis.Redis.from_url(url).set("alert:v1", "kept")
    finally:
        proc.terminate()
        proc.wait()
    proc, url = start_redis(tmp_path, persist=True)
    try:
        assert redis.Redis.from_url(url).get("alert:v1") == b"kept"
    finally:
        proc.terminate()
        proc.wait()


def test_kill_9_of_up_leaves_no_children_and_a_restart_keeps_redis_state(tmp_path: Path) -> None:
    up = start_up(tmp_path)
    children = children_of(up.pid)
    assert len(children) == 2  # the broker and redis-server
    redis_url = json.loads((tmp_path / "endpoints.json").read_text())["REDIS_URL"]
    redis.Redis.from_url(redis_url).set("live:v1", "state")
    time.sleep(1.5)  # the append-only file is fsynced every second; SIGTERM flushes it anyway
    up.send_signal(signal.SIGKILL)
    up.wait()
    assert wait_until(lambda: not any(alive(pid) for pid in children)), [p for p in children if alive(p)]

    again = start_up(tmp_path)
    try:
        redis_url = json.loads((tmp_path / "endpoints.json").read_text())["REDIS_URL"]
        assert redis.Redis.from_url(redis_url).get("live:v1") == b"state"
    finally:
        again.send_signal(signal.SIGINT)
        again.wait()


def test_up_exits_non_zero_when_a_grpc_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            taken.bind(("0.0.0.0", 50052))  # case-assembler's default gRPC port
        except OSError:
            pytest.skip("port 50052 is already in use on this machine")
        taken.listen()
        env = {**os.environ, "FLEETLOOP_DATA_DIR": str(tmp_path)}
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CLICKHOUSE_URL"):
            env.pop(name, None)
        done = subprocess.run([str(FLEETLOOP), "up"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "case-assembler" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_graceful_stop_drains_the_memory_only_broker_first(tmp_path: Path) -> None:
    """What the embedded broker holds is gone once it stops: SIGTERM right after a burst is published
    must first let the services consume it. Without the drain most of the burst never landed."""
    import asyncio

    from fleetloop import topics
    from fleetloop.bus import Bus

    from tests.support.fleetdata import T0_MS, heartbeat

    up = start_up(tmp_path)
    endpoints = json.loads((tmp_path / "endpoints.json").read_text())
    burst = [heartbeat(f"veh-{v:03d}", T0_MS + 1000 * s) for s in range(200) for v in range(20)]

    async def publish() -> None:
        bus = Bus(endpoints["KAFKA_BOOTSTRAP_SERVERS"])
        await bus.start()
        await bus.send_many([(topics.HEARTBEAT, e.vehicle_id.encode(), e.SerializeToString()) for e in burst])
        await bus.stop()

    asyncio.run(publish())
    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=300) == 0, up.stderr.read()
    # One chDB engine per process, and this one may hold the session's: read in a child.
    read = ("import json, sys; from fleetloop.warehouse import Warehouse; "
            "print(json.dumps(Warehouse(sys.argv[1]).query_rows("
            "'SELECT count(), uniqExact(message_id) FROM ods_heartbeat')[0]))")
    out = subprocess.run([sys.executable, "-c", read, endpoints["CLICKHOUSE_URL"]], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [len(burst)] * 2
    assert "drained" in up.stderr.read()
