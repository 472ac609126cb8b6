"""label-indexer: the pure join, and the service against the real broker and chDB."""

from __future__ import annotations

import base64
import random

import numpy as np
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from fleetloop import topics
from fleetloop.bus import Bus, ensure_topics
from fleetloop.labels import LABEL_TABLE, load_taxonomy
from fleetloop.query import parse
from fleetloop.query import truth as truth_of
from fleetloop.query.index import HOUR_MS, HourIndex, evaluate, ids_of
from fleetloop.sim import FleetSimulator, SimConfig
from fleetloop.v1 import deadletter_pb2

from services.label_indexer.join import SecondJoiner, TooLate
from services.label_indexer.service import CONFIG as LABEL_CONFIG
from services.label_indexer.service import INDEX_BITMAP_TABLE, INDEX_HOUR_TABLE, MIGRATIONS, LabelIndexer
from tests.conftest import (
    Running,
    assert_letters_point_at_their_records,
    letter_bytes,
    sent_bytes,
    truncate_owned_tables,
)
from tests.oracles.labelers import label_second
from tests.support.fleetdata import T0_MS, heartbeat, pose

TX = load_taxonomy()
POS = ("fleet.pose.v1", 0)


# -- the join (pure) ------------------------------------------------------------------------------
def test_a_complete_second_is_due_at_once_and_a_partial_one_after_the_lateness():
    j = SecondJoiner(lateness_ms=5000, retain_ms=60_000, align_ms=30_000)
    for kind in ("heartbeat", "pose", "perception"):
        j.add(kind, "veh-a", T0_MS + 10, object(), POS, 1)
    j.add("heartbeat", "veh-b", T0_MS + 20, object(), POS, 2)
    assert [(e.vehicle_id, e.complete) for e in j.take_due()] == [("veh-a", True)]
    assert j.held_offsets() == {POS: 2}          # veh-b's second is pending: commit stops before it
    for kind in ("heartbeat", "pose", "perception"):
        j.add(kind, "veh-c", T0_MS + 5999, object(), POS, 7)
    assert [e.vehicle_id for e in j.take_due()] == ["veh-c"]      # watermark 5.999 s: veh-b still waits
    for kind in ("heartbeat", "pose", "perception"):
        j.add(kind, "veh-c", T0_MS + 6000, object(), POS, 8)
    due = j.take_due()
    assert [(e.vehicle_id, e.second_ms, sorted(e.parts)) for e in due] == [
        ("veh-b", T0_MS, ["heartbeat"]), ("veh-c", T0_MS + 6000, ["heartbeat", "perception", "pose"])]
    assert j.held_offsets() == {}


def test_a_late_part_relabels_a_retained_second_and_a_forgotten_one_is_too_late():
    j = SecondJoiner(lateness_ms=1000, retain_ms=10_000, align_ms=30_000)
    j.add("heartbeat", "veh-a", T0_MS, "hb", POS, 1)
    for kind in ("heartbeat", "pose", "perception"):
        j.add(kind, "veh-z", T0_MS + 3000, object(), POS, 2)
    assert [sorted(e.parts) for e in j.take_due()] == [["heartbeat"], ["heartbeat", "perception", "pose"]]
    j.add("pose", "veh-a", T0_MS + 100, "pose", POS, 3)
    relabel = j.take_due()
    assert [(e.vehicle_id, sorted(e.parts)) for e in relabel] == [("veh-a", ["heartbeat", "pose"])]
    assert j.held_offsets() == {}                 # re-labels never hold commits back
    for kind in ("heartbeat", "pose", "perception"):
        j.add(kind, "veh-z", T0_MS + 20_000, object(), POS, 4)
    j.take_due()
    with pytest.raises(TooLate):
        j.add("perception", "veh-a", T0_MS + 200, "pc", POS, 5)


def test_a_lagging_partition_holds_the_watermark_and_those_ahead_are_paused():
    j = SecondJoiner(lateness_ms=5000, retain_ms=60_000, align_ms=30_000)
    slow = ("fleet.perception.v1", 2)
    j.add("heartbeat", "veh-a", T0_MS, object(), POS, 1)
    j.add("perception", "veh-b", T0_MS + 1000, object(), slow, 1)
    j.add("heartbeat", "veh-a", T0_MS + 20_000, object(), POS, 2)
    j.lagging = {slow}                     # the slow partition still has unread records
    assert j.watermark_ms == T0_MS + 1000 and j.take_due() == []
    j.lagging = set()                      # caught up: idle partitions do not hold the watermark
    assert j.watermark_ms == T0_MS + 20_000
    assert [e.second_ms for e in j.take_due()] == [T0_MS, T0_MS + 1000]
    assert j.ahead() == set()
    j.lagging = {slow}
    j.add("heartbeat", "veh-a", T0_MS + 100_000, object(), POS, 3)
    assert j.watermark_ms == T0_MS + 1000 and j.ahead() == {POS}


# -- the service ----------------------------------------------------------------------------------
@pytest.fixture
def clean(warehouse):
    warehouse.migrate("label_indexer", MIGRATIONS)
    truncate_owned_tables(warehouse, (LABEL_TABLE, "dwd_label_index"))


async def publish(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> None:
    await ensure_topics(bootstrap)
    bus = Bus(bootstrap)
    await bus.start()
    await bus.send_many(messages)
    await bus.stop()


def simulate(vehicles: int, duration_s: int, seed: int, start_ms: int):
    sim = FleetSimulator(SimConfig(vehicles=vehicles, duration_s=duration_s, seed=seed, start_ms=start_ms,
                                   incidents_per_vehicle_hour=6.0))
    return sim, [m for second in sim.seconds() for m in second.messages]


def expected_rows(messages) -> dict[tuple[str, int], object]:
    """label_second over every complete vehicle-second of the simulator's messages."""
    parts: dict[tuple[str, int], dict[str, object]] = {}
    for topic, env in messages:
        kind = {topics.HEARTBEAT: "heartbeat", topics.POSE: "pose", topics.PERCEPTION: "perception"}.get(topic)
        if kind:
            parts.setdefault((env.vehicle_id, env.event_time_ms // 1000 * 1000), {})[kind] = getattr(env, kind)
    return {key: label_second(key[0], key[1], p.get("heartbeat"), p.get("pose"), p.get("perception"), TX)
            for key, p in parts.items()}


def stored_rows(warehouse) -> list[tuple]:
    return warehouse.query_rows(f"SELECT vehicle_id, toUnixTimestamp64Milli(ts), t0, t1, k0, k1, v_ego_speed_kph "
                                f"FROM {LABEL_TABLE} FINAL ORDER BY vehicle_id, ts")


def as_stored(row) -> tuple:
    mask = 2**64 - 1
    return (row.vehicle_id, row.ts_ms, row.tags & mask, row.tags >> 64, row.known & mask, row.known >> 64,
            row.values.get("ego.speed_kph", float("nan")))


def same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[:6] == y[:6] and (x[6] == y[6] or (np.isnan(x[6]) and np.isnan(y[6])))
                                    for x, y in zip(a, b, strict=True))


@pytest.mark.integration
async def test_simulated_fleet_labels_equal_label_second_and_hours_are_indexed(settings, warehouse, clean):
    # 1 h 10 min from 10:55 UTC: hour 11:00 closes inside the run and is sealed.
    start = T0_MS + 4 * HOUR_MS + 55 * 60_000
    sim, messages = simulate(vehicles=6, duration_s=4200, seed=11, start_ms=start)
    rng = random.Random(3)
    # Out of order across topics and vehicles by up to 3 s (within the lateness).
    jittered = sorted(messages, key=lambda m: m[1].event_time_ms + rng.uniform(0, 3000))
    raw = [(t, e.vehicle_id.encode(), e.SerializeToString()) for t, e in jittered]
    await publish(settings.kafka_bootstrap_servers, raw)
    running = Running(LabelIndexer, settings, warehouse, timeout_s=180)
    async with running as service:
        await running.caught_up()
    expected = {k: r for k, r in expected_rows(messages).items()}
    truth = sorted(as_stored(r) for r in expected.values())
    stored = stored_rows(warehouse)
    stored_keys = {(s[0], s[1]) for s in stored}
    # Only a second still waiting for a missing part may be absent: it is incomplete and within the
    # lateness (plus its own second) of the newest event, so the watermark has not passed it yet.
    lateness_ms = int(yaml.safe_load(LABEL_CONFIG.read_text())["lateness_s"] * 1000)
    newest_ms = max(env.event_time_ms for _, env in messages)
    parts: dict[tuple[str, int], set[str]] = {}
    for topic, env in messages:
        parts.setdefault((env.vehicle_id, env.event_time_ms // 1000 * 1000), set()).add(topic)
    missing = sorted(set(expected) - stored_keys)
    assert all(len(parts[k]) < 3 and k[1] + 1000 + lateness_ms > newest_ms for k in missing), missing[:10]
    assert stored_keys <= set(expected)
    assert same(stored, [t for t in truth if (t[0], t[1]) in stored_keys])
    assert warehouse.query_rows(f"SELECT count() - uniqExact(vehicle_id, ts) FROM {LABEL_TABLE} FINAL")[0][0] == 0
    assert service.rows_written >= len(stored)

    hour = T0_MS + 5 * HOUR_MS
    (version, sealed, vehicles, rows), = warehouse.query_rows(
        f"SELECT version, sealed, vehicles, rows FROM {INDEX_HOUR_TABLE} FINAL WHERE hour = {{h:DateTime}}",
        {"h": hour // 1000})
    assert sealed == 1 and rows == sum(1 for k in expected if hour <= k[1] < hour + HOUR_MS)
    blobs = dict(warehouse.query_rows(f"SELECT key, base64Encode(bitmap) FROM {INDEX_BITMAP_TABLE} FINAL "
                                      "WHERE hour = {h:DateTime} AND version = {v:UInt64}",
                                      {"h": hour // 1000, "v": version}))
    index = HourIndex.deserialize(hour, vehicles, {k: base64.b64decode(v) for k, v in blobs.items()})
    assert index.rows == rows
    for text in ("weather.rain | weather.cloudy", "junction.signalized & !ego.stopped", "light.day & agent.car"):
        expr = parse(text, TX)
        want = sorted((v, s) for (v, s), r in expected.items() if hour <= s < hour + HOUR_MS and truth_of(expr, r))
        nos, ts = index.seconds_of(ids_of(evaluate(expr, index)))
        assert sorted(zip([index.vehicles[n] for n in nos], ts.tolist(), strict=True)) == want, text
    assert sim.ground_truth.vehicles


@pytest.mark.integration
async def test_bad_input_is_dead_lettered_and_good_seconds_flow(settings, warehouse, clean):
    good = []
    for s in range(30):
        t = T0_MS + 1000 * s
        good += [(topics.HEARTBEAT, b"veh-ok", heartbeat("veh-ok", t).SerializeToString()),
                 (topics.POSE, b"veh-ok", pose("veh-ok", t, x0=10.0 * s).SerializeToString())]
    nan = heartbeat("veh-bad", T0_MS, speed=float("nan"))
    short = pose("veh-bad", T0_MS)
    short.pose.speed_mps = b"\x00\x01"
    bad = [(topics.HEARTBEAT, b"veh-bad", b"\x00garbage"), (topics.HEARTBEAT, b"veh-bad", nan.SerializeToString()),
           (topics.POSE, b"veh-bad", short.SerializeToString()),
           (topics.PERCEPTION, b"veh-bad", heartbeat("veh-bad", T0_MS).SerializeToString())]
    await publish(settings.kafka_bootstrap_servers, good[:20] + bad + good[20:])
    running = Running(LabelIndexer, settings, warehouse, timeout_s=180)
    async with running as service:
        await running.caught_up()
    # 30 seconds of heartbeat + pose, no perception: all but the last 6 s (1 s + 5 s lateness
    # behind the newest event) are labelled; those 6 are pending and their offsets uncommitted.
    consumer = AIOKafkaConsumer(topics.DEADLETTER, bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", group_id="dlq-reader", enable_auto_commit=False)
    await consumer.start()
    try:
        letters = []
        while len(letters) < 4:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            letters += [deadletter_pb2.DeadLetter.FromString(m.value) for ms in batch.values() for m in ms]
    finally:
        await consumer.stop()
    assert sorted(letter.reason for letter in letters) == ["bad_shape", "decode_error", "non_finite", "wrong_payload"]
    assert all(letter.service == "label-indexer" for letter in letters)
    assert {letter_bytes(letter) for letter in letters} == {sent_bytes(*b) for b in bad}
    # heartbeat-ingest keeps the bytes of what every consumer refuses alike; the plausibility refusal is kept here
    assert {letter.reason: letter.original_kept_by for letter in letters} == {
        "bad_shape": "heartbeat-ingest", "decode_error": "heartbeat-ingest", "wrong_payload": "heartbeat-ingest",
        "non_finite": ""}
    await assert_letters_point_at_their_records(settings.kafka_bootstrap_servers, letters)
    assert service.consumer.refused == 4  # the dead-letter counter
    assert warehouse.query_rows(f"SELECT count() FROM {LABEL_TABLE} FINAL")[0][0] == 24
    # More heartbeats move the watermark; the pending seconds replay and are labelled.
    later = [(topics.HEARTBEAT, b"veh-ok", heartbeat("veh-ok", T0_MS + 1000 * s).SerializeToString())
             for s in range(30, 60)]
    await publish(settings.kafka_bootstrap_servers, later)
    running = Running(LabelIndexer, settings, warehouse, timeout_s=180)
    async with running:
        await running.caught_up()
    no_perception = TX.tag("data.no_perception").bit - 64
    rows = warehouse.query_rows(f"SELECT vehicle_id, count(), countIf(bitTest(t1, {no_perception})) "
                                f"FROM {LABEL_TABLE} FINAL GROUP BY vehicle_id")
    assert rows == [("veh-ok", 54, 54)]    # seconds 0..53: newest 59 s, minus 1 s, minus 5 s lateness
    with_pose = warehouse.query_rows(f"SELECT count() FROM {LABEL_TABLE} FINAL "
                                     f"WHERE NOT bitTest(t1, {TX.tag('data.no_pose').bit - 64})")[0][0]
    assert with_pose == 30
