"""The service host supervises: a service that raises is restarted with backoff and shows
NOT_SERVING on its gRPC health port meanwhile; one that keeps failing, or cannot bind its port,
is given up on and its task ends with the error (so `fleetloop up` / `serve` exit non-zero).

The failing services here are small classes registered under test names; the host, its broker,
its warehouse and the gRPC health checks are the real ones."""

from __future__ import annotations

import asyncio
import logging
import socket

import grpc
import pytest
from fleetloop import runtime
from fleetloop.grpc_server import PortInUse, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import wait_until

pytestmark = pytest.mark.integration

RUNS: dict[str, int] = {}


class Flaky:
    """Serves health on its port; its first `FAILS` runs raise after a moment, later runs serve until stop."""

    FAILS = 2

    def __init__(self, settings, warehouse, bus) -> None:
        self.settings = settings

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        RUNS[type(self).__name__] = run = RUNS.get(type(self).__name__, 0) + 1
        server, _ = await start_server([], f"{self.settings.grpc_host}:{self.settings.grpc_port}")
        try:
            if run <= self.FAILS:
                await asyncio.sleep(0.2)
                raise RuntimeError(f"flaky failure {run}")
            await stop.wait()
        finally:
            await server.stop(grace=None)


class Broken(Flaky):
    FAILS = 10**6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def health_status(port: int) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                    timeout=2)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.fixture
def registered(monkeypatch):
    RUNS.clear()
    monkeypatch.setitem(runtime.SERVICES, "flaky", ("tests.integration.test_supervisor:Flaky", 1))
    monkeypatch.setitem(runtime.SERVICES, "broken", ("tests.integration.test_supervisor:Broken", 1))


async def test_a_failing_service_is_restarted_and_reads_not_serving_while_it_waits(settings, registered, caplog):
    port = free_port()
    host = runtime.Host(settings.model_copy(update={"grpc_port": port}), ["flaky"], default_ports=False,
                        backoff_initial_s=1.5, backoff_max_s=1.5)
    await host.start()
    try:
        seen: set[str] = set()

        async def not_serving_seen() -> bool:
            seen.add(await health_status(port))
            return "NOT_SERVING" in seen

        await wait_until(not_serving_seen, timeout_s=30, poll_s=0.05)
        assert host.health["flaky"] == "RESTARTING"

        async def back() -> bool:
            return RUNS.get("Flaky") == 3 and await health_status(port) == "SERVING"

        await wait_until(back, timeout_s=30, poll_s=0.1)
        assert host.restarts["flaky"] == 2
        assert host.health["flaky"] == "RUNNING"
        assert not host.tasks[0].done()
        assert "flaky failure 1" in caplog.text and "flaky failure 2" in caplog.text
    finally:
        await host.stop()
    assert host.health["flaky"] == "STOPPED"
    assert host.tasks[0].exception() is None


async def test_a_service_that_keeps_failing_is_given_up_on_with_its_error(settings, registered, caplog):
    caplog.set_level(logging.ERROR)
    host = runtime.Host(settings.model_copy(update={"grpc_port": free_port()}), ["broken"], default_ports=False,
                        max_restarts=3, backoff_initial_s=0.05, backoff_max_s=0.1)
    await host.start()
    try:
        await wait_until(lambda: asyncio.sleep(0, host.tasks[0].done()), timeout_s=60)
        with pytest.raises(RuntimeError, match="flaky failure 4"):
            host.tasks[0].result()
        assert RUNS["Broken"] == 4 and host.restarts["broken"] == 3
        assert host.health["broken"] == "FAILED"
        assert "failed for good after 3 restarts" in caplog.text
    finally:
        await host.stop()


async def test_a_taken_port_is_not_retried(settings, registered):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        host = runtime.Host(settings.model_copy(update={"grpc_port": port}), ["flaky"], default_ports=False,
                            backoff_initial_s=0.05)
        await host.start()
        try:
            await wait_until(lambda: asyncio.sleep(0, host.tasks[0].done()), timeout_s=30)
            with pytest.raises(PortInUse, match=str(port)):
                host.tasks[0].result()
            assert RUNS["Flaky"] == 1 and host.restarts["flaky"] == 0
        finally:
            await host.stop()


def test_an_unknown_service_name_is_refused_up_front(settings):
    with pytest.raises(KeyError, match="unknown service 'nope'"):
        runtime.Host(settings, ["nope"])


def test_serve_exits_non_zero_naming_the_taken_port(settings):
    import os
    import subprocess
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
               "REDIS_URL": settings.redis_url, "CLICKHOUSE_URL": f"chdb://{settings.data_dir / 'wh'}",
               "FLEETLOOP_GRPC_PORT": str(port), "FLEETLOOP_DATA_DIR": str(settings.data_dir)}
        done = subprocess.run([sys.executable, "-m", "fleetloop.cli", "serve", "miner"], env=env,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"fleetloop: service miner failed: cannot bind gRPC address 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr.split("fleetloop: service miner failed")[-1]
