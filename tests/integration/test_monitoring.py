"""The fleet monitors inside heartbeat-ingest (faust, real broker, Redis) against the simulator's
injected dropouts, stalls, park blockages and error bursts."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fleetloop.bus import ensure_topics
from fleetloop.cli import app as cli
from fleetloop.feed import publish_seconds
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.v1 import alerts_pb2, alerts_pb2_grpc
from typer.testing import CliRunner

from services.heartbeat_ingest.service import MIGRATIONS, HeartbeatIngest
from tests.conftest import Running, truncate_owned_tables, wait_until

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


def midpoint_ms(incident) -> int:
    return (incident.start_ms + incident.end_ms) // 2


async def test_every_incident_alerted_once_within_threshold_and_recovered(settings, warehouse, redis_client,
                                                                          simulated):
    """The run is published in three parts: halfway through the first stall (acknowledged and resolved
    over gRPC while it is OPEN), halfway through the park blockage (acknowledged and resolved with
    `fleetloop alerts` while it is OPEN), then the rest, after which the persons' resolutions stand."""
    warehouse.migrate("heartbeat_ingest", MIGRATIONS)
    truncate_owned_tables(warehouse, ("ods_", "dwd_", "dws_"))
    seconds, truth = simulated
    first_stall = min((i for i in truth.incidents if i.kind == "stop_not_go"), key=lambda i: i.start_ms)
    (blockage,) = [i for i in truth.incidents if i.kind == "park_blockage"]
    cuts = [midpoint_ms(first_stall), midpoint_ms(blockage), seconds[-1].t_ms + 1]
    assert cuts == sorted(cuts) and first_stall.end_ms < blockage.start_ms
    await ensure_topics(settings.kafka_bootstrap_servers)
    running = Running(HeartbeatIngest, settings, warehouse)

    async def settled() -> bool:
        running.alive()
        return await service.consumer.lag() == 0 and await service.settled()

    async def publish_until(cut_ms: int, published_ms: int) -> None:
        await publish_seconds(running.bus, [s for s in seconds if published_ms <= s.t_ms < cut_ms])
        await wait_until(settled, timeout_s=240, poll_s=0.5)
        await asyncio.sleep(2)  # let the last take() window flush
        await wait_until(settled, timeout_s=60, poll_s=0.5)

    async with running as service:
        await publish_until(cuts[0], seconds[0].t_ms)  # the gRPC port is known once the service runs
        env = {"FLEETLOOP_FLEET_GRPC": f"127.0.0.1:{service.grpc_port}"}

        def fleetloop(*args: str):
            # blocking gRPC client, so off the event loop that serves it
            return asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = alerts_pb2_grpc.AlertServiceStub(channel)

            async def open_alerts(kind: int) -> list:
                listed = await stub.ListAlerts(alerts_pb2.ListAlertsRequest(kinds=[kind],
                                                                            states=[alerts_pb2.ALERT_STATE_OPEN]))
                return list(listed.alerts)

            # Part 1: the stall is OPEN; acknowledge and resolve it over gRPC.
            stalled = [a for a in await open_alerts(alerts_pb2.ALERT_KIND_STOP_NOT_GO)
                       if a.vehicle_id == first_stall.vehicle_id]
            assert len(stalled) == 1, "the first stall is under way at the cut, so its alert is OPEN"
            stall_id = stalled[0].alert_id
            acked = await stub.AcknowledgeAlert(alerts_pb2.AcknowledgeAlertRequest(alert_id=stall_id, actor="ops-1"))
            assert acked.state == alerts_pb2.ALERT_STATE_ACKNOWLEDGED and acked.acknowledged_by == "ops-1"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.AcknowledgeAlert(alerts_pb2.AcknowledgeAlertRequest(alert_id=stall_id, actor="ops-1"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            resolved = await stub.ResolveAlert(alerts_pb2.ResolveAlertRequest(alert_id=stall_id, actor="ops-1",
                                                                              note="towed"))
            assert resolved.state == alerts_pb2.ALERT_STATE_RESOLVED and resolved.resolved_by == "ops-1"
            assert resolved.acknowledged_by == "ops-1" and resolved.note == "towed"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.AcknowledgeAlert(alerts_pb2.AcknowledgeAlertRequest(alert_id="nope", actor="ops-1"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            # Part 2: the park stall is OPEN; acknowledge and resolve it with `fleetloop alerts`.
            await publish_until(cuts[1], cuts[0])
            (park_open,) = await open_alerts(alerts_pb2.ALERT_KIND_PARK_STALL)
            assert park_open.park == blockage.park
            listed = await fleetloop("alerts", "list", "--kind", "park_stall", "--state", "open")
            assert listed.exit_code == 0 and "park_stall" in listed.output and blockage.park in listed.output
            acked = await fleetloop("alerts", "ack", park_open.alert_id, "--actor", "ops-2")
            assert acked.exit_code == 0 and f"{park_open.alert_id}: acknowledged by ops-2" in acked.output
            refused = await fleetloop("alerts", "ack", park_open.alert_id, "--actor", "ops-2")
            assert refused.exit_code == 2 and "FAILED_PRECONDITION" in refused.output
            closed = await fleetloop("alerts", "resolve", park_open.alert_id, "--actor", "ops-2")
            assert closed.exit_code == 0 and f"{park_open.alert_id}: resolved by ops-2" in closed.output
            refused = await fleetloop("alerts", "ack", "nope", "--actor", "ops-1")
            assert refused.exit_code == 2 and "NOT_FOUND" in refused.output
            assert not await open_alerts(alerts_pb2.ALERT_KIND_PARK_STALL)

            # Part 3: the rest of the run.
            await publish_until(cuts[2], cuts[1])
            alerts = await service.alerts.newest(1000)
            listed = await stub.ListAlerts(alerts_pb2.ListAlertsRequest(kinds=[alerts_pb2.ALERT_KIND_PARK_STALL]))
            assert [a.alert_id for a in listed.alerts] == [park_open.alert_id]

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
        if alert.alert_id == stall_id:  # the monitor kept escalating, but the person's resolution stands
            assert alert.resolved_by == "ops-1" and alert.acknowledged_by == "ops-1" and alert.level > stalled[0].level
        else:
            assert alert.resolved_by != "ops-1"

    blockages = [i for i in truth.incidents if i.kind == "park_blockage"]
    park_alerts = by_kind.get(alerts_pb2.ALERT_KIND_PARK_STALL, [])
    assert sorted(a.park for a in park_alerts) == sorted(i.park for i in blockages)
    assert [(a.state, a.acknowledged_by, a.resolved_by) for a in park_alerts] == [
        (alerts_pb2.ALERT_STATE_RESOLVED, "ops-2", "ops-2")]

    bursts = [i for i in truth.incidents if i.kind == "error_burst"]
    burst_alerts = by_kind.get(alerts_pb2.ALERT_KIND_ERROR_BURST, [])
    assert sorted(a.park for a in burst_alerts) == sorted(i.park for i in bursts)
