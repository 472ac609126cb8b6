"""trigger-engine wiring: the fleet topics in, TriggerEvents out, one TriggerRunner per vehicle.

Co-partitioning. The four input topics have equal partition counts and are keyed by vehicle id, so
one vehicle sits on the same partition index i everywhere. The group uses the range assignor, which
gives partition i of every topic to one member: that member owns "partition group" i and every
runner of its vehicles.

State: the edge's `StateCheckpoints` over the compacted topic `loop.trigger-state.v1`. After each
batch, every runner the batch changed is written with `snapshot()`, keyed by vehicle id and pinned
to partition i; the TriggerEvents are sent first, the checkpoints second, and only then does the
consumer commit the input offsets. When partition group i is assigned, its runners are restored
from partition i of the state topic (last value per vehicle wins). A runner whose state would not
fit in one message is trimmed (its buffered input dropped, logged), and reset to its clocks alone
if that is still too big: the engine never dies of its own checkpoint. A checkpoint is therefore never older than the
committed input offsets: a restart or rebalance re-reads input the restored runners have already
accepted or evaluated, which the runner skips as duplicate or stale — no event lost, none repeated.
A crash between sending events and writing the checkpoint re-sends those events with the SAME
deterministic trigger_id (at-least-once transport; sinks dedupe by trigger_id).

Event-time alignment across topics (Kafka Streams' max.task.idle). Records arrive in fetch order:
in a backlog one topic can run minutes ahead of another, while a runner waits only its allowed
lateness (2 s). Every record goes into its runner's buffer at once, but a runner of group i
evaluates only up to the group's input watermark: the edge's `Watermark` over the group's topic
partitions (its one idle rule: the partitions not caught up hold it at the newest event time each
delivered; none lagging, no cap). A partition that runs more than `MAX_SKEW_MS` ahead of that
watermark is paused (the consumer's `align` hook), so the buffers (and the checkpoints) stay
bounded while the lagging topic catches up.

Bad input: undecodable bytes, unknown schema versions, key/vehicle mismatch, wrong payload,
timestamps outside 2015..2100 or an hour ahead of / a week behind the vehicle's newest message,
implausible clocks (`FleetClock`: ahead of the broker's append time or of the fleet's bulk), a
pose batch whose columns do not hold its sample count, and a vehicle seen on two partition indices
are refused (dead-letter topic, with the reason). NaN/inf and implausible values inside a message
are masked by the runner; duplicates and stale re-sends are skipped by the runner.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from fleetloop import codec, topics
from fleetloop.bus import (
    BatchConsumer,
    Bus,
    ConsumerRebalanceListener,
    FleetClock,
    RangePartitionAssignor,
    Record,
    Refusal,
    Stall,
    StateCheckpoints,
    TopicPartition,
    Watermark,
)
from fleetloop.config import Settings
from fleetloop.triggers import TriggerConfig, TriggerRunner, load_config
from fleetloop.v1 import common_pb2, triggers_pb2
from fleetloop.warehouse import Warehouse

log = logging.getLogger(__name__)

NAME = "trigger-engine"
GROUP_ID = "trigger-engine"
STATE_TOPIC = topics.TRIGGER_STATE
PAYLOAD_BY_TOPIC = {topics.POSE: "pose", topics.EVENTS: "event", topics.PERCEPTION: "perception",
                    topics.HEARTBEAT: "heartbeat"}
# How far (event time) one input partition may run ahead of its group's input watermark before it
# is paused. A minute of one vehicle's pose is ~40 kB of buffered runner state: small, while large
# enough that a live stream (skew of a poll loop, ~1 s) never pauses.
MAX_SKEW_MS = 60_000
NO_DATA_MS = -1  # a vehicle's newest time before it has any


class TriggerEngine(ConsumerRebalanceListener):
    """The service (see module doc). `handle` is the consumer's handler; the rebalance callbacks
    drop and restore runners. The warehouse argument is unused: the engine needs no database."""

    name = NAME

    def __init__(self, settings: Settings, warehouse: Warehouse | None, bus: Bus,
                 config: TriggerConfig | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.config = config or load_config()
        self.runners: dict[str, TriggerRunner] = {}
        self.partition_of: dict[str, int] = {}   # vehicle id -> partition index (its group)
        self.owned: set[int] = set()             # partition groups this member owns now
        self.unrestored: set[int] = set()        # groups assigned whose state is not restored yet
        self.sources = Watermark(idle_after_ms=0)
        self.clock = FleetClock()
        self.events_sent = 0
        self.restored = 0
        self.trimmed = 0
        self.grpc_port = 0
        self._lock = asyncio.Lock()              # a batch and a rebalance never interleave
        self.checkpoints = StateCheckpoints(bus, settings.kafka_bootstrap_servers, STATE_TOPIC,
                                            list(PAYLOAD_BY_TOPIC), NAME)
        self.consumer = BatchConsumer(
            bootstrap=settings.kafka_bootstrap_servers, group_id=GROUP_ID, topic_names=list(PAYLOAD_BY_TOPIC),
            handler=self.handle, bus=bus, service=NAME, batch_max=settings.consumer_batch_max,
            poll_ms=settings.consumer_poll_ms, assignor=RangePartitionAssignor, listener=self, align=self.ahead,
        )
        self.consumers = [self.consumer]

    def migrate(self) -> None:
        """Nothing to migrate: the engine owns no tables (its state lives in STATE_TOPIC)."""

    async def ensure_state_topic(self) -> int:
        """Create STATE_TOPIC co-partitioned with the inputs; returns the partition count."""
        return await self.checkpoints.ensure()

    async def settled(self) -> bool:
        """Nothing is pending beyond the consumers' lag (runtime.Service)."""
        return True

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        """Consume until `stop` is set. `serve_grpc` is accepted for the host; the engine serves none."""
        await self.ensure_state_topic()
        await self.checkpoints.start()
        try:
            await self.consumer.run(stop)
        finally:
            await self.checkpoints.stop()

    # -- the batch ------------------------------------------------------------------------------
    async def handle(self, records: list[Record]) -> list[Refusal]:
        """Feed the batch to the runners, send their events, then checkpoint the changed runners."""
        async with self._lock:
            if self.unrestored:
                await self._restore_pending()
            refusals: list[Refusal] = []
            fed: dict[str, list[common_pb2.Envelope]] = defaultdict(list)
            newest: dict[str, int] = {}
            for record in records:
                if record.partition not in self.owned:
                    continue  # fetched before a rebalance took it away: not committed, the owner replays it
                try:
                    env = self._decode(record, newest)
                except codec.Rejected as rejected:
                    refusals.append(Refusal(record, rejected.reason, rejected.detail))
                    continue
                fed[env.vehicle_id].append(env)
                self.sources.observe(TopicPartition(record.topic, record.partition), env.event_time_ms)
            self.clock.advance()
            watermarks = {i: await self.input_watermark(i) for i in self.owned}
            events: list[triggers_pb2.TriggerEvent] = []
            changed = []
            for vehicle_id, runner in self.runners.items():
                group = self.partition_of[vehicle_id]
                if group not in watermarks:
                    continue
                closed = runner.closed_until_ms
                events += runner.feed_many(fed.get(vehicle_id, ()), watermarks[group])
                if vehicle_id in fed or runner.closed_until_ms != closed:
                    changed.append(vehicle_id)
            await self.bus.send_many([(topics.TRIGGERS, e.vehicle_id.encode(), e.SerializeToString())
                                      for e in events])
            await self._checkpoint(changed)
            self.events_sent += len(events)
            return refusals

    def _decode(self, record: Record, newest: dict[str, int]) -> common_pb2.Envelope:
        """Decode and check one record; make sure its vehicle has a runner on this partition group."""
        payload = PAYLOAD_BY_TOPIC[record.topic]
        # plausibility=False: the runners mask implausible samples themselves.
        env = codec.decode(record.topic, record.key, record.value, plausibility=False)
        vehicle_id = env.vehicle_id
        runner = self.runners.get(vehicle_id)
        if runner is not None and self.partition_of[vehicle_id] != record.partition:
            raise codec.Rejected("not_co_partitioned", f"{vehicle_id} is on partition {self.partition_of[vehicle_id]}"
                                                       f" of the other topics, {record.partition} here")
        vehicle_ms = max(newest.get(vehicle_id, NO_DATA_MS), runner.max_event_ms if runner else NO_DATA_MS)
        codec.check_watermark(env.event_time_ms, vehicle_ms)
        self.clock.check(vehicle_id, env.event_time_ms, record.timestamp_ms)
        if payload == "pose":
            codec.pose_columns(env.pose)  # raises bad_shape when a column does not hold sample_count values
        if runner is None:
            self.runners[vehicle_id] = TriggerRunner(self.config, vehicle_id)
            self.partition_of[vehicle_id] = record.partition
        newest[vehicle_id] = max(newest.get(vehicle_id, NO_DATA_MS), env.event_time_ms)
        self.clock.observe(vehicle_id, env.event_time_ms, record.timestamp_ms)
        return env

    def _group(self, partition: int) -> list[TopicPartition]:
        return [TopicPartition(t, partition) for t in PAYLOAD_BY_TOPIC]

    async def input_watermark(self, partition: int) -> int | None:
        """The input watermark of group `partition` (epoch ms; NO_DATA while a lagging input has
        delivered nothing); None when no input of the group lags (each runner's own clock rules)."""
        group = self._group(partition)
        if not self.consumer.lagging.intersection(group):
            return None
        return self.sources.value(self.consumer.lagging, group)

    def ahead(self) -> set[TopicPartition]:
        """The `align` hook: input partitions more than MAX_SKEW_MS ahead of their group's watermark."""
        paused: set[TopicPartition] = set()
        for partition in self.owned:
            paused |= self.sources.ahead(MAX_SKEW_MS, self.consumer.lagging, self._group(partition))
        return paused

    async def _checkpoint(self, vehicles: list[str]) -> None:
        """Write the runners of `vehicles`; one too big for a message is trimmed, then written."""
        refused = await self.checkpoints.write([(v, self.runners[v].snapshot(), self.partition_of[v])
                                                for v in vehicles])
        for vehicle_id in refused:
            self._trim(vehicle_id)
        if refused:
            await self.checkpoints.write([(v, self.runners[v].snapshot(), self.partition_of[v]) for v in refused])

    def _trim(self, vehicle_id: str) -> None:
        """Bound a runner whose state outgrew one message: drop its buffered input, and if that is not
        enough, start it afresh keeping only its clocks (so replays stay duplicates)."""
        runner = self.runners[vehicle_id]
        self.trimmed += 1
        dropped = runner.drop_pending()
        if self.checkpoints.oversized(vehicle_id, runner.snapshot()):
            fresh = TriggerRunner(self.config, vehicle_id)
            fresh.closed_until_ms, fresh.max_event_ms = runner.closed_until_ms, runner.max_event_ms
            self.runners[vehicle_id] = fresh
            log.warning("%s: state of %s too big for a checkpoint even without its input; reset", NAME, vehicle_id)
        log.warning("%s: state of %s too big for a checkpoint; dropped %d buffered messages", NAME, vehicle_id,
                    dropped)

    # -- rebalances -----------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop handling everything until the new assignment is known (waits for a running batch)."""
        async with self._lock:
            self.owned = set()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Keep the runners of groups still owned, drop the others, restore the new ones.

        A restore that fails here (aiokafka only logs listener errors) is retried by the next batch,
        which stalls until it succeeds.
        """
        async with self._lock:
            groups = {tp.partition for tp in assigned}
            missing = {tp for i in groups for tp in self._group(i)} - assigned
            if missing:
                log.error("%s: assignment is not co-partitioned; missing %s", NAME, sorted(missing))
            for vehicle_id in [v for v, i in self.partition_of.items() if i not in groups]:
                del self.runners[vehicle_id]
                del self.partition_of[vehicle_id]
            kept = set(self.partition_of.values())
            self.sources.keep(tp for tp in list(self.sources.newest) if tp.partition in kept)
            self.unrestored = groups - kept
            self.owned = groups
            try:
                await self._restore_pending()
            except Exception:  # noqa: BLE001 - retried by the next batch (see above)
                log.exception("%s: restoring trigger state failed; the next batch retries it", NAME)

    async def _restore_pending(self) -> None:
        """Restore the runners of `unrestored` groups from STATE_TOPIC; raises Stall when that fails."""
        try:
            states = await self.checkpoints.restore(self.unrestored)
        except Exception as exc:
            raise Stall(f"{NAME}: trigger state of partitions {sorted(self.unrestored)} not restored") from exc
        for vehicle_id, (partition, value) in states.items():
            self.runners[vehicle_id] = TriggerRunner.restore(value, self.config)
            self.partition_of[vehicle_id] = partition
        self.restored += len(states)
        log.info("%s: restored %d runners of partitions %s", NAME, len(states), sorted(self.unrestored))
        self.unrestored = set()
