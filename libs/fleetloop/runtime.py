"""Hosting services: one per process (`fleetloop serve <service>`, cluster mode) or all of
them as asyncio tasks of one process (embedded mode, one chDB engine).

Libraries never import services directly; services are looked up here by name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
from collections.abc import Sequence
from typing import Any

from fleetloop.bus import Bus, ensure_topics
from fleetloop.config import Settings
from fleetloop.warehouse import Warehouse

log = logging.getLogger(__name__)

# service name -> (import path of its class, default gRPC port or 0 when it serves none)
SERVICES: dict[str, tuple[str, int]] = {
    "heartbeat-ingest": ("services.heartbeat_ingest.service:HeartbeatIngest", 50051),
    "trigger-engine": ("services.trigger_engine.service:TriggerEngine", 0),
    "case-assembler": ("services.case_assembler.service:CaseAssembler", 50052),
    "label-indexer": ("services.label_indexer.service:LabelIndexer", 0),
    "miner": ("services.miner.service:MinerService", 50053),
}


def service_class(name: str) -> Any:
    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    module, _, attr = SERVICES[name][0].partition(":")
    return getattr(importlib.import_module(module), attr)


class Host:
    """Runs the named services in this process against one warehouse and one producer."""

    def __init__(self, settings: Settings, names: Sequence[str] | None = None, grpc: bool = True) -> None:
        self.settings = settings
        self.names = list(names or SERVICES)
        self.grpc = grpc
        self.stop_event = asyncio.Event()
        self.services: dict[str, Any] = {}
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await ensure_topics(self.settings.kafka_bootstrap_servers)
        self.warehouse = Warehouse(self.settings.clickhouse_url)
        self.bus = Bus(self.settings.kafka_bootstrap_servers, client_id="fleetloop-host")
        await self.bus.start()
        for name in self.names:
            port = SERVICES[name][1]
            settings = dataclasses.replace(self.settings, grpc_port=port) if self.grpc and port else self.settings
            service = service_class(name)(settings, self.warehouse, self.bus)
            self.services[name] = service
            self.tasks.append(asyncio.create_task(service.run(self.stop_event, serve_grpc=self.grpc),
                                                  name=name))

    async def wait_caught_up(self, poll_s: float = 0.5, settle_polls: int = 6) -> None:
        """Wait until every hosted consumer group has committed everything on its topics."""
        quiet = 0
        while quiet < settle_polls:
            for task in self.tasks:
                if task.done():
                    task.result()  # surfaces a crashed service instead of waiting forever
            lags = [await consumer.lag() for service in self.services.values()
                    for consumer in getattr(service, "consumers", [getattr(service, "consumer", None)])
                    if consumer is not None]
            settled = [await service.settled() for service in self.services.values() if hasattr(service, "settled")]
            quiet = quiet + 1 if all(lag == 0 for lag in lags) and all(settled) else 0
            await asyncio.sleep(poll_s)

    async def stop(self) -> None:
        self.stop_event.set()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for name, result in zip(self.services, results, strict=True):
            if isinstance(result, BaseException):
                log.error("service %s ended with %r", name, result)
        await self.bus.stop()
