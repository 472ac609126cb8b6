"""Three trigger-engine processes in one consumer group; one is SIGKILLed mid-stream and started
again, so it rejoins and restores runners from the state topic. Every injected incident is still
reported by exactly one trigger_id, every emitted event is byte-identical to what `detect_recording`
gives, and duplicates are counted: the transport is at-least-once, so a kill may re-send the events of
the batch it interrupted, but never more than once per event. Bad messages go to the dead-letter topic
with their reasons, their original bytes and where they came from."""

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
from fleetloop.v1 import triggers_pb2

from services.trigger_engine.service import GROUP_ID, PAYLOAD_BY_TOPIC
from tests.conftest import assert_letters_point_at_their_records, letter_bytes, sent_bytes, wait_until
from tests.support.enginedata import as_raw, dead_letters, emitted, expected_events, publish, read_records, simulate
from tests.support.fleetdata import T0_MS, heartbeat, pose

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


async def group_members(bootstrap: str) -> set[str]:
    """Member ids of the engine's consumer group now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([GROUP_ID])
        groups = described[0].groups if hasattr(described[0], "groups") else []
        return {m[0] for m in groups[0][-1]} if groups else set()
    finally:
        await admin.close()


async def test_three_engines_one_killed_every_incident_exactly_once(broker, redis_url, tmp_path) -> None:
    messages, incidents = simulate()
    expected = {e.trigger_id: e for e in expected_events(messages)}
    await publish(broker, [])  # creates the topics before the members subscribe
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "REDIS_URL": redis_url, "FLEETLOOP_GRPC_PORT": "0",
           "FLEETLOOP_CONSUMER_BATCH_MAX": "200", "FLEETLOOP_CONSUMER_POLL_MS": "50"}

    def member(i: int) -> subprocess.Popen:
        member_env = {**env, "CLICKHOUSE_URL": f"chdb://{tmp_path / f'w{i}'}",
                      "FLEETLOOP_DATA_DIR": str(tmp_path / str(i))}
        return subprocess.Popen(engine_command(), env=member_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    procs = [member(i) for i in range(3)]
    try:
        await kill_one_and_restart_it(broker, procs, member, messages, incidents, expected)
    finally:
        for p in procs:  # a failed assertion must not leave a member running
            if p.poll() is None:
                p.kill()


async def kill_one_and_restart_it(broker, procs, member, messages, incidents, expected) -> None:
    async def all_joined(not_before: frozenset = frozenset()) -> bool:
        """Three live members in the group, at least one of them new since `not_before`."""
        for p in procs:
            assert p.poll() is None, p.stderr.read().decode()
        members = await group_members(broker)
        return len(members) == 3 and (not not_before or bool(members - not_before))
    await wait_until(all_joined, timeout_s=120, poll_s=0.5)
    first_members = frozenset(await group_members(broker))

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
    before_kill = {(p, o) for p, o, _ in await read_records(broker, topics.TRIGGERS)}
    procs[0] = member(0)  # the killed member comes back and rejoins the group (the dead one is evicted)
    await wait_until(lambda: all_joined(first_members), timeout_s=120, poll_s=0.5)

    async def all_committed() -> bool:
        for p in procs:
            assert p.poll() is None, p.stderr.read().decode()
        return await committed_total(broker, topics.DEFAULT_PARTITIONS) == total
    await wait_until(all_committed, timeout_s=240)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read().decode()

    got = await emitted(broker)
    ids = Counter(e.trigger_id for e in got)
    assert set(ids) == set(expected), "no event lost, none invented by a restore"
    wanted = {i: e.SerializeToString(deterministic=True) for i, e in expected.items()}
    assert all(e.SerializeToString(deterministic=True) == wanted[e.trigger_id] for e in got), (
        "a re-sent event must be the same event, byte for byte")
    # A duplicate is the kill's doing only: its first copy was on the topic before the kill, the
    # second came after, from the member that took over the interrupted batch.
    copies: dict[str, list[bool]] = {}
    for partition, offset, value in await read_records(broker, topics.TRIGGERS):
        event = triggers_pb2.TriggerEvent.FromString(value)
        copies.setdefault(event.trigger_id, []).append((partition, offset) in before_kill)
    resent = {i: c for i, c in copies.items() if len(c) > 1}
    assert all(c == [True, False] for c in resent.values()), f"duplicates not caused by the kill: {resent}"
    assert len(got) == len(expected) + len(resent)
    for inc in incidents:
        for trigger in inc.expected_triggers:
            found = {e.trigger_id for e in got if e.vehicle_id == inc.vehicle_id and e.trigger == trigger
                     and inc.start_ms - MATCH_SLACK_MS <= e.onset_ms <= inc.end_ms + MATCH_SLACK_MS}
            assert len(found) == 1, (inc, found)
    letters = await dead_letters(broker)
    assert sorted(letter.reason for letter in letters) == sorted(reason for *_, reason in bad)
    assert {letter_bytes(letter) for letter in letters} == {sent_bytes(topic, key, value)
                                                            for topic, key, value, _ in bad}
    await assert_letters_point_at_their_records(broker, letters)
    assert all(e.category != 0 and e.vehicle_id for e in got)
