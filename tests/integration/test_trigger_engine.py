"""trigger-engine in process against the real broker: the same events (same ids, same bytes) as
`detect_recording` over a simulated backlog, duplicated batches never double an event, and a
restart restores the runners from the state topic without a new or repeated event."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from fleetloop.bus import Bus

from services.trigger_engine.service import STATE_TOPIC, TriggerEngine
from tests.conftest import wait_until
from tests.support.enginedata import as_raw, emitted, expected_events, publish, read_topic, simulate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet():
    messages, incidents = simulate()
    return messages, incidents, expected_events(messages)


class Running:
    """An in-process trigger-engine until the block ends."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.bus = Bus(settings.kafka_bootstrap_servers)

    async def __aenter__(self) -> TriggerEngine:
        await self.bus.start()
        self.engine = TriggerEngine(self.settings, None, self.bus)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.engine.run(self.stop))
        return self.engine

    async def caught_up(self) -> None:
        async def done() -> bool:
            if self.task.done():
                self.task.result()
            return await self.engine.consumer.lag() == 0
        await wait_until(done, timeout_s=180)

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await self.task
        await self.bus.stop()


def serialized(events) -> list[bytes]:
    return sorted(e.SerializeToString(deterministic=True) for e in events)


async def test_backlog_gives_exactly_the_events_of_detect_recording(settings, fleet) -> None:
    messages, incidents, expected = fleet
    assert len(expected) >= len(incidents) > 20
    await publish(settings.kafka_bootstrap_servers, as_raw(messages))   # a backlog: everything first
    running = Running(settings)
    async with running as engine:
        await running.caught_up()
    got = await emitted(settings.kafka_bootstrap_servers)
    assert serialized(got) == serialized(expected)
    assert engine.events_sent == len(expected)
    assert engine.consumer.refused == 0
    states = await read_topic(settings.kafka_bootstrap_servers, STATE_TOPIC)
    assert states, "every batch checkpoints the runners it changed"


async def test_duplicated_batches_never_double_an_event(settings, fleet) -> None:
    messages, _, expected = fleet
    raw = as_raw(messages)
    third = len(raw) // 3
    # A producer retry re-sends a batch at once (within the runner's buffer), and a replayed
    # stretch arrives again long after its seconds were evaluated (stale).
    doubled = raw[:third] + raw[third - 2000:third] + raw[third:] + raw[:third]
    await publish(settings.kafka_bootstrap_servers, doubled)
    running = Running(settings)
    async with running as engine:
        await running.caught_up()
    got = await emitted(settings.kafka_bootstrap_servers)
    assert serialized(got) == serialized(expected)
    stats = Counter()
    for runner in engine.runners.values():
        stats.update(runner.stats)
    assert stats["duplicate"] + stats["stale"] >= third + 2000


async def test_restart_restores_runners_and_neither_loses_nor_repeats(settings, fleet) -> None:
    messages, _, expected = fleet
    raw = as_raw(messages)
    half = len(raw) // 2
    await publish(settings.kafka_bootstrap_servers, raw[:half])
    running = Running(settings)
    async with running as first:
        await running.caught_up()
    assert first.restored == 0 and first.runners
    await publish(settings.kafka_bootstrap_servers, raw[half:])
    running = Running(settings)
    async with running as second:
        await running.caught_up()
    assert second.restored == len(first.runners)
    got = await emitted(settings.kafka_bootstrap_servers)
    assert Counter(e.trigger_id for e in got).most_common(1)[0][1] == 1
    assert serialized(got) == serialized(expected)
    # The first run left the runners' open seconds in the checkpoint, not lost.
    assert sum(len(r.pending) for r in first.runners.values()) > 0
