"""The producer side: sends awaited until the broker acknowledges them, and dead-letter publishing."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer

from fleetloop import topics
from fleetloop.bus.records import Refusal
from fleetloop.codec.rejected import STRUCTURAL_REASONS
from fleetloop.v1 import deadletter_pb2

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 8 << 20  # the producer's max request size; a bigger value cannot be sent at all


class Bus:
    """The producer side: sends awaited until the broker acknowledges them."""

    def __init__(self, bootstrap: str, client_id: str = "fleetloop") -> None:
        self.max_request_bytes = MAX_REQUEST_BYTES
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, client_id=client_id, acks="all",
            linger_ms=5, max_batch_size=1 << 20, max_request_size=MAX_REQUEST_BYTES,
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
        """Publish refused records to loop.deadletter.v1 with their reason and original bytes.

        One full copy per bad record: when every consumer of the topic refuses it alike (a structural
        reason) and another service keeps the topic's letters (topics.LETTER_KEEPER), this letter
        leaves the bytes out and carries their size and SHA-256, pointing at the keeper's letter."""
        messages = []
        for refusal in refusals:
            rec = refusal.record
            log.warning("%s: dead letter %s/%d@%d: %s %s", service, rec.topic, rec.partition, rec.offset,
                        refusal.reason, refusal.detail[:200])
            original = rec.value or b""
            keeper = topics.LETTER_KEEPER.get(rec.topic, service)
            compact = refusal.reason in STRUCTURAL_REASONS and keeper != service
            letter = deadletter_pb2.DeadLetter(
                source_topic=rec.topic, source_partition=rec.partition, source_offset=rec.offset,
                key=rec.key or b"", original=b"" if compact else original, reason=refusal.reason,
                detail=refusal.detail, service=service, refused_at_ms=watermark_ms, original_size=len(original),
                original_sha256=hashlib.sha256(original).digest(), original_kept_by=keeper if compact else "",
            )
            messages.append((topics.DEADLETTER, rec.key, letter.SerializeToString()))
        await self.send_many(messages)
