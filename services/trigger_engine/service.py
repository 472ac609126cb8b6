"""trigger-engine wiring: the fleet topics in, TriggerEvents out, one TriggerRunner per vehicle.

Co-partitioning. The four input topics have equal partition counts and are keyed by vehicle id, so
one vehicle sits on the same partition index i everywhere. The group uses the range assignor, which
gives partition i of every topic to one member: that member owns "partition group" i and every
runner of its vehicles.

State (what a faust table's changelog does, kept explicit). After each batch, every runner the
batch changed is written with `to_bytes()` to the compacted topic `loop.trigger-state.v1`, keyed by
vehicle id and pinned to partition i; the TriggerEvents are sent first, the checkpoints second, and
only then does the consumer commit the input offsets. When partition group i is assigned, its
runners are restored by reading partition i of the state topic from the beginning to its fetch
high watermark (last value per vehicle wins). A checkpoint is therefore never older than the
committed input offsets: a restart or rebalance re-reads input the restored runners have already
accepted or evaluated, which the runner skips as duplicate or stale — no event lost, none repeated.
A crash between sending events and writing the checkpoint re-sends those events with the SAME
deterministic trigger_id (at-least-once transport; sinks dedupe by trigger_id).

Event-time alignment across topics (Kafka Streams' max.task.idle). Records arrive in fetch order:
in a backlog one topic can run minutes ahead of another, while a runner waits only its allowed
lateness (2 s). Every record goes into its runner's buffer at once, but a runner of group i
evaluates only up to the group's input watermark: the minimum, over the group's topic partitions
that are not caught up (position < fetch high watermark), of the newest event time consumed from
each. A partition that runs more than `MAX_SKEW_MS` ahead of that watermark is paused, so the
buffers (and the checkpoints) stay bounded while the lagging topic catches up.

Bad input: undecodable bytes, unknown schema versions, key/vehicle mismatch, wrong payload,
timestamps outside 2015..2100 or an hour ahead of / a week behind the vehicle's newest message, a
pose batch whose columns do not hold its sample count, and a vehicle seen on two partition indices
are refused (dead-letter topic, with the reason). NaN/inf and implausible values inside a message
are masked by the runner; duplicates and stale re-sends are skipped by the runner.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import TopicAlreadyExistsError
from fleetloop import codec, topics
from fleetloop.bus import BatchConsumer, Bus, Record, Refusal
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
NO_DATA_MS = -1  # input watermark of a group with a partition that has delivered nothing yet


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
        self.newest_ms: dict[TopicPartition, int] = {}
        self.events_sent = 0
        self.restored = 0
        self.grpc_port = 0
        self._lock = asyncio.Lock()              # a batch and a rebalance never interleave
        self._failure: BaseException | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self.consumer = BatchConsumer(
            bootstrap=settings.kafka_bootstrap_servers, group_id=GROUP_ID, topic_names=list(PAYLOAD_BY_TOPIC),
            handler=self.handle, bus=bus, service=NAME, batch_max=settings.consumer_batch_max,
            poll_ms=settings.consumer_poll_ms, assignor=RangePartitionAssignor, listener=self,
        )

    def migrate(self) -> None:
        """Nothing to migrate: the engine owns no tables (its state lives in STATE_TOPIC)."""

    async def ensure_state_topic(self) -> int:
        """Create STATE_TOPIC (compacted) with the input topics' partition count; returns the count.

        Raises RuntimeError when the inputs are not co-partitioned or the state topic disagrees.
        """
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            described = await admin.describe_topics(list(PAYLOAD_BY_TOPIC))
            counts = {t["topic"]: len(t["partitions"]) for t in described}
            if len(set(counts.values())) != 1:
                raise RuntimeError(f"input topics are not co-partitioned: {counts}")
            partitions = next(iter(counts.values()))
            try:
                await admin.create_topics([NewTopic(STATE_TOPIC, partitions, 1, topic_configs={
                    "cleanup.policy": "compact"})])
            except TopicAlreadyExistsError:
                pass
            state = await admin.describe_topics([STATE_TOPIC])
            if len(state[0]["partitions"]) != partitions:
                raise RuntimeError(f"{STATE_TOPIC} has {len(state[0]['partitions'])} partitions, inputs {partitions}")
            return partitions
        finally:
            await admin.close()

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        """Consume until `stop` is set. `serve_grpc` is accepted for the host; the engine serves none."""
        await self.ensure_state_topic()
        self._restorer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                          enable_auto_commit=False, client_id=f"{NAME}-restore",
                                          max_partition_fetch_bytes=8 << 20)
        await self._restorer.start()
        try:
            await self.consumer.run(stop)
        finally:
            await self._restorer.stop()

    # -- the batch ------------------------------------------------------------------------------
    async def handle(self, records: list[Record]) -> list[Refusal]:
        """Feed the batch to the runners, send their events, then checkpoint the changed runners."""
        if self._failure is not None:
            raise RuntimeError("restoring trigger state failed") from self._failure
        async with self._lock:
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
                tp = TopicPartition(record.topic, record.partition)
                self.newest_ms[tp] = max(self.newest_ms.get(tp, NO_DATA_MS), env.event_time_ms)
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
            await self.bus.send_many([(STATE_TOPIC, v.encode(), self.runners[v].to_bytes(), self.partition_of[v])
                                      for v in changed])
            self.events_sent += len(events)
            await self._pace(watermarks)
            return refusals

    def _decode(self, record: Record, newest: dict[str, int]) -> common_pb2.Envelope:
        """Decode and check one record; make sure its vehicle has a runner on this partition group."""
        payload = PAYLOAD_BY_TOPIC[record.topic]
        env = codec.decode_envelope(record.value, record.key, payload)
        vehicle_id = env.vehicle_id
        runner = self.runners.get(vehicle_id)
        if runner is not None and self.partition_of[vehicle_id] != record.partition:
            raise codec.Rejected("not_co_partitioned", f"{vehicle_id} is on partition {self.partition_of[vehicle_id]}"
                                                       f" of the other topics, {record.partition} here")
        vehicle_ms = max(newest.get(vehicle_id, NO_DATA_MS), runner.max_event_ms if runner else NO_DATA_MS)
        codec.check_watermark(env.event_time_ms, vehicle_ms)
        if payload == "pose":
            if not 0 < env.pose.sample_count <= codec.MAX_SAMPLES_PER_BATCH:
                raise codec.Rejected("bad_shape", f"{env.pose.sample_count} samples in one pose batch")
            codec.pose_columns(env.pose)  # raises bad_shape when a column does not hold sample_count values
        if runner is None:
            self.runners[vehicle_id] = TriggerRunner(self.config, vehicle_id)
            self.partition_of[vehicle_id] = record.partition
        newest[vehicle_id] = max(newest.get(vehicle_id, NO_DATA_MS), env.event_time_ms)
        return env

    async def input_watermark(self, partition: int) -> int | None:
        """Newest event time every input of group `partition` has delivered (epoch ms), ignoring the
        inputs that are caught up; None when all are caught up (each runner's own clock rules)."""
        lagging = [TopicPartition(t, partition) for t in PAYLOAD_BY_TOPIC]
        lagging = [tp for tp in lagging if not await self.consumer.caught_up(tp)]
        if not lagging:
            return None
        return min(self.newest_ms.get(tp, NO_DATA_MS) for tp in lagging)

    async def _pace(self, watermarks: dict[int, int | None]) -> None:
        """Pause input partitions that run more than MAX_SKEW_MS ahead of their group; resume the rest."""
        ahead, behind = [], []
        for partition, watermark in watermarks.items():
            for topic in PAYLOAD_BY_TOPIC:
                tp = TopicPartition(topic, partition)
                too_far = (watermark is not None and watermark != NO_DATA_MS
                           and self.newest_ms.get(tp, NO_DATA_MS) > watermark + MAX_SKEW_MS
                           and not await self.consumer.caught_up(tp))
                (ahead if too_far else behind).append(tp)
        self.consumer.pause(ahead)
        self.consumer.resume(behind)

    # -- rebalances -----------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop handling everything until the new assignment is known (waits for a running batch)."""
        async with self._lock:
            self.owned = set()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Keep the runners of groups still owned, drop the others, restore the new ones."""
        async with self._lock:
            try:
                groups = {tp.partition for tp in assigned}
                missing = {TopicPartition(t, i) for t in PAYLOAD_BY_TOPIC for i in groups} - assigned
                if missing:
                    raise RuntimeError(f"assignment is not co-partitioned; missing {sorted(missing)}")
                for vehicle_id in [v for v, i in self.partition_of.items() if i not in groups]:
                    del self.runners[vehicle_id]
                    del self.partition_of[vehicle_id]
                kept = set(self.partition_of.values())
                self.newest_ms = {tp: t for tp, t in self.newest_ms.items() if tp.partition in kept}
                await self._restore(groups - kept)
                self.owned = groups
            except Exception as exc:  # aiokafka only logs listener errors; the next batch raises it
                log.exception("%s: restoring trigger state failed", NAME)
                self._failure = exc

    async def _restore(self, groups: set[int]) -> None:
        """Read partitions `groups` of STATE_TOPIC to their high watermark; the last state per vehicle wins."""
        if not groups:
            return
        assert self._restorer is not None
        tps = [TopicPartition(STATE_TOPIC, i) for i in sorted(groups)]
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
        for key, (partition, value) in latest.items():
            if value is None:  # a tombstone: the vehicle's state was retired
                continue
            runner = TriggerRunner.from_bytes(value, self.config)
            self.runners[key.decode()] = runner
            self.partition_of[key.decode()] = partition
        self.restored += len(latest)
        self._restorer.assign([])
        log.info("%s: restored %d runners of partitions %s", NAME, len(latest), sorted(groups))
