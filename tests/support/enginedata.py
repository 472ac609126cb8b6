"""A small simulated fleet with an explicit incident schedule, and helpers to publish it and read
back what the trigger-engine emitted (tests/integration/test_trigger_engine*.py)."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from fleetloop import topics
from fleetloop.bus import Bus, ensure_topics
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.triggers import detect_recording, load_config
from fleetloop.v1 import common_pb2, deadletter_pb2, triggers_pb2

VEHICLES, DURATION_S = 4, 1500
# Every vehicle kind the triggers cover, ~150 s apart, all over well before the end of the run so no
# episode is still open when the stream stops (the engine never "flushes" a live stream).
KINDS = ("hard_brake", "phantom_stop", "near_miss", "contact", "weaving", "takeover", "call_for_help",
         "error_code", "operator_speech", "planner_uncertainty", "scene_complexity")


def schedule() -> list[ScheduledIncident]:
    """Seven incidents per vehicle, 150 s apart (a 250 s stop_not_go first on even vehicles)."""
    out = []
    for v in range(VEHICLES):
        at_s = 40.0 + 7 * v
        if v % 2 == 0:
            out.append(ScheduledIncident(kind="stop_not_go", vehicle_index=v, at_s=at_s, duration_s=250.0))
            at_s += 330.0
        for j in range(7 if v % 2 else 5):
            out.append(ScheduledIncident(kind=KINDS[(3 * v + j) % len(KINDS)], vehicle_index=v, at_s=at_s))
            at_s += 150.0
    return out


def simulate(seed: int = 3) -> tuple[list[tuple[str, common_pb2.Envelope]], list]:
    """(topic, envelope) messages in publishing order, and the injected incidents."""
    sim = FleetSimulator(SimConfig(vehicles=VEHICLES, duration_s=DURATION_S, seed=seed, incidents=schedule()))
    messages = [m for second in sim.seconds() for m in second.messages]
    return messages, sim.ground_truth.incidents


def expected_events(messages: Sequence[tuple[str, common_pb2.Envelope]]) -> list[triggers_pb2.TriggerEvent]:
    return detect_recording([env for _, env in messages], load_config())


async def publish(bootstrap: str, raw: Sequence[tuple[str, bytes | None, bytes]]) -> None:
    await ensure_topics(bootstrap)
    bus = Bus(bootstrap)
    await bus.start()
    try:
        for i in range(0, len(raw), 5000):
            await bus.send_many(raw[i:i + 5000])
    finally:
        await bus.stop()


def as_raw(messages: Sequence[tuple[str, common_pb2.Envelope]]) -> list[tuple[str, bytes, bytes]]:
    return [(topic, env.vehicle_id.encode(), env.SerializeToString()) for topic, env in messages]


async def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every value on `topic`, read to the fetch high watermark of each partition."""
    return [value for _, _, value in await read_records(bootstrap, topic)]


async def read_records(bootstrap: str, topic: str) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record on `topic`, read to each partition's fetch high watermark."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                           or await _partitions(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        values: list[tuple[int, int, bytes]] = []
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            values += [(m.partition, m.offset, m.value) for msgs in batch.values() for m in msgs]
            ends = [(consumer.highwater(tp), await consumer.position(tp)) for tp in tps]
            if all(hw is not None and pos >= hw for hw, pos in ends):
                return values
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - a test reading a topic it did not subscribe
    return consumer.partitions_for_topic(topic) or set()


async def emitted(bootstrap: str) -> list[triggers_pb2.TriggerEvent]:
    return [triggers_pb2.TriggerEvent.FromString(v) for v in await read_topic(bootstrap, topics.TRIGGERS)]


async def dead_letters(bootstrap: str) -> list[deadletter_pb2.DeadLetter]:
    return [deadletter_pb2.DeadLetter.FromString(v) for v in await read_topic(bootstrap, topics.DEADLETTER)]
