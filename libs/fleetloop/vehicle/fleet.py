"""Simulated vehicles on the bus: the simulator's output passes through their ring buffers, and
they answer fleet.commands.v1 upload requests with MCAP objects and fleet.uploads.v1 manifests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from fleetloop import topics
from fleetloop.bus import BatchConsumer, Bus, Record, Refusal
from fleetloop.config import Settings
from fleetloop.feed import FleetSecond
from fleetloop.v1 import common_pb2, uploads_pb2
from fleetloop.vehicle.objectstore import open_store
from fleetloop.vehicle.params import VehicleParams, load_vehicle_params
from fleetloop.vehicle.ring import RingBuffer
from fleetloop.vehicle.uploader import Uploader

log = logging.getLogger(__name__)

NAME = "fleet-vehicles"
GROUP_ID = "fleet-vehicles"


@dataclass
class UploadStats:
    requests: int = 0
    duplicates: int = 0
    completed: int = 0
    failed: int = 0
    bytes_written: int = 0
    manifests: int = 0


class FleetVehicles:
    """The vehicle runtime of a whole simulated fleet, one ring buffer per vehicle.

    Feed it with `observe` / `pass_through` (same thread as `run`'s event loop) and run `run(stop)`
    as an asyncio task: it consumes fleet.commands.v1 (group "fleet-vehicles"), answers each upload
    request once (by request id) and publishes the manifests to fleet.uploads.v1 before committing.
    """

    def __init__(self, settings: Settings, bus: Bus, params: VehicleParams | None = None) -> None:
        self.params = params or load_vehicle_params()
        self.bus = bus
        self.buffers: dict[str, RingBuffer] = {}
        self.uploader = Uploader(open_store(settings.object_store_url), self.params)
        self.answered: set[str] = set()
        self.stats = UploadStats()
        self.consumer = BatchConsumer(
            bootstrap=settings.kafka_bootstrap_servers, group_id=GROUP_ID, topic_names=[topics.COMMANDS],
            handler=self.handle, bus=bus, service=NAME, batch_max=settings.consumer_batch_max,
            poll_ms=settings.consumer_poll_ms,
        )

    def observe(self, topic: str, envelope: common_pb2.Envelope) -> None:
        """Record one message the vehicle produced into its ring buffer."""
        buffer = self.buffers.get(envelope.vehicle_id)
        if buffer is None:
            buffer = self.buffers[envelope.vehicle_id] = RingBuffer(self.params.ring_capacity_s)
        buffer.append(topic, envelope)

    def pass_through(self, seconds: Iterable[FleetSecond]) -> Iterator[FleetSecond]:
        """Yield each simulated second unchanged after recording its messages."""
        for second in seconds:
            for topic, envelope in second.messages:
                self.observe(topic, envelope)
            yield second

    async def handle(self, records: list[Record]) -> list[Refusal]:
        refusals = []
        manifests: list[uploads_pb2.UploadManifest] = []
        for record in records:
            command = uploads_pb2.VehicleCommand()
            try:
                command.ParseFromString(record.value)
            except DecodeError as exc:
                refusals.append(Refusal(record, "decode_error", str(exc) or "not a VehicleCommand"))
                continue
            if command.WhichOneof("command") != "upload" or not command.upload.request_id:
                refusals.append(Refusal(record, "wrong_payload", "expected an upload request with a request_id"))
                continue
            request = command.upload
            self.stats.requests += 1
            if request.request_id in self.answered:
                self.stats.duplicates += 1
                continue
            answer = self.uploader.answer(command.vehicle_id, self.buffers.get(command.vehicle_id), request)
            for step in answer:
                if step.state == uploads_pb2.UPLOAD_STATE_COMPLETE:
                    self.stats.completed += 1
                    self.stats.bytes_written += step.size_bytes
                elif step.state == uploads_pb2.UPLOAD_STATE_FAILED:
                    self.stats.failed += 1
                    log.info("upload %s of %s failed: %s", request.tier, request.case_id, step.error)
            manifests.extend(answer)
            self.answered.add(request.request_id)
        await self.bus.send_many((topics.UPLOADS, m.vehicle_id.encode(), m.SerializeToString()) for m in manifests)
        self.stats.manifests += len(manifests)
        return refusals

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.run(stop)
