"""The consumer edge (`fleetloop.bus.BatchConsumer`) against the real broker: its lag counts the batch
being handled, so a lag of 0 means every fetched record's effect is done."""

from __future__ import annotations

import asyncio

import pytest
from fleetloop.bus import BatchConsumer, Bus, Record, ensure_topics

from tests.conftest import wait_until

pytestmark = pytest.mark.integration

TOPIC = "test.bus.v1"
RECORDS = 3


@pytest.fixture
async def bus(broker: str):
    await ensure_topics(broker, [TOPIC], partitions=1)
    bus = Bus(broker)
    await bus.start()
    await bus.send_many([(TOPIC, b"veh-1", f"record {i}".encode()) for i in range(RECORDS)])
    yield bus
    await bus.stop()


class Gate:
    """A handler that holds each batch until `release` is set."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, records: list[Record]) -> list:
        self.entered.set()
        await self.release.wait()
        return []


def consumer_of(broker: str, bus: Bus, handler) -> BatchConsumer:
    return BatchConsumer(bootstrap=broker, group_id="test-bus", topic_names=[TOPIC], handler=handler, bus=bus,
                         service="test-bus", poll_ms=100)


async def test_lag_counts_the_batch_being_handled(broker, bus) -> None:
    gate = Gate()
    consumer = consumer_of(broker, bus, gate)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(gate.entered.wait(), 60)
        # The position has passed every record (all were fetched), but none is handled yet.
        assert await consumer.lag() == RECORDS
        gate.release.set()

        async def done() -> bool:
            return consumer.records_done == RECORDS
        await wait_until(done)
        assert await consumer.lag() == 0
    finally:
        gate.release.set()
        stop.set()
        await task


async def test_lag_is_zero_once_poll_once_has_handled_the_last_batch(broker, bus) -> None:
    """A caller polling by hand (bench/ingest.py) reads lag 0 after the poll that handled the rest."""
    gate = Gate()
    gate.release.set()
    consumer = consumer_of(broker, bus, gate)
    await consumer.start()
    try:
        handled = 0
        while handled < RECORDS:
            handled += await asyncio.wait_for(consumer.poll_once(), 60)
        assert await consumer.lag() == 0
    finally:
        await consumer.stop()
