"""The monitors accept only what ingest accepts (issue 11 §6): a key-mismatch or wrong-payload
heartbeat, which ingest dead-letters, must not raise an OFFLINE alert for a vehicle that does not
exist (real broker, Redis, chDB, the faust monitors inside heartbeat-ingest)."""

from __future__ import annotations

import asyncio

import pytest
from fleetloop import topics
from fleetloop.bus import ensure_topics
from fleetloop.v1 import alerts_pb2

from services.heartbeat_ingest.service import MIGRATIONS, HeartbeatIngest
from tests.conftest import Running, truncate_owned_tables, wait_until
from tests.support.fleetdata import T0_MS, drive, heartbeat, pose

pytestmark = pytest.mark.integration
GHOSTS = {"veh-ghost", "veh-ghost2"}


async def test_refused_heartbeats_raise_no_alert_for_a_vehicle_that_does_not_exist(
        settings, warehouse, redis_client) -> None:
    warehouse.migrate("heartbeat_ingest", MIGRATIONS)
    truncate_owned_tables(warehouse, ("ods_", "dwd_", "dws_"))
    await ensure_topics(settings.kafka_bootstrap_servers)
    # Eight vehicles, so every partition's event-time clock moves on (the monitors keep one per partition).
    driven = sorted((m for v in "abcdefgh" for m in drive(f"veh-{v}", 300)), key=lambda m: m[1].event_time_ms)
    fleet = [(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in driven]
    # Ten seconds of each ghost, then silence while the fleet drives on: long enough for OFFLINE.
    ghosts = [m for s in range(10) for m in (
        (topics.HEARTBEAT, b"someone-else", heartbeat("veh-ghost", T0_MS + 1000 * s).SerializeToString()),
        (topics.HEARTBEAT, b"veh-ghost2", pose("veh-ghost2", T0_MS + 1000 * s).SerializeToString()))]
    # The control: a real vehicle that falls silent the same way must raise OFFLINE, so the ghosts'
    # silence is long enough and the absence of their alerts means something.
    quiet = [(topics.HEARTBEAT, b"veh-quiet", heartbeat("veh-quiet", T0_MS + 1000 * s).SerializeToString())
             for s in range(10)]
    running = Running(HeartbeatIngest, settings, warehouse)

    async def settled() -> bool:
        running.alive()
        return await service.consumer.lag() == 0 and await service.settled()

    async with running as service:
        await running.bus.send_many(fleet[:160] + ghosts + quiet + fleet[160:])
        await wait_until(settled, timeout_s=240, poll_s=0.5)
        await asyncio.sleep(2)  # let the last take() window flush
        await wait_until(settled, timeout_s=60, poll_s=0.5)
        alerts = await service.alerts.newest(1000)
        assert "veh-quiet" in {a.vehicle_id for a in alerts if a.kind == alerts_pb2.ALERT_KIND_OFFLINE}
        assert not {a.vehicle_id for a in alerts} & GHOSTS
        assert service.consumer.refused == len(ghosts)
        assert service.monitoring.skipped >= len(ghosts)
