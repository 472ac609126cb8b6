"""Three trigger-engine processes in one consumer group; one is SIGKILLed mid-stream. Every injected
incident is still reported by exactly one trigger_id (re-sends of the same id are allowed: the
transport is at-least-once), no id appears that `detect_recording` does not give, and bad messages
go to the dead-letter topic with their reasons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fleetloop import topics

from services.trigger_engine.service import GROUP_ID, PAYLOAD_BY_TOPIC
from tests.conftest import wait_until
from tests.enginedata import as_raw, dead_letters, emitted, expected_events, publish, simulate
from tests.fleetdata import T0_MS, heartbeat, pose

pytestmark = pytest.mark.integration

MATCH_SLACK_MS = 5_000


def engine_command() -> list[str]:
    return [sys.executable, "-m", "fleetloop.cli", "serve", "trigger-engine"]


def bad_messages() -> list[tuple[str, bytes, bytes, str]]:
    """(topic, key, value, expected reason)."""
    old_schema = heartbeat("veh-0002", T0_MS + 500_000)
    old_schema.schema_version = 99
    short = pose("veh-0003", T0_MS + 600_000)
    short.pose.speed_mps = short.pose.speed_mps[:-8]         # 8 speeds for 10 samples
    return [
        (topics.POSE, b"veh-0001", b"\x00\x01 not protobuf", "decode_error"),
        (topics.HEARTBEAT, b"veh-0002", old_schema.SerializeToString(), "unknown_schema_version"),
        (topics.POSE, b"veh-0003", short.SerializeToString(), "bad_shape"),
        (topics.EVENTS, b"someone", heartbeat("veh-0004", T0_MS + 700_000).SerializeToString(), "key_mismatch"),
        (topics.PERCEPTION, b"veh-0001", heartbeat("veh-0001", T0_MS + 800_000).SerializeToString(), "wrong_payload"),
    ]


async def committed_total(bootstrap: str, partitions: int) -> int:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP_ID, enable_auto_commit=False)
    await probe.start()
    try:
        return sum([await probe.committed(TopicPartition(t, p)) or 0
                    for t in PAYLOAD_BY_TOPIC for p in range(partitions)])
    finally:
        await probe.stop()


async def group_members(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([GROUP_ID])
        groups = described[0].groups if hasattr(described[0], "groups") else []
        return len(groups[0][-1]) if groups else 0
    finally:
        await admin.close()


async def test_three_engines_one_killed_every_incident_exactly_once(broker, redis_url, tmp_path) -> None:
    messages, incidents = simulate()
    expected = {e.trigger_id: e for e in expected_events(messages)}
    await publish(broker, [])  # creates the topics before the members subscribe
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "REDIS_URL": redis_url, "FLEETLOOP_GRPC_PORT": "0",
           "FLEETLOOP_CONSUMER_BATCH_MAX": "200", "FLEETLOOP_CONSUMER_POLL_MS": "50"}
    procs = []
    for i in range(3):
        member_env = {**env, "CLICKHOUSE_URL": f"chdb://{tmp_path / f'w{i}'}",
                      "FLEETLOOP_DATA_DIR": str(tmp_path / str(i))}
        procs.append(subprocess.Popen(engine_command(), env=member_env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))

    async def all_joined() -> bool:
        for p in procs:
            assert p.poll() is None, p.stderr.read().decode()
        return await group_members(broker) == 3
    await wait_until(all_joined, timeout_s=120, poll_s=0.5)

    raw = as_raw(messages)
    bad = bad_messages()
    step = len(raw) // (len(bad) + 1)
    for k, (topic, key, value, _) in enumerate(bad):   # interleaved with the good ones
        raw.insert((k + 1) * step, (topic, key, value))
    await publish(broker, raw)
    total = len(raw)

    async def some_progress() -> bool:
        return await committed_total(broker, topics.DEFAULT_PARTITIONS) >= total // 4
    await wait_until(some_progress, timeout_s=120, poll_s=0.05)
    victim = procs[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert await committed_total(broker, topics.DEFAULT_PARTITIONS) < total, "the kill must land mid-stream"

    async def all_committed() -> bool:
        for p in procs[1:]:
            assert p.poll() is None, p.stderr.read().decode()
        return await committed_total(broker, topics.DEFAULT_PARTITIONS) == total
    await wait_until(all_committed, timeout_s=240)
    for p in procs[1:]:
        p.send_signal(signal.SIGTERM)
    for p in procs[1:]:
        assert p.wait(timeout=60) == 0, p.stderr.read().decode()

    got = await emitted(broker)
    ids = Counter(e.trigger_id for e in got)
    assert set(ids) == set(expected), "no event lost, none invented by a restore"
    for inc in incidents:
        for trigger in inc.expected_triggers:
            found = {e.trigger_id for e in got if e.vehicle_id == inc.vehicle_id and e.trigger == trigger
                     and inc.start_ms - MATCH_SLACK_MS <= e.onset_ms <= inc.end_ms + MATCH_SLACK_MS}
            assert len(found) == 1, (inc, found)
    reasons = sorted(letter.reason for letter in await dead_letters(broker))
    assert reasons == sorted(reason for *_, reason in bad)
    assert all(e.category != 0 and e.vehicle_id for e in got)
