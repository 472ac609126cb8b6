"""The one Kafka helper (aiokafka): a producer, a batched consumer that commits only after
the batch's effect is durable, and dead-letter publishing.

Delivery is at-least-once: a crash between the effect and the commit replays the batch,
and the sinks are idempotent, so the effect is exactly once (ARCHITECTURE §5).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import CommitFailedError, TopicAlreadyExistsError

from fleetloop import topics
from fleetloop.v1 import deadletter_pb2

log = logging.getLogger(__name__)
# How long a consumer may take to leave its group on shutdown. aiokafka's stop waits for the group
# coordination to finish, and a group stuck rebalancing (seen with Tansu when members leave at once)
# never finishes; past aiokafka's 10 s session timeout the broker evicts the member anyway, and offsets
# are committed only after their effect, so giving up here loses and doubles nothing.
CONSUMER_STOP_TIMEOUT_S = 10.0
POLL_GRACE_S = 1.0  # beyond a poll's own timeout, before `BatchConsumer.fetch` gives up on a pending rebalance


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """A record a handler refused: it goes to the dead-letter topic with this reason."""

    record: Record
    reason: str
    detail: str = ""


Handler = Callable[[list[Record]], Awaitable[Sequence[Refusal]]]


async def ensure_topics(bootstrap: str, names: Iterable[str] = topics.ALL,
                        partitions: int = topics.DEFAULT_PARTITIONS) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name in names if name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


class Bus:
    """The producer side: sends awaited until the broker acknowledges them."""

    def __init__(self, bootstrap: str, client_id: str = "fleetloop") -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, client_id=client_id, acks="all",
            linger_ms=5, max_batch_size=1 << 20, max_request_size=8 << 20,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        await self._producer.send_and_wait(topic, value, key=key)

    async def send_many(self, messages: Iterable[tuple[str, bytes | None, bytes]]
                        | Iterable[tuple[str, bytes | None, bytes, int]]) -> int:
        """Send (topic, key, value) triples pipelined; returns once all are acknowledged.

        A fourth element, when given, pins the partition (co-partitioned state topics).
        """
        futures = [await self._producer.send(m[0], m[2], key=m[1], partition=m[3] if len(m) > 3 else None)
                   for m in messages]
        if futures:
            await asyncio.gather(*futures)
        return len(futures)

    async def dead_letter(self, refusals: Sequence[Refusal], service: str, watermark_ms: int = 0) -> None:
        """Publish refused records to loop.deadletter.v1 with their original bytes and reason."""
        messages = []
        for refusal in refusals:
            rec = refusal.record
            letter = deadletter_pb2.DeadLetter(
                source_topic=rec.topic, source_partition=rec.partition, source_offset=rec.offset,
                key=rec.key or b"", original=rec.value, reason=refusal.reason, detail=refusal.detail,
                service=service, refused_at_ms=watermark_ms,
            )
            messages.append((topics.DEADLETTER, rec.key, letter.SerializeToString()))
        await self.send_many(messages)


class _EpochListener(ConsumerRebalanceListener):
    """Counts revocations (so a batch that straddles a rebalance is not committed) and delegates."""

    def __init__(self, owner: BatchConsumer, listener: ConsumerRebalanceListener | None) -> None:
        self.owner = owner
        self.listener = listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.owner.rebalances += 1
        if self.listener is not None:
            await self.listener.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.listener is not None:
            await self.listener.on_partitions_assigned(assigned)


class BatchConsumer:
    """Consume `topics` in group `group_id` and hand each polled batch to `handler`.

    The handler performs the batch's effect (inserts, state updates) and returns the records
    it refused; those go to the dead-letter topic; only then are offsets committed. A batch
    during which the group rebalanced is not committed: whoever owns its partitions now replays it.

    `assignor` picks the partition assignment strategy (default round robin; a stateful consumer of
    co-partitioned topics passes `RangePartitionAssignor` so partition i of every topic lands on one
    member); `listener` (async `on_partitions_revoked/assigned`) lets it drop and restore state.
    """

    def __init__(self, *, bootstrap: str, group_id: str, topic_names: Sequence[str], handler: Handler,
                 bus: Bus, service: str, batch_max: int = 5000, poll_ms: int = 200,
                 client_id: str | None = None, assignor: type[AbstractPartitionAssignor] | None = None,
                 listener: ConsumerRebalanceListener | None = None) -> None:
        self.handler = handler
        self.group_id = group_id
        self.topic_names = list(topic_names)
        self.bus = bus
        self.service = service
        self.batch_max = batch_max
        self.poll_ms = poll_ms
        self.records_done = 0
        self.records_by_topic: Counter[str] = Counter()
        self.refused = 0
        self.rebalances = 0
        self.in_flight = 0  # records of the batch being handled: fetched (so past the position) but not done
        self._listener = _EpochListener(self, listener)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group_id,
            client_id=client_id or service, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20, max_poll_records=batch_max,
            partition_assignment_strategy=(assignor or RoundRobinPartitionAssignor,),
        )

    async def start(self) -> None:
        self._consumer.subscribe(self.topic_names, listener=self._listener)
        await self._consumer.start()

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self._consumer.stop(), CONSUMER_STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("%s: consumer of group %s did not leave the group within %.0f s; exiting without it",
                        self.service, self.group_id, CONSUMER_STOP_TIMEOUT_S)

    async def fetch(self) -> dict[TopicPartition, list]:
        """The next polled batch by partition, empty after `poll_ms` without records.

        aiokafka's getmany waits for a pending assignment without its timeout, so a group stuck
        rebalancing would hold the caller there for good and a stop would never be seen; the wait is
        bounded here (nothing is drained before the assignment, so giving up loses no record).
        """
        try:
            return await asyncio.wait_for(self._consumer.getmany(timeout_ms=self.poll_ms, max_records=self.batch_max),
                                          self.poll_ms / 1000 + POLL_GRACE_S)
        except TimeoutError:
            return {}

    async def poll_once(self) -> int:
        """Poll, handle and commit one batch; returns the number of records handled.

        The batch counts in `in_flight` (and so in `lag`) from its fetch until `handle_batch` returns.
        """
        epoch = self.rebalances
        polled = await self.fetch()
        if not polled:
            return 0
        records = [Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                   for batch in polled.values() for m in batch]
        self.in_flight = len(records)
        try:
            await self.handle_batch(polled, records, epoch)
        finally:
            self.in_flight = 0
        return len(records)

    async def handle_batch(self, polled: dict[TopicPartition, list], records: list[Record], epoch: int) -> None:
        """Hand `records` (the batch `polled`, by partition) to the handler, dead-letter its refusals and
        commit, unless the group rebalanced since `epoch` (the rebalance count before the fetch)."""
        refusals = await self.handler(records)
        if refusals:
            await self.bus.dead_letter(refusals, self.service)
            self.refused += len(refusals)
        if epoch != self.rebalances:
            log.info("%s: the group rebalanced during a batch; it is left uncommitted", self.service)
            return
        offsets = {tp: batch[-1].offset + 1 for tp, batch in polled.items()}
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError:
            # A rebalance took the partitions away; the new owner replays from the last
            # commit and the idempotent sinks absorb the repeat.
            log.warning("%s: commit failed after rebalance; batch will be replayed", self.service)
        self.records_done += len(records)
        self.records_by_topic.update(r.topic for r in records)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            while not stop.is_set():
                await self.poll_once()
        finally:
            await self.stop()

    async def lag(self) -> int | None:
        """Records fetched-but-unhandled or not yet fetched on this member's partitions.

        Uses the high watermark of the last fetch response, not ListOffsets: Tansu 0.6 answers
        ListOffsets(latest) with the last batch's base offset + 1, which undercounts. The batch being
        handled counts too (the position passes it as soon as it is fetched), so 0 means its effect is
        done. None means not known yet (no assignment, or a partition not fetched since it was assigned).
        """
        assigned = self._consumer.assignment()
        if not assigned:
            return None
        total = self.in_flight
        for tp in assigned:
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                return None
            total += highwater - await self._consumer.position(tp)
        return total

    def assignment(self) -> set[TopicPartition]:
        """This member's partitions now."""
        return set(self._consumer.assignment())

    async def caught_up(self, tp: TopicPartition) -> bool:
        """Whether this member has consumed everything the last fetch of `tp` saw (position equals
        the fetch high watermark); False while `tp` has not been fetched since it was assigned."""
        highwater = self._consumer.highwater(tp)
        return highwater is not None and await self._consumer.position(tp) >= highwater

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        """Stop fetching `tps` (records already handed out stay handed out) until `resume`."""
        self._consumer.pause(*tps)

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        self._consumer.resume(*tps)
