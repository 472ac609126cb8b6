"""`StateCheckpoints`: per-key state in a compacted topic co-partitioned with a consumer's inputs
(what a faust table's changelog does, kept explicit).

The topic has the inputs' partition count; the state of a key consumed from partition i is written
to partition i, after the batch's outputs and before the input offsets are committed, so a state is
never older than the committed input. Restoring partition i reads it from the beginning to its fetch
high watermark; the last value per key wins and a tombstone retires the key.

Bounded: a state whose message would exceed the producer's max request size cannot be sent, and
sending it would end the consumer. `write` sends none of those and returns their keys, so the owner
resets (or trims) that key's state with a logged reason instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from fleetloop.bus.admin import ensure_topics, partition_counts
from fleetloop.bus.producer import Bus

log = logging.getLogger(__name__)
RECORD_OVERHEAD_BYTES = 1024  # batch and record headers around key and value, with room to spare


class StateCheckpoints:
    """Compacted state topic `topic`, co-partitioned with `inputs` (module doc)."""

    def __init__(self, bus: Bus, bootstrap: str, topic: str, inputs: Sequence[str], service: str) -> None:
        self.bus = bus
        self.bootstrap = bootstrap
        self.topic = topic
        self.inputs = list(inputs)
        self.service = service
        self.max_state_bytes = bus.max_request_bytes - RECORD_OVERHEAD_BYTES
        self._restorer: AIOKafkaConsumer | None = None

    async def ensure(self) -> int:
        """Create the state topic (compacted) with the inputs' partition count; returns the count.

        Raises RuntimeError when the inputs are not co-partitioned or the state topic disagrees.
        """
        counts = await partition_counts(self.bootstrap, self.inputs)
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"input topics are not co-partitioned: {counts}")
        partitions = next(iter(counts.values()))
        await ensure_topics(self.bootstrap, [self.topic], partitions, {"cleanup.policy": "compact"})
        state = (await partition_counts(self.bootstrap, [self.topic]))[self.topic]
        if state != partitions:
            raise RuntimeError(f"{self.topic} has {state} partitions, inputs {partitions}")
        return partitions

    async def start(self) -> None:
        self._restorer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                          client_id=f"{self.service}-restore", max_partition_fetch_bytes=8 << 20)
        await self._restorer.start()

    async def stop(self) -> None:
        if self._restorer is not None:
            await self._restorer.stop()

    def oversized(self, key: str, value: bytes) -> bool:
        """Whether (key, value) is too big to be one message."""
        return len(key.encode()) + len(value) > self.max_state_bytes

    async def write(self, states: Iterable[tuple[str, bytes, int]]) -> list[str]:
        """Send (key, state bytes, partition) triples; returns the keys refused as oversized (not sent)."""
        refused, messages = [], []
        for key, value, partition in states:
            if self.oversized(key, value):
                log.warning("%s: state of %s is %d bytes, over the %d a message may hold; not checkpointed",
                            self.service, key, len(value), self.max_state_bytes)
                refused.append(key)
            else:
                messages.append((self.topic, key.encode(), value, partition))
        await self.bus.send_many(messages)
        return refused

    async def restore(self, partitions: Iterable[int]) -> dict[str, tuple[int, bytes]]:
        """The last state per key of `partitions`: key -> (partition, state bytes); retired keys left out."""
        groups = sorted(set(partitions))
        if not groups:
            return {}
        assert self._restorer is not None, "start() first"
        tps = [TopicPartition(self.topic, i) for i in groups]
        self._restorer.assign(tps)
        await self._restorer.seek_to_beginning(*tps)
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        while True:
            batch = await self._restorer.getmany(timeout_ms=100)
            for tp, messages in batch.items():
                for m in messages:
                    latest[m.key] = (tp.partition, m.value)
            ends = [(self._restorer.highwater(tp), await self._restorer.position(tp)) for tp in tps]
            if all(hw is not None and pos >= hw for hw, pos in ends):
                break
        self._restorer.assign([])
        return {key.decode(): (partition, value) for key, (partition, value) in latest.items() if value is not None}
