"""`BatchConsumer`: consume topics in a group, hand each polled batch to a handler, dead-letter what it
refuses, commit only after the effect is durable — and never die of a batch.

Poison never kills. A tombstone (null value) is dead-lettered as `tombstone` before any handler
sees it. A handler exception that is transient (retry.is_transient: Redis, ClickHouse, the broker,
sockets) retries the same batch with exponential backoff and jitter, uncommitted, until it succeeds
or the consumer is stopped; meanwhile `stalled` names the cause. Any other exception is a property
of some record: the batch is bisected (the sinks are idempotent and the handlers skip duplicates,
so re-running a part is harmless) down to the records that raise alone, which are dead-lettered as
`handler_error` with the exception in `detail`; the rest flows on.

Hooks. `commit_limit() -> {TopicPartition: offset}` bounds how far each assigned partition may be
committed (state still pending in memory); `align() -> partitions` names those to pause because they
run ahead in event time (see watermark.Watermark). `lagging` (partitions with records not yet handed
out) is refreshed before each handler call, for the handler's watermark.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import CommitFailedError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from fleetloop.bus.producer import Bus
from fleetloop.bus.records import Handler, Record, Refusal
from fleetloop.bus.retry import BACKOFF, is_transient, stall_reason

log = logging.getLogger(__name__)
# How long a consumer may take to leave its group on shutdown. aiokafka's stop waits for the group
# coordination to finish, and a group stuck rebalancing (seen with Tansu when members leave at once)
# never finishes; past aiokafka's 10 s session timeout the broker evicts the member anyway, and offsets
# are committed only after their effect, so giving up here loses and doubles nothing.
CONSUMER_STOP_TIMEOUT_S = 10.0
POLL_GRACE_S = 1.0  # beyond a poll's own timeout, before `BatchConsumer.fetch` gives up on a pending rebalance

CommitLimit = Callable[[], Mapping[TopicPartition, int]]
Align = Callable[[], Iterable[TopicPartition]]


class Abandoned(Exception):
    """A stalled batch given up because the consumer is stopping: left uncommitted, replayed later."""


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
    """Consume `topics` in group `group_id` and hand each polled batch to `handler` (module doc).

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
                 listener: ConsumerRebalanceListener | None = None, commit_limit: CommitLimit | None = None,
                 align: Align | None = None) -> None:
        self.handler = handler
        self.group_id = group_id
        self.topic_names = list(topic_names)
        self.bus = bus
        self.service = service
        self.batch_max = batch_max
        self.poll_ms = poll_ms
        self.commit_limit = commit_limit
        self.align = align
        self.records_done = 0
        self.records_by_topic: Counter[str] = Counter()
        self.refused = 0
        self.rebalances = 0
        self.in_flight = 0  # records of the batch being handled: fetched (so past the position) but not done
        self.stalled: str | None = None  # None when healthy, else what the current batch waits for
        self.lagging: set[TopicPartition] = set()
        self._stop = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}
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
        except Abandoned:
            log.info("%s: stopping while stalled; the batch is left uncommitted", self.service)
            return 0
        finally:
            self.in_flight = 0
        return len(records)

    async def handle_batch(self, polled: dict[TopicPartition, list], records: list[Record], epoch: int) -> None:
        """Hand `records` (the batch `polled`, by partition) to the handler, dead-letter its refusals and
        commit, unless the group rebalanced since `epoch` (the rebalance count before the fetch)."""
        self.lagging = await self._lagging()
        tombstones = [Refusal(Record(r.topic, r.partition, r.offset, r.key, b"", r.timestamp_ms), "tombstone",
                              "null value") for r in records if r.value is None]
        refusals = tombstones + await self._handle([r for r in records if r.value is not None])
        if refusals:
            await self._retrying(lambda: self.bus.dead_letter(refusals, self.service))
            self.refused += len(refusals)
        if epoch != self.rebalances:
            log.info("%s: the group rebalanced during a batch; it is left uncommitted", self.service)
            return
        await self._commit(polled)
        self.records_done += len(records)
        self.records_by_topic.update(r.topic for r in records)
        if self.align is not None:
            self._pause_ahead(set(self.align()))

    async def _handle(self, records: list[Record]) -> list[Refusal]:
        """The handler's refusals for `records`; a record whose handling raises is one (bisection)."""
        if not records:
            return []
        try:
            return list(await self._retrying(lambda: self.handler(records)))
        except Abandoned:
            raise
        except Exception as exc:  # noqa: BLE001 - any error of one record must not end the service
            if len(records) > 1:
                middle = len(records) // 2
                return await self._handle(records[:middle]) + await self._handle(records[middle:])
            record = records[0]
            log.warning("%s: handler raised on %s/%d@%d: %r", self.service, record.topic, record.partition,
                        record.offset, exc)
            return [Refusal(record, "handler_error", f"{type(exc).__name__}: {exc}"[:4096])]

    async def _retrying(self, call):
        """Await `call()`, retrying transient errors with backoff until it succeeds or stop is set."""
        retrying = AsyncRetrying(retry=retry_if_exception(is_transient), wait=BACKOFF,
                                 stop=lambda _state: self._stop.is_set(), before_sleep=self._on_stall, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    result = await call()
        except Exception as exc:
            if is_transient(exc):
                raise Abandoned(stall_reason(exc)) from exc
            raise
        if self.stalled is not None:
            log.warning("%s, group %s: resumed after stall (%s)", self.service, self.group_id, self.stalled)
            self.stalled = None
        return result

    def _on_stall(self, state: RetryCallState) -> None:
        exc = state.outcome.exception()
        self.stalled = stall_reason(exc)
        log.warning("%s, group %s: stalled (%s: %s), try %d; retrying in %.1f s", self.service, self.group_id,
                    self.stalled, exc,
                    state.attempt_number, state.next_action.sleep if state.next_action else 0.0)

    async def _commit(self, polled: dict[TopicPartition, list]) -> None:
        """Commit the batch, or with `commit_limit` every assigned partition up to its limit."""
        if self.commit_limit is None:
            offsets = {tp: batch[-1].offset + 1 for tp, batch in polled.items()}
        else:
            # Every assigned partition, not only those in this batch: state that was pending may
            # have been released by records of other partitions.
            limit = self.commit_limit()
            offsets = {}
            for tp in self._consumer.assignment():
                position = await self._consumer.position(tp)
                offset = min(position, limit.get(tp, position))
                if self._committed.get(tp) != offset:
                    offsets[tp] = offset
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
            self._committed.update(offsets)
        except CommitFailedError:
            # A rebalance took the partitions away; the new owner replays from the last
            # commit and the idempotent sinks absorb the repeat.
            log.warning("%s: commit failed after rebalance; batch will be replayed", self.service)

    def _pause_ahead(self, ahead: set) -> None:
        assigned = self._consumer.assignment()
        self._consumer.pause(*(tp for tp in assigned if tp in ahead))
        self._consumer.resume(*(tp for tp in assigned if tp not in ahead))

    async def _lagging(self) -> set[TopicPartition]:
        """Assigned partitions with records not yet handed to the handler (or not yet fetched)."""
        lagging = set()
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None or await self._consumer.position(tp) < highwater:
                lagging.add(tp)
        return lagging

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
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
