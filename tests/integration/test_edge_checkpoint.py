"""Bounded checkpoints (issue 11 §1): a trigger runner whose state would not fit in one message is
trimmed with a logged reason, never a crash. The bound is lowered here so ordinary driving exceeds
it; in production it is the producer's max request size, which two ~5 MB events once exceeded."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fleetloop.bus import Bus, ensure_topics

from services.trigger_engine.service import STATE_TOPIC, TriggerEngine
from tests.conftest import Running
from tests.support.fleetdata import drive

pytestmark = pytest.mark.integration
SMALL_STATE_BYTES = 1024  # below a driving runner (~3 kB), above a fresh one (~0.3 kB)


async def state_values(bootstrap: str) -> list[bytes]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        tps = [TopicPartition(STATE_TOPIC, p) for p in reader.partitions_for_topic(STATE_TOPIC) or ()]
        if not tps:
            await reader.topics()
            tps = [TopicPartition(STATE_TOPIC, p) for p in reader.partitions_for_topic(STATE_TOPIC)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        values = []
        while batch := await reader.getmany(timeout_ms=2000):
            values += [m.value for ms in batch.values() for m in ms]
        return values
    finally:
        await reader.stop()


async def test_a_runner_state_over_the_message_bound_is_trimmed_not_fatal(settings) -> None:
    await ensure_topics(settings.kafka_bootstrap_servers)
    bus = Bus(settings.kafka_bootstrap_servers)
    await bus.start()
    await bus.send_many([(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in drive("veh-a", 120)])
    await bus.stop()
    running = Running(TriggerEngine, settings, None)
    async with running as engine:
        engine.checkpoints.max_state_bytes = SMALL_STATE_BYTES
        await running.caught_up()
        running.alive()
        assert engine.trimmed > 0
    values = await state_values(settings.kafka_bootstrap_servers)
    assert values and max(len(v) for v in values) <= SMALL_STATE_BYTES
