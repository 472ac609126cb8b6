"""heartbeat-ingest against the real broker, Redis and chDB."""

from __future__ import annotations

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from fleetloop import topics
from fleetloop.bus import Bus, ensure_topics
from fleetloop.v1 import common_pb2, deadletter_pb2, fleet_service_pb2, fleet_service_pb2_grpc

from services.heartbeat_ingest.service import HeartbeatIngest
from tests.conftest import Running, assert_letters_point_at_their_records, truncate_owned_tables
from tests.support.fleetdata import T0_MS, drive, heartbeat, pose, pose_columns

pytestmark = pytest.mark.integration


async def publish(bootstrap: str, messages) -> None:
    await ensure_topics(bootstrap)
    bus = Bus(bootstrap)
    await bus.start()
    await bus.send_many([(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in messages])
    await bus.stop()


async def publish_raw(bootstrap: str, raw: list[tuple[str, bytes, bytes]]) -> None:
    bus = Bus(bootstrap)
    await bus.start()
    await bus.send_many(raw)
    await bus.stop()


@pytest.fixture
def clean(warehouse):
    warehouse.migrate("heartbeat_ingest", __import__("services.heartbeat_ingest.service",
                                                     fromlist=["MIGRATIONS"]).MIGRATIONS)
    truncate_owned_tables(warehouse, ("ods_", "dwd_", "dws_"))


async def test_mileage_autonomy_and_live_state_end_to_end(settings, warehouse, redis_client, clean):
    messages = (drive("veh-a", 600, speed=10.0, park="park-a")
                + drive("veh-b", 300, speed=5.0, park="park-b", road_type=common_pb2.ROAD_TYPE_PARK)
                + drive("veh-b", 300, start_ms=T0_MS + 300_000, speed=5.0, park="park-b",
                        road_type=common_pb2.ROAD_TYPE_PARK, mode=common_pb2.DRIVING_MODE_MANUAL))
    await publish(settings.kafka_bootstrap_servers, messages)
    running = Running(HeartbeatIngest, settings, warehouse)
    async with running as service:
        await running.caught_up()
        await service.rollup()
        rows = {r["park"]: r for r in warehouse.query_dicts(
            "SELECT park, km, autonomy_rate, avg_speed_kph, operating_h FROM ads_fleet_park_day")}
        assert rows["park-a"]["km"] == pytest.approx(6.0)
        assert rows["park-a"]["autonomy_rate"] == pytest.approx(1.0)
        assert rows["park-a"]["avg_speed_kph"] == pytest.approx(36.0)
        assert rows["park-b"]["km"] == pytest.approx(3.0)
        assert rows["park-b"]["autonomy_rate"] == pytest.approx(0.5)
        assert rows["park-b"]["operating_h"] == pytest.approx(600 / 3600)

        state = await redis_client.hgetall("fl:ingest:vehicle:veh-b")
        assert int(state["last_seen_ms"]) == T0_MS + 599_000
        assert int(state["mode"]) == common_pb2.DRIVING_MODE_MANUAL
        assert await redis_client.ttl("fl:ingest:vehicle:veh-b") > 0

        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = fleet_service_pb2_grpc.FleetServiceStub(channel)
            summary = await stub.FleetSummary(fleet_service_pb2.FleetSummaryRequest(group_by="road_type"))
            km = {r.group: r.km for r in summary.rows}
            assert km == {"urban": pytest.approx(6.0), "park": pytest.approx(3.0)}
            vehicle = await stub.GetVehicle(fleet_service_pb2.GetVehicleRequest(vehicle_id="veh-a"))
            assert vehicle.park == "park-a" and vehicle.status == fleet_service_pb2.VEHICLE_STATUS_ONLINE
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.FleetSummary(fleet_service_pb2.FleetSummaryRequest(group_by="park; DROP TABLE x"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetVehicle(fleet_service_pb2.GetVehicleRequest(vehicle_id="veh-zzz"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_messages_go_to_dead_letter_and_the_rest_flows(settings, warehouse, redis_client, clean):
    await ensure_topics(settings.kafka_bootstrap_servers)
    good = drive("veh-ok", 20)
    nan_speed = heartbeat("veh-bad", T0_MS, speed=float("nan"))
    old_schema = heartbeat("veh-bad", T0_MS + 1000)
    old_schema.schema_version = 99
    jump_x = pose_columns(T0_MS + 2000)["x_m"]
    jump_x[5:] += 1000.0  # 1 km in 100 ms
    jump = pose("veh-bad", T0_MS + 2000, x_m=jump_x)
    future = heartbeat("veh-bad", T0_MS + 10 * 86_400_000)
    stale = heartbeat("veh-bad", T0_MS - 8 * 86_400_000)  # a week and a day behind: older than any buffer
    wrong_topic = pose("veh-bad", T0_MS + 3000)
    bad = [
        (topics.HEARTBEAT, b"veh-bad", b"\xff\xfe not protobuf", "decode_error"),
        (topics.HEARTBEAT, b"veh-bad", nan_speed.SerializeToString(), "non_finite"),
        (topics.HEARTBEAT, b"veh-bad", old_schema.SerializeToString(), "unknown_schema_version"),
        (topics.POSE, b"veh-bad", jump.SerializeToString(), "position_jump"),
        (topics.HEARTBEAT, b"someone-else", heartbeat("veh-bad", T0_MS + 4000).SerializeToString(), "key_mismatch"),
        (topics.HEARTBEAT, b"veh-bad", wrong_topic.SerializeToString(), "wrong_payload"),
    ]
    pending = list(bad)
    raw = []
    for i, (topic, env) in enumerate(good):
        raw.append((topic, env.vehicle_id.encode(), env.SerializeToString()))
        if i % 5 == 0 and pending:  # bad messages interleaved with good ones
            topic_b, key_b, value_b, _ = pending.pop(0)
            raw.append((topic_b, key_b, value_b))
    await publish_raw(settings.kafka_bootstrap_servers, raw)
    # the far-future and the stale heartbeat from the right vehicle come after the watermark is established
    await publish_raw(settings.kafka_bootstrap_servers,
                      [(topics.HEARTBEAT, b"veh-bad", future.SerializeToString()),
                       (topics.HEARTBEAT, b"veh-bad", stale.SerializeToString())])
    running = Running(HeartbeatIngest, settings, warehouse)
    async with running as service:
        await running.caught_up()
    sent_bad = {(topic, key, value) for topic, key, value, _ in bad} | {
        (topics.HEARTBEAT, b"veh-bad", future.SerializeToString()),
        (topics.HEARTBEAT, b"veh-bad", stale.SerializeToString())}
    assert warehouse.query_rows("SELECT count() FROM ods_heartbeat FINAL")[0][0] == 20
    assert warehouse.query_rows("SELECT count() FROM ods_pose FINAL")[0][0] == 200

    consumer = AIOKafkaConsumer(topics.DEADLETTER, bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id="dlq-reader")
    await consumer.start()
    letters = []
    try:
        while len(letters) < 8:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for msgs in batch.values():
                letters += [deadletter_pb2.DeadLetter.FromString(m.value) for m in msgs]
    finally:
        await consumer.stop()
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == sorted(["decode_error", "non_finite", "unknown_schema_version", "position_jump",
                              "key_mismatch", "wrong_payload", "future_timestamp", "stale_timestamp"])
    assert service.consumer.refused == len(letters) == 8  # the dead-letter counter
    # Every letter carries its record's original bytes and key, and points at that very record.
    assert {(letter.source_topic, letter.key, letter.original) for letter in letters} == sent_bad
    await assert_letters_point_at_their_records(settings.kafka_bootstrap_servers, letters)
    by_reason = {letter.reason: letter for letter in letters}
    assert by_reason["decode_error"].original == b"\xff\xfe not protobuf"
    assert by_reason["decode_error"].source_topic == topics.HEARTBEAT
    assert by_reason["position_jump"].detail.endswith("m in 100 ms at sample 5")
    assert by_reason["stale_timestamp"].detail.endswith("s behind watermark")
    assert all(letter.service == "heartbeat-ingest" for letter in letters)
