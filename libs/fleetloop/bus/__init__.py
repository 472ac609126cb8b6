"""The streaming edge (aiokafka): the only package that talks to the broker. Every service consumes
and produces through it (docs/ARCHITECTURE.md, the streaming edge).

* `records` — `Record`, `Refusal`, `Handler`.
* `producer` — `Bus`: acknowledged sends and dead letters.
* `consumer` — `BatchConsumer`: a batch's effect before its commit; tombstones, poison records
  (`handler_error`) and stalls (`stalled`, retries with backoff) handled at the edge; hooks for
  how far each partition may be committed and which partitions to pause.
* `watermark` — `Watermark` (one idle rule for aligning sources) and `FleetClock` (per-vehicle
  plausibility and a fleet watermark forged clocks cannot move; the rule and its bound are there).
* `checkpoint` — `StateCheckpoints`: compacted, co-partitioned, size-bounded state topics.
* `admin` — `ensure_topics` (with topic configs), `partition_counts`.
* `retry` — which errors are transient.

Delivery is at-least-once: a crash between the effect and the commit replays the batch, and the
sinks are idempotent, so the effect is exactly once.
"""

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from fleetloop.bus.admin import ensure_topics, partition_counts
from fleetloop.bus.checkpoint import StateCheckpoints
from fleetloop.bus.consumer import CONSUMER_STOP_TIMEOUT_S, POLL_GRACE_S, BatchConsumer
from fleetloop.bus.producer import Bus
from fleetloop.bus.records import Handler, Record, Refusal
from fleetloop.bus.retry import Stall, is_transient
from fleetloop.bus.watermark import NO_DATA, FleetClock, Watermark

__all__ = [
    "CONSUMER_STOP_TIMEOUT_S", "NO_DATA", "POLL_GRACE_S", "BatchConsumer", "Bus", "ConsumerRebalanceListener",
    "FleetClock", "Handler", "RangePartitionAssignor", "Record", "Refusal", "Stall", "StateCheckpoints",
    "TopicPartition", "Watermark", "ensure_topics", "is_transient", "partition_counts",
]
