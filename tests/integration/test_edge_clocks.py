"""Forged clocks at the edge (issue 11 §3): one vehicle's clock must not move anyone else's judgement.

FleetClock alone, then heartbeat-ingest with a vehicle ratcheting its clock 50 minutes at a time
(real broker, Redis, chDB), then the label-indexer with one heartbeat dated 2099 before the fleet."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer
from fleetloop import codec, topics
from fleetloop.bus import Bus, FleetClock, ensure_topics
from fleetloop.labels import LABEL_TABLE
from fleetloop.v1 import deadletter_pb2

from services.heartbeat_ingest.service import MIGRATIONS as INGEST_MIGRATIONS
from services.heartbeat_ingest.service import HeartbeatIngest
from services.label_indexer.service import MIGRATIONS as INDEXER_MIGRATIONS
from services.label_indexer.service import LabelIndexer
from tests.conftest import Running, truncate_owned_tables
from tests.support.fleetdata import T0_MS, drive, heartbeat

STEP_MS = 50 * 60_000      # each forged heartbeat 50 minutes past the forger's previous one
FORGED = 210               # 210 x 50 min: a week and a day, past the 7-day staleness bound
YEAR_2099_MS = 4_070_908_800_000


def test_a_forged_clock_cannot_ratchet_the_fleet_watermark() -> None:
    clock = FleetClock()
    for vehicle in ("veh-a", "veh-b", "veh-c"):
        clock.check(vehicle, T0_MS, 0)
        clock.observe(vehicle, T0_MS)
    clock.advance()
    refused = 0
    for k in range(1, FORGED + 1):
        try:
            clock.check("veh-forger", T0_MS + k * STEP_MS, 0)
            clock.observe("veh-forger", T0_MS + k * STEP_MS)
        except codec.Rejected as rejected:
            assert rejected.reason == "future_timestamp"
            refused += 1
        clock.advance()
    assert refused == FORGED - 1          # only the first step is within an hour of the fleet
    assert clock.watermark_ms == T0_MS    # the fleet's bulk, not its maximum
    clock.check("veh-a", T0_MS + 1000, 0)  # the real fleet goes on


def test_an_event_time_ahead_of_the_brokers_append_time_is_refused() -> None:
    clock = FleetClock()
    with pytest.raises(codec.Rejected, match="append time"):
        clock.check("veh-a", YEAR_2099_MS, T0_MS)
    clock.check("veh-a", T0_MS, T0_MS)


def test_a_parked_majority_does_not_hold_the_watermark_back() -> None:
    """Six of ten vehicles park at T0 and fall silent; the four still driving report for three hours.
    The silent ones leave the bulk after `silent_after_ms` of broker time, so the watermark follows
    the driving vehicles and none of their records is refused (before: W stayed at T0 and every
    record more than an hour past it was dead-lettered as future_timestamp)."""
    clock = FleetClock()
    vehicles = [f"veh-{i:02d}" for i in range(10)]
    for vehicle in vehicles:
        clock.check(vehicle, T0_MS, T0_MS)
        clock.observe(vehicle, T0_MS, T0_MS)
    clock.advance()
    for minute in range(1, 181):
        t = T0_MS + minute * 60_000
        for vehicle in vehicles[:4]:
            clock.check(vehicle, t, t)   # raises on a refusal
            clock.observe(vehicle, t, t)
        clock.advance()
    assert clock.watermark_ms == T0_MS + 180 * 60_000
    assert sorted(clock.newest) == vehicles[:4]
    clock.check("veh-09", T0_MS + 181 * 60_000, T0_MS + 181 * 60_000)  # a parked one comes back
    clock.check("veh-09", T0_MS, T0_MS + 181 * 60_000)                 # and uploads what it buffered


def test_the_clock_tracks_a_bounded_number_of_vehicles() -> None:
    clock = FleetClock(max_vehicles=1000)
    for i in range(5000):
        vehicle = f"veh-{i:05d}"
        clock.check(vehicle, T0_MS + i, T0_MS + i)
        clock.observe(vehicle, T0_MS + i, T0_MS + i)
        if i % 100 == 99:
            clock.advance()
    clock.advance()
    assert len(clock.newest) == 1000
    assert min(clock.newest) == "veh-04000"   # the most recently heard are kept


def test_a_forged_record_timestamp_moves_no_vehicle_out_of_the_bulk() -> None:
    clock = FleetClock()
    for vehicle in ("veh-a", "veh-b", "veh-c"):
        clock.check(vehicle, T0_MS, T0_MS)
        clock.observe(vehicle, T0_MS, T0_MS)
    clock.advance()
    clock.check("veh-forger", T0_MS + 1000, YEAR_2099_MS)  # CreateTime set by the producer, far past this host's clock
    clock.observe("veh-forger", T0_MS + 1000, YEAR_2099_MS)
    clock.advance()
    assert sorted(clock.newest) == ["veh-a", "veh-b", "veh-c", "veh-forger"]


async def publish(bootstrap: str, messages) -> None:
    await ensure_topics(bootstrap)
    bus = Bus(bootstrap)
    await bus.start()
    await bus.send_many([(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in messages])
    await bus.stop()


async def letters_of(bootstrap: str) -> list[deadletter_pb2.DeadLetter]:
    reader = AIOKafkaConsumer(topics.DEADLETTER, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                              enable_auto_commit=False, group_id="clock-dlq-reader")
    await reader.start()
    letters = []
    try:
        while batch := await reader.getmany(timeout_ms=2000):
            letters += [deadletter_pb2.DeadLetter.FromString(m.value) for ms in batch.values() for m in ms]
    finally:
        await reader.stop()
    return letters


@pytest.mark.integration
async def test_ingest_keeps_the_fleet_when_one_vehicle_ratchets_its_clock(settings, warehouse, redis_client):
    warehouse.migrate("heartbeat_ingest", INGEST_MIGRATIONS)
    truncate_owned_tables(warehouse, ("ods_", "dwd_", "dws_"))
    fleet = [f"veh-{i}" for i in range(4)]
    first = [m for v in fleet for m in drive(v, 120)]
    forged = [(topics.HEARTBEAT, heartbeat("veh-forger", T0_MS + k * STEP_MS)) for k in range(1, FORGED + 1)]
    later = [m for v in fleet for m in drive(v, 120, start_ms=T0_MS + 120_000)]
    await publish(settings.kafka_bootstrap_servers, first + forged + later)
    running = Running(HeartbeatIngest, settings, warehouse)
    async with running:
        await running.caught_up()
    real = warehouse.query_rows("SELECT count() FROM ods_heartbeat FINAL WHERE vehicle_id != 'veh-forger'")[0][0]
    assert real == len(fleet) * 240       # every real heartbeat landed
    letters = await letters_of(settings.kafka_bootstrap_servers)
    assert {letter.key for letter in letters} == {b"veh-forger"}
    assert {letter.reason for letter in letters} == {"future_timestamp"}
    assert len(letters) == FORGED - 1


@pytest.mark.integration
async def test_one_heartbeat_dated_2099_before_the_fleet_does_not_time_out_the_label_indexer(
        settings, warehouse):
    warehouse.migrate("label_indexer", INDEXER_MIGRATIONS)
    truncate_owned_tables(warehouse, (LABEL_TABLE, "dwd_label_index"))
    fleet = [m for v in ("veh-a", "veh-b") for m in drive(v, 60)]
    await publish(settings.kafka_bootstrap_servers, [(topics.HEARTBEAT, heartbeat("veh-a", YEAR_2099_MS))] + fleet)
    running = Running(LabelIndexer, settings, warehouse)
    async with running:
        await running.caught_up()
    letters = await letters_of(settings.kafka_bootstrap_servers)
    assert [(letter.reason, letter.source_offset) for letter in letters] == [("future_timestamp", 0)]
    labelled = warehouse.query_rows(f"SELECT count() FROM {LABEL_TABLE} FINAL")[0][0]
    assert labelled >= 2 * 50          # the fleet's seconds are labelled, not dead-lettered
