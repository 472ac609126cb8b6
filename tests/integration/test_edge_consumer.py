"""The streaming edge's consumer against the real broker: poison never kills (issue 11 §1/§2).

A tombstone is dead-lettered before any handler sees it; a record whose handling raises is
dead-lettered alone as handler_error while the rest lands; a transient error stalls the batch
(uncommitted, `stalled` set) until it passes, and nothing is lost or dead-lettered."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis.exceptions
from aiokafka import AIOKafkaConsumer
from fleetloop import topics
from fleetloop.bus import BatchConsumer, Bus, Record, Refusal, ensure_topics
from fleetloop.v1 import deadletter_pb2

from tests.conftest import assert_letters_point_at_their_records, wait_until

pytestmark = pytest.mark.integration

TOPIC = "test.edge.v1"


@pytest.fixture
async def bus(broker: str):
    await ensure_topics(broker, [TOPIC, topics.DEADLETTER], partitions=1)
    bus = Bus(broker)
    await bus.start()
    yield bus
    await bus.stop()


async def dead_letters(bootstrap: str, expected: int) -> list[deadletter_pb2.DeadLetter]:
    reader = AIOKafkaConsumer(topics.DEADLETTER, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                              enable_auto_commit=False, group_id="edge-dlq-reader")
    await reader.start()
    letters: list[deadletter_pb2.DeadLetter] = []
    try:
        while len(letters) < expected:
            batch = await reader.getmany(timeout_ms=2000)
            if not batch:
                break
            letters += [deadletter_pb2.DeadLetter.FromString(m.value) for ms in batch.values() for m in ms]
    finally:
        await reader.stop()
    return letters


class Recording:
    """A handler that keeps the values it handled; raises `error` on a value in `poison`, and
    `transient` the first `stalls` times it is called."""

    def __init__(self, poison: set[bytes] = frozenset(), stalls: int = 0) -> None:
        self.poison, self.stalls = poison, stalls
        self.handled: list[bytes] = []
        self.stalled_seen: set[str | None] = set()
        self.consumer: BatchConsumer | None = None

    async def __call__(self, records: list[Record]) -> list:
        assert all(isinstance(r.value, bytes) for r in records)
        if self.stalls:
            self.stalls -= 1
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        if self.consumer is not None:
            self.stalled_seen.add(self.consumer.stalled)
        if any(r.value in self.poison for r in records):
            raise ValueError("cannot handle this one")
        self.handled += [r.value for r in records]
        return []


async def consume(broker: str, bus: Bus, handler: Recording, expected: int) -> BatchConsumer:
    consumer = BatchConsumer(bootstrap=broker, group_id="test-edge", topic_names=[TOPIC], handler=handler,
                             bus=bus, service="test-edge", poll_ms=100)
    handler.consumer = consumer
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async def done() -> bool:
            if task.done():
                task.result()
            return consumer.records_done >= expected
        await wait_until(done)
    finally:
        stop.set()
        await task
    return consumer


async def test_a_tombstone_is_dead_lettered_before_the_handler(broker, bus) -> None:
    await bus.send_many([(TOPIC, b"veh-1", b"one"), (TOPIC, b"veh-1", None), (TOPIC, b"veh-1", b"two")])
    handler = Recording()
    consumer = await consume(broker, bus, handler, 3)
    assert handler.handled == [b"one", b"two"]
    letters = await dead_letters(broker, 1)
    assert [(letter.reason, letter.source_offset, letter.original) for letter in letters] == [("tombstone", 1, b"")]
    assert consumer.refused == 1


async def test_a_record_that_raises_is_dead_lettered_alone_and_the_rest_lands(broker, bus) -> None:
    values = [f"record {i}".encode() for i in range(9)]
    await bus.send_many([(TOPIC, b"veh-1", v) for v in values])
    handler = Recording(poison={values[6]})
    await consume(broker, bus, handler, len(values))
    assert sorted(set(handler.handled)) == sorted(v for v in values if v != values[6])
    letters = await dead_letters(broker, 2)
    assert [(letter.reason, letter.source_offset, letter.original) for letter in letters] == [
        ("handler_error", 6, values[6])]
    assert letters[0].detail.startswith("ValueError: cannot handle this one")


async def test_a_transient_error_stalls_the_batch_until_it_passes(broker, bus) -> None:
    values = [f"record {i}".encode() for i in range(5)]
    await bus.send_many([(TOPIC, b"veh-1", v) for v in values])
    handler = Recording(stalls=3)
    consumer = await consume(broker, bus, handler, len(values))
    assert handler.handled == values                 # nothing lost, nothing dead-lettered
    assert handler.stalled_seen == {"redis: TimeoutError"}  # the try that passed still saw the stall
    assert consumer.stalled is None and consumer.refused == 0
    assert await dead_letters(broker, 1) == []


async def test_a_record_every_consumer_refuses_alike_is_copied_once(broker, bus) -> None:
    """Issue 11 §8: three services refusing one bad heartbeat made three full copies. Now the
    topic's keeper (heartbeat-ingest) carries the bytes; the others carry size and SHA-256 only.
    A refusal only one service makes (handler_error) keeps its bytes wherever it happens."""
    await ensure_topics(broker, [topics.HEARTBEAT], partitions=1)
    garbage = b"\xff\x00" * 5000
    await bus.send_many([(topics.HEARTBEAT, b"veh-0001", garbage)])
    record = Record(topics.HEARTBEAT, 0, 0, b"veh-0001", garbage, 0)
    for service in ("label-indexer", "heartbeat-ingest", "trigger-engine"):
        await bus.dead_letter([Refusal(record, "decode_error", "not an Envelope")], service)
    await bus.dead_letter([Refusal(record, "handler_error", "ValueError: boom")], "trigger-engine")
    letters = await dead_letters(broker, 4)
    assert [(letter.service, letter.reason, len(letter.original), letter.original_kept_by) for letter in letters] == [
        ("label-indexer", "decode_error", 0, "heartbeat-ingest"),
        ("heartbeat-ingest", "decode_error", len(garbage), ""),
        ("trigger-engine", "decode_error", 0, "heartbeat-ingest"),
        ("trigger-engine", "handler_error", len(garbage), "")]
    assert sum(len(letter.SerializeToString()) for letter in letters[:3]) < len(garbage) + 1000
    assert {(letter.original_size, letter.original_sha256) for letter in letters} == {
        (len(garbage), hashlib.sha256(garbage).digest())}
    await assert_letters_point_at_their_records(broker, letters)
