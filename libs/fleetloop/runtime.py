"""Hosting services: one per process (`fleetloop serve <service>`, cluster mode) or all of
them as asyncio tasks of one process (embedded mode, one chDB engine).

Libraries never import services directly; services are looked up here by name, and the host and
`make demo` use only what `Service` declares (a service's other public attributes are its own).

The host supervises what it runs: a service whose task raises is logged with its error and
started again as a fresh instance (its consumers resume from their committed offsets and state
checkpoints, so a restart neither loses nor doubles) after an exponential backoff with jitter.
While it waits, a health-only server on its gRPC port answers NOT_SERVING. A service that fails
more than `max_restarts` times within `restart_window_s`, or cannot bind its port (`PortInUse`),
is not restarted: its task ends with the error, and `fleetloop up` / `serve` exit non-zero.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from fleetloop.bus import BatchConsumer, Bus, ensure_topics
from fleetloop.config import Settings
from fleetloop.grpc_server import PortInUse, start_not_serving
from fleetloop.warehouse import Warehouse

log = logging.getLogger(__name__)



class Service(Protocol):
    """What every service class under services/ is: built as `cls(settings, warehouse, bus)`."""

    consumers: Sequence[BatchConsumer]  # every consumer group it runs (empty for a query-only service)

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        """Consume (and serve gRPC when asked) until `stop` is set; an exception is a failure to restart."""

    async def settled(self) -> bool:
        """True when nothing the service took in is still pending beyond its consumers' lag."""


# service name -> (import path of its class, default gRPC port or 0 when it serves none)
SERVICES: dict[str, tuple[str, int]] = {
    "heartbeat-ingest": ("services.heartbeat_ingest.service:HeartbeatIngest", 50051),
    "trigger-engine": ("services.trigger_engine.service:TriggerEngine", 0),
    "case-assembler": ("services.case_assembler.service:CaseAssembler", 50052),
    "label-indexer": ("services.label_indexer.service:LabelIndexer", 0),
    "miner": ("services.miner.service:MinerService", 50053),
    "replay-validator": ("services.replay_validator.service:ReplayValidator", 50054),
}


def service_class(name: str) -> Any:
    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    module, _, attr = SERVICES[name][0].partition(":")
    return getattr(importlib.import_module(module), attr)


class Host:
    """Runs the named services in this process against one warehouse and one producer, and
    restarts a service that fails (see the module's docstring for the rule)."""

    def __init__(self, settings: Settings, names: Sequence[str] | None = None, grpc: bool = True, *,
                 default_ports: bool = True, client_id: str = "fleetloop-host", max_restarts: int = 5,
                 restart_window_s: float = 300.0, backoff_initial_s: float = 1.0,
                 backoff_max_s: float = 30.0) -> None:
        self.settings = settings
        self.names = list(names or SERVICES)
        unknown = [n for n in self.names if n not in SERVICES]
        if unknown:
            raise KeyError(f"unknown service {unknown[0]!r}; known: {', '.join(SERVICES)}")
        self.grpc = grpc
        self.default_ports = default_ports
        self.client_id = client_id
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.backoff = wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s)
        self.stop_event = asyncio.Event()
        self.services: dict[str, Service] = {}
        self.tasks: list[asyncio.Task] = []
        self.restarts: collections.Counter[str] = collections.Counter()
        self.health: dict[str, str] = {}  # name -> RUNNING, RESTARTING, FAILED, STOPPED
        self._failures: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    async def start(self) -> None:
        await ensure_topics(self.settings.kafka_bootstrap_servers)
        self.warehouse = Warehouse(self.settings.clickhouse_url)
        self.bus = Bus(self.settings.kafka_bootstrap_servers, client_id=self.client_id)
        await self.bus.start()
        for name in self.names:
            self.services[name] = self._instance(name)
            self.tasks.append(asyncio.create_task(self._supervise(name), name=name))

    def _settings_for(self, name: str) -> Settings:
        port = SERVICES[name][1]
        if self.grpc and port and self.default_ports:
            return self.settings.model_copy(update={"grpc_port": port})
        return self.settings

    def _instance(self, name: str) -> Service:
        return service_class(name)(self._settings_for(name), self.warehouse, self.bus)

    async def _supervise(self, name: str) -> None:
        """Run service `name` until stop, restarting it on failure; raises once it gives up."""
        placeholder: list[Any] = []
        settings = self._settings_for(name)
        address = f"{settings.grpc_host}:{settings.grpc_port}" if self.grpc and SERVICES[name][1] else None

        def worth_restarting(exc: BaseException) -> bool:
            if self.stop_event.is_set() or isinstance(exc, PortInUse) or not isinstance(exc, Exception):
                return False
            now = time.monotonic()
            failures = self._failures[name]
            failures.append(now)
            while failures and failures[0] < now - self.restart_window_s:
                failures.popleft()
            return len(failures) <= self.max_restarts

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.restarts[name] += 1
            self.health[name] = "RESTARTING"
            log.error("service %s failed (%r); restart %d in %.1f s", name, exc, self.restarts[name],
                      state.upcoming_sleep, exc_info=exc)
            if address:  # probes see the service down (NOT_SERVING), not vanished, while it waits
                try:
                    placeholder.append(await start_not_serving(address))
                except PortInUse:
                    log.warning("service %s: port %s taken while it waits for its restart", name, address)

        async def sleep(seconds: float) -> None:
            try:
                await asyncio.wait_for(self.stop_event.wait(), timeout=seconds)
            except TimeoutError:
                pass
            while placeholder:
                await placeholder.pop().stop(grace=None)

        retrying = AsyncRetrying(retry=retry_if_exception(worth_restarting), wait=self.backoff, sleep=sleep,
                                 before_sleep=before_sleep, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    if self.stop_event.is_set():
                        break
                    if attempt.retry_state.attempt_number > 1:
                        self.services[name] = self._instance(name)  # fresh state, resumed from checkpoints
                    self.health[name] = "RUNNING"
                    await self.services[name].run(self.stop_event, serve_grpc=self.grpc)
        except BaseException as exc:
            self.health[name] = "FAILED"
            log.error("service %s failed for good after %d restarts: %r", name, self.restarts[name], exc)
            raise
        self.health[name] = "STOPPED"

    async def wait_caught_up(self, poll_s: float = 0.5, settle_polls: int = 6) -> None:
        """Wait until every hosted consumer group has committed everything on its topics."""
        quiet = 0
        while quiet < settle_polls:
            for task in self.tasks:
                if task.done():
                    task.result()  # surfaces a crashed service instead of waiting forever
            lags = [await consumer.lag() for service in self.services.values() for consumer in service.consumers]
            settled = [await service.settled() for service in self.services.values()]
            quiet = quiet + 1 if all(lag == 0 for lag in lags) and all(settled) else 0
            await asyncio.sleep(poll_s)

    async def stop(self) -> None:
        self.stop_event.set()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for name, result in zip(self.services, results, strict=True):
            if isinstance(result, BaseException):
                log.error("service %s ended with %r", name, result)
        await self.bus.stop()
