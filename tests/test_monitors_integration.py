"""The fleet monitors inside heartbeat-ingest (faust, real broker, Redis) against the simulator's
injected dropouts, stalls, park blockages and error bursts."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fleetloop.bus import Bus, ensure_topics
from fleetloop.cli import app as cli
from fleetloop.feed import publish_seconds
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.v1 import alerts_pb2, alerts_pb2_grpc
from typer.testing import CliRunner

from services.heartbeat_ingest.service import MIGRATIONS, HeartbeatIngest
from tests.conftest import truncate_owned_tables, wait_until

pytestmark = pytest.mark.integration

OFFLINE_THRESHOLD_MS = 10_000
HEARTBEAT_PERIOD_MS = 1_000


@pytest.fixture(scope="module")
def simulated():
    incidents = [
        ScheduledIncident("offline", vehicle_index=0, at_s=300, duration_s=90),
        ScheduledIncident("offline", vehicle_index=4, at_s=900, duration_s=45),
        ScheduledIncident("stop_not_go", vehicle_index=2, at_s=400, duration_s=420),
        ScheduledIncident("park_blockage", vehicle_index=6, at_s=1000, duration_s=400),
        ScheduledIncident("error_burst", vehicle_index=8, at_s=700),
    ]
    sim = FleetSimulator(SimConfig(vehicles=16, duration_s=1800, seed=11, incidents_per_vehicle_hour=0.0,
                                   incidents=incidents))
    seconds = list(sim.seconds())
    return seconds, sim.ground_truth


async def test_every_incident_alerted_once_within_threshold_and_recovered(settings, warehouse, redis_client,
                                                                          simulated):
    warehouse.migrate("heartbeat_ingest", MIGRATIONS)
    truncate_owned_tables(warehouse, ("ods_", "dwd_", "dws_"))
    seconds, truth = simulated
    await ensure_topics(settings.kafka_bootstrap_servers)
    bus = Bus(settings.kafka_bootstrap_servers)
    await bus.start()
    await publish_seconds(bus, seconds)
    service = HeartbeatIngest(settings, warehouse, bus)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))

    async def settled() -> bool:
        if task.done():
            task.result()
        return await service.consumer.lag() == 0 and await service.settled()

    await wait_until(settled, timeout_s=240, poll_s=0.5)
    await asyncio.sleep(2)  # let the last take() window flush
    await wait_until(settled, timeout_s=60, poll_s=0.5)
    alerts = await service.alerts.newest(1000)

    kinds = {i.kind for i in truth.incidents}
    assert {"offline", "stop_not_go", "park_blockage", "error_burst"} <= kinds, kinds
    by_kind: dict[int, list] = {}
    for alert in alerts:
        by_kind.setdefault(alert.kind, []).append(alert)

    offline = [i for i in truth.incidents if i.kind == "offline"]
    offline_alerts = by_kind.get(alerts_pb2.ALERT_KIND_OFFLINE, []) + by_kind.get(alerts_pb2.ALERT_KIND_RECOVERED, [])
    assert len(offline_alerts) == len(offline), [a.summary for a in offline_alerts]
    for incident in offline:
        mine = [a for a in offline_alerts if a.vehicle_id == incident.vehicle_id]
        assert len(mine) == 1
        alert = mine[0]
        assert alert.incident_start_ms <= incident.start_ms
        assert alert.opened_ms - incident.start_ms <= OFFLINE_THRESHOLD_MS + HEARTBEAT_PERIOD_MS
        assert alert.state == alerts_pb2.ALERT_STATE_RESOLVED, "the vehicle came back: RECOVERED resolves it"

    stalls = [i for i in truth.incidents if i.kind == "stop_not_go"]
    stop_alerts = by_kind.get(alerts_pb2.ALERT_KIND_STOP_NOT_GO, [])
    assert len(stop_alerts) == len(stalls), "one escalating alert per stop episode, no storm"
    for incident in stalls:
        (alert,) = [a for a in stop_alerts if a.vehicle_id == incident.vehicle_id
                    # the monitor counts from the first heartbeat under 0.3 m/s, a moment before standstill
                    and incident.start_ms - 5_000 <= a.incident_start_ms <= incident.end_ms]
        assert alert.state == alerts_pb2.ALERT_STATE_RESOLVED
        assert alert.opened_ms - incident.start_ms <= 60_000 + HEARTBEAT_PERIOD_MS

    blockages = [i for i in truth.incidents if i.kind == "park_blockage"]
    park_alerts = by_kind.get(alerts_pb2.ALERT_KIND_PARK_STALL, [])
    assert sorted(a.park for a in park_alerts) == sorted(i.park for i in blockages)

    bursts = [i for i in truth.incidents if i.kind == "error_burst"]
    burst_alerts = by_kind.get(alerts_pb2.ALERT_KIND_ERROR_BURST, [])
    assert sorted(a.park for a in burst_alerts) == sorted(i.park for i in bursts)

    # Lifecycle over gRPC: acknowledge, then resolve; a second acknowledge is refused.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = alerts_pb2_grpc.AlertServiceStub(channel)
        listed = await stub.ListAlerts(alerts_pb2.ListAlertsRequest(kinds=[alerts_pb2.ALERT_KIND_PARK_STALL]))
        assert [a.alert_id for a in listed.alerts] == [a.alert_id for a in park_alerts]
        target = park_alerts[0].alert_id
        if park_alerts[0].state == alerts_pb2.ALERT_STATE_OPEN:
            acked = await stub.AcknowledgeAlert(alerts_pb2.AcknowledgeAlertRequest(alert_id=target, actor="ops-1"))
            assert acked.state == alerts_pb2.ALERT_STATE_ACKNOWLEDGED and acked.acknowledged_by == "ops-1"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AcknowledgeAlert(alerts_pb2.AcknowledgeAlertRequest(alert_id="nope", actor="ops-1"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The same over `fleetloop alerts` (blocking gRPC client, so off the event loop that serves it).
    env = {"FLEETLOOP_FLEET_GRPC": f"127.0.0.1:{service.grpc_port}"}
    listed = await asyncio.to_thread(CliRunner().invoke, cli, ["alerts", "list", "--kind", "park_stall"], env=env)
    assert listed.exit_code == 0 and "park_stall" in listed.output and park_alerts[0].park in listed.output
    refused = await asyncio.to_thread(CliRunner().invoke, cli, ["alerts", "ack", "nope", "--actor", "ops-1"], env=env)
    assert refused.exit_code == 2 and "NOT_FOUND" in refused.output
    stop.set()
    await task
    await bus.stop()
