"""A Redis that stops answering (SIGSTOP, then SIGCONT) stalls heartbeat-ingest — its gRPC health
reads NOT_SERVING meanwhile — which then resumes, SERVING again, and loses nothing; against the
real broker, a private redis-server and chDB."""

from __future__ import annotations

import os
import signal

import pytest
from fleetloop.embedded import start_redis
from fleetloop.state import connect

from services.heartbeat_ingest.service import HeartbeatIngest
from tests.conftest import Running, truncate_owned_tables, wait_until
from tests.integration.test_heartbeat_ingest import publish
from tests.integration.test_supervisor import health_status
from tests.support.fleetdata import T0_MS, drive

pytestmark = pytest.mark.integration


@pytest.fixture
def clean(warehouse):
    from services.heartbeat_ingest.service import MIGRATIONS
    warehouse.migrate("heartbeat_ingest", MIGRATIONS)
    truncate_owned_tables(warehouse, ("ods_", "dwd_", "dws_"))


async def test_redis_sigstop_stalls_ingest_and_it_resumes_without_loss(settings, warehouse, clean, tmp_path):
    (tmp_path / "private-redis").mkdir()
    proc, url = start_redis(tmp_path / "private-redis")
    settings = settings.model_copy(update={"redis_url": url})
    try:
        await publish(settings.kafka_bootstrap_servers, drive("veh-s", 60, speed=10.0))
        running = Running(HeartbeatIngest, settings, warehouse, timeout_s=120.0)
        async with running as service:
            await running.caught_up()
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                await publish(settings.kafka_bootstrap_servers, drive("veh-s", 60, start_ms=T0_MS + 60_000))

                async def stalled() -> bool:
                    running.alive()  # a Redis timeout must not end the service
                    return service.consumer.stalled is not None
                await wait_until(stalled, timeout_s=60.0)
                assert "redis" in service.consumer.stalled.lower() or "timeout" in service.consumer.stalled.lower()

                async def not_serving() -> bool:
                    return await health_status(service.grpc_port) == "NOT_SERVING"
                await wait_until(not_serving, timeout_s=30.0)  # health shows the stall
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            await running.caught_up()
            assert service.consumer.stalled is None

            async def serving() -> bool:
                return await health_status(service.grpc_port) == "SERVING"
            await wait_until(serving, timeout_s=30.0)
        heartbeats = warehouse.query_rows("SELECT count(), uniqExact(ts) FROM ods_heartbeat FINAL")[0]
        assert tuple(heartbeats) == (120, 120)  # every second once: none lost while stalled, none doubled
        client = connect(url)
        assert int((await client.hgetall("fl:ingest:vehicle:veh-s"))["last_seen_ms"]) == T0_MS + 119_000
        await client.aclose()
    finally:
        proc.kill()
        proc.wait(timeout=10)
