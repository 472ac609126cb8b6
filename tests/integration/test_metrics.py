"""MPS / MPD_all / MPD_resp / MPI against hand-made triggers and mileage in chDB: rates and intervals
by dimension, adjudication moving events in and out of MPD, third-party responsibility, replays,
and MetricsService + `fleetloop metrics` over gRPC. The sink's logic is fed records directly; the last
test runs heartbeat-ingest on the real broker, so mileage, triggers and cases arrive over Kafka."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from fleetloop import codec, topics
from fleetloop.bus import Bus, Record, ensure_topics
from fleetloop.commands.metrics import app as metrics_cli
from fleetloop.grpc_server import Servicer, start_server
from fleetloop.report import metrics_table
from fleetloop.v1 import cases_pb2, common_pb2, metrics_pb2, metrics_pb2_grpc, triggers_pb2
from typer.testing import CliRunner

from services.heartbeat_ingest import rows
from services.heartbeat_ingest.metrics import MetricsSink, compute_metrics
from services.heartbeat_ingest.metrics_api import MetricsApi
from services.heartbeat_ingest.service import HeartbeatIngest
from tests.conftest import Running, truncate_owned_tables, wait_until
from tests.support.fleetdata import T0_MS, drive

pytestmark = pytest.mark.integration

MPS, MPD, MPI, INFO = (triggers_pb2.TRIGGER_CATEGORY_MPS, triggers_pb2.TRIGGER_CATEGORY_MPD,
                       triggers_pb2.TRIGGER_CATEGORY_MPI, triggers_pb2.TRIGGER_CATEGORY_INFO)


def land_mileage(warehouse, messages) -> None:
    """What heartbeat-ingest writes for these messages (ODS + DWD), without Kafka or Redis."""
    beats = [env for topic, env in messages if topic == topics.HEARTBEAT]
    poses = [env for topic, env in messages if topic == topics.POSE]
    warehouse.insert_arrow("dwd_vehicle_second", rows.heartbeat_tables(beats)[1])
    arrays, counts, _ = codec.pose_screen([env.pose for env in poses])
    warehouse.insert_arrow("dwd_vehicle_second", rows.pose_tables(poses, arrays, counts)[1])


def event(trigger_id: str, vehicle: str, trigger: str, category: int, at_s: int,
          weight: float = 1.0) -> triggers_pb2.TriggerEvent:
    return triggers_pb2.TriggerEvent(trigger_id=trigger_id, vehicle_id=vehicle, trigger=trigger, category=category,
                                     weight=weight, onset_ms=T0_MS + at_s * 1000 + 300,
                                     end_ms=T0_MS + at_s * 1000 + 1500, config_version="test")


EVENTS = [
    event("t1", "veh-a", "hard_brake", MPS, 100),
    event("t2", "veh-a", "near_miss", MPD, 200, weight=2.0),
    event("t3", "veh-a", "takeover", MPI, 300),
    event("t4", "veh-b", "phantom_stop", MPS, 50),
    event("t5", "veh-b", "contact", MPD, 60, weight=3.0),
    event("t6", "veh-b", "error_code", INFO, 70),
]


def case(case_id: str, revision: int, triggers: list[triggers_pb2.TriggerEvent], verdict: int = 0,
         responsibility: int = 0, updated_s: int = 0) -> cases_pb2.Case:
    return cases_pb2.Case(case_id=case_id, vehicle_id=triggers[0].vehicle_id, triggers=triggers, revision=revision,
                          updated_ms=T0_MS + updated_s * 1000,
                          adjudication=cases_pb2.Adjudication(verdict=verdict, responsibility=responsibility))


def records(topic: str, messages) -> list[Record]:
    return [Record(topic, 0, i, m.vehicle_id.encode(), m.SerializeToString(), 0) for i, m in enumerate(messages)]


def counts(warehouse, group_by: str = "", **kw) -> dict[str, dict[str, float]]:
    return {r["group"]: {"km": round(r["km"], 6), **{m: r[m]["events"] for m in ("mps", "mpd_all", "mpd_resp", "mpi")}}
            for r in compute_metrics(warehouse, group_by=group_by, **kw)}


@pytest.fixture
def sink(warehouse) -> MetricsSink:
    warehouse.migrate("heartbeat_ingest", Path("services/heartbeat_ingest/migrations"))
    truncate_owned_tables(warehouse, ("ods_", "dwd_", "dws_", "trigger_events_metric", "case_verdicts"))
    land_mileage(warehouse, drive("veh-a", 1000, speed=10.0, park="park-a", city="city-a")
                 + drive("veh-b", 500, speed=10.0, park="park-b", city="city-b", software_version="v2.0",
                         road_type=common_pb2.ROAD_TYPE_PARK))
    return MetricsSink(warehouse)


async def test_rates_and_intervals_by_dimension(sink, warehouse) -> None:
    assert await sink.handle(records(topics.TRIGGERS, EVENTS)) == []
    fleet = compute_metrics(warehouse)
    assert len(fleet) == 1
    row = fleet[0]
    assert row["km"] == pytest.approx(15.0)
    assert row["mps"] == {"events": 2, "per_10k_km": pytest.approx(2 / 15 * 10_000), "km_per_event": 7.5}
    assert row["mpd_all"]["events"] == row["mpd_resp"]["events"] == 2
    assert row["mpi"] == {"events": 1, "per_10k_km": pytest.approx(1 / 15 * 10_000), "km_per_event": 15.0}
    assert counts(warehouse, "park") == {
        "park-a": {"km": 10.0, "mps": 1, "mpd_all": 1, "mpd_resp": 1, "mpi": 1},
        "park-b": {"km": 5.0, "mps": 1, "mpd_all": 1, "mpd_resp": 1, "mpi": 0}}
    assert counts(warehouse, "road_type")["park"] == {"km": 5.0, "mps": 1, "mpd_all": 1, "mpd_resp": 1, "mpi": 0}
    assert counts(warehouse, "software_version").keys() == {"v1.0", "v2.0"}
    assert counts(warehouse, "vehicle")["veh-a"]["mpi"] == 1
    assert counts(warehouse, "city").keys() == {"city-a", "city-b"}
    assert counts(warehouse, "day") == {"2026-06-01": {"km": 15.0, "mps": 2, "mpd_all": 2, "mpd_resp": 2, "mpi": 1}}
    assert counts(warehouse, "week").keys() == {"2026-06-01"}
    assert counts(warehouse, weighted=True)["fleet"]["mpd_all"] == 5.0
    # A period that holds veh-b's first 100 s only: its two events over 1 km + veh-a's 1 km.
    window = counts(warehouse, start_ms=T0_MS, end_ms=T0_MS + 100_000)["fleet"]
    assert window == {"km": 2.0, "mps": 1, "mpd_all": 1, "mpd_resp": 1, "mpi": 0}


async def test_adjudication_moves_events_in_and_out_of_mpd(sink, warehouse) -> None:
    await sink.handle(records(topics.TRIGGERS, EVENTS))
    t1, t5 = EVENTS[0], EVENTS[4]
    # A reviewer: the hard brake made a cyclist fall (dangerous), mainly the cyclist's doing.
    await sink.handle(records(topics.CASES, [case("c1", 3, [t1], cases_pb2.VERDICT_DANGEROUS,
                                                  cases_pb2.RESPONSIBILITY_THIRD_PARTY, updated_s=900)]))
    assert counts(warehouse)["fleet"] == {"km": 15.0, "mps": 1, "mpd_all": 3, "mpd_resp": 2, "mpi": 1}
    # The contact was a false trigger; the error code (info) was a stupid event.
    await sink.handle(records(topics.CASES, [
        case("c5", 1, [t5], cases_pb2.VERDICT_NOT_AN_ISSUE, updated_s=900),
        case("c6", 1, [EVENTS[5]], cases_pb2.VERDICT_STUPID, updated_s=900)]))
    assert counts(warehouse)["fleet"] == {"km": 15.0, "mps": 2, "mpd_all": 2, "mpd_resp": 1, "mpi": 1}
    # Re-judged later as stupid (a higher revision), then an old revision is replayed: the newest stands.
    await sink.handle(records(topics.CASES, [case("c1", 4, [t1], cases_pb2.VERDICT_STUPID, updated_s=950)]))
    await sink.handle(records(topics.CASES, [case("c1", 2, [t1], cases_pb2.VERDICT_DANGEROUS, updated_s=800)]))
    assert counts(warehouse)["fleet"] == {"km": 15.0, "mps": 3, "mpd_all": 1, "mpd_resp": 1, "mpi": 1}
    # An unadjudicated MPD case counts in MPD_resp; responsibility alone (no verdict) leaves MPD_all.
    await sink.handle(records(topics.CASES, [case("c2", 1, [EVENTS[1]], 0, cases_pb2.RESPONSIBILITY_THIRD_PARTY)]))
    assert counts(warehouse)["fleet"] == {"km": 15.0, "mps": 3, "mpd_all": 1, "mpd_resp": 0, "mpi": 1}
    # A takeover judged not an issue leaves MPI.
    await sink.handle(records(topics.CASES, [case("c3", 1, [EVENTS[2]], cases_pb2.VERDICT_NOT_AN_ISSUE)]))
    assert counts(warehouse)["fleet"]["mpi"] == 0


async def test_replayed_triggers_and_cases_count_once_and_garbage_is_refused(sink, warehouse) -> None:
    batch = records(topics.TRIGGERS, EVENTS)
    cases = records(topics.CASES, [case("c1", 1, [EVENTS[0]], cases_pb2.VERDICT_DANGEROUS)])
    for _ in range(3):
        assert await sink.handle(batch + cases) == []
    assert counts(warehouse)["fleet"] == {"km": 15.0, "mps": 1, "mpd_all": 3, "mpd_resp": 3, "mpi": 1}
    # Triggers that arrive only inside a case count too (same id: once).
    late = event("t7", "veh-a", "weaving", MPS, 400)
    await sink.handle(records(topics.CASES, [case("c7", 1, [late])]))
    assert counts(warehouse)["fleet"]["mps"] == 2
    bad = [Record(topics.TRIGGERS, 0, 0, b"x", b"\xff\xff\xff", 0),
           Record(topics.TRIGGERS, 0, 1, b"x", triggers_pb2.TriggerEvent(vehicle_id="x").SerializeToString(), 0),
           Record(topics.CASES, 0, 2, b"x", cases_pb2.Case(vehicle_id="x").SerializeToString(), 0)]
    assert sorted(r.reason for r in await sink.handle(bad)) == ["decode_error", "missing_field", "missing_field"]
    api = MetricsApi(warehouse)
    report = "\n".join([metrics_table(await api.metrics(metrics_pb2.GetMetricsRequest(group_by=g)), g)
                        for g in ("", "park", "road_type")])  # what `make demo` prints
    assert "MPD_ALL" in report and "park-a" in report and "urban" in report


async def test_metrics_service_and_cli(sink, warehouse) -> None:
    await sink.handle(records(topics.TRIGGERS, EVENTS))
    server, port = await start_server([Servicer(metrics_pb2_grpc.add_MetricsServiceServicer_to_server,
                                                MetricsApi(warehouse), "fleetloop.v1.MetricsService")],
                                      "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = metrics_pb2_grpc.MetricsServiceStub(channel)
            response = await stub.GetMetrics(metrics_pb2.GetMetricsRequest(group_by="park"))
            by_park = {r.group: r for r in response.rows}
            assert by_park["park-a"].km == pytest.approx(10.0)
            assert by_park["park-a"].mpd_all.events == 1
            assert by_park["park-a"].mpd_all.per_10k_km == pytest.approx(1000.0)
            assert by_park["park-a"].mpd_all.km_per_event == pytest.approx(10.0)
            assert by_park["park-b"].mpi.events == 0 and by_park["park-b"].mpi.km_per_event == 0
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetMetrics(metrics_pb2.GetMetricsRequest(group_by="park; DROP TABLE x"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        result = await asyncio.to_thread(CliRunner().invoke, metrics_cli, ["--group-by", "park"],
                                         env={"FLEETLOOP_FLEET_GRPC": f"127.0.0.1:{port}"})
        assert result.exit_code == 0, result.output
        assert "park-a" in result.output and "MPD_ALL" in result.output
    finally:
        await server.stop(grace=0)


async def test_heartbeat_ingest_computes_metrics_from_the_topics(settings, warehouse, redis_client) -> None:
    """The wiring: heartbeat and pose for mileage, triggers and a case over Kafka into heartbeat-ingest,
    MetricsService of the running service answering."""
    warehouse.migrate("heartbeat_ingest", Path("services/heartbeat_ingest/migrations"))
    truncate_owned_tables(warehouse, ("ods_", "dwd_", "dws_", "trigger_events_metric", "case_verdicts"))
    mileage = (drive("veh-a", 1000, speed=10.0, park="park-a", city="city-a")
               + drive("veh-b", 500, speed=10.0, park="park-b", city="city-b", software_version="v2.0",
                       road_type=common_pb2.ROAD_TYPE_PARK))
    judged = case("c1", 3, [EVENTS[0]], cases_pb2.VERDICT_DANGEROUS, cases_pb2.RESPONSIBILITY_THIRD_PARTY, 900)
    sent = ([(topic, env.vehicle_id.encode(), env.SerializeToString()) for topic, env in mileage]
            + [(topics.TRIGGERS, e.vehicle_id.encode(), e.SerializeToString()) for e in EVENTS * 2]  # a replay
            + [(topics.CASES, judged.vehicle_id.encode(), judged.SerializeToString())])
    await ensure_topics(settings.kafka_bootstrap_servers)
    bus = Bus(settings.kafka_bootstrap_servers)
    await bus.start()
    try:
        await bus.send_many(sent)
    finally:
        await bus.stop()
    running = Running(HeartbeatIngest, settings, warehouse)

    async def consumed() -> bool:
        running.alive()
        handled = service.consumer.records_by_topic + service.metrics_consumer.records_by_topic
        return (handled[topics.HEARTBEAT] + handled[topics.POSE] == len(mileage)
                and handled[topics.TRIGGERS] == 2 * len(EVENTS) and handled[topics.CASES] == 1)

    async with running as service:
        await wait_until(consumed, timeout_s=120)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = metrics_pb2_grpc.MetricsServiceStub(channel)
            (fleet,) = (await stub.GetMetrics(metrics_pb2.GetMetricsRequest())).rows
            by_park = {r.group: r for r in (await stub.GetMetrics(metrics_pb2.GetMetricsRequest(group_by="park"))).rows}
    # As in test_adjudication_moves_events_in_and_out_of_mpd after c1: the dangerous third-party hard
    # brake moves from MPS to MPD_all only; the replayed triggers count once.
    assert fleet.km == pytest.approx(15.0)
    assert (fleet.mps.events, fleet.mpd_all.events, fleet.mpd_resp.events, fleet.mpi.events) == (1, 3, 2, 1)
    assert by_park["park-a"].km == pytest.approx(10.0) and by_park["park-b"].km == pytest.approx(5.0)
    assert (by_park["park-b"].mps.events, by_park["park-b"].mpd_all.events) == (1, 1)
    assert service.metrics_consumer.refused == 0
