"""case-assembler end to end against the real broker, Redis and chDB: a simulated incident becomes
exactly one case whose MCAP logs are complete and readable; replays make no second case; heavy tiers
wait for Wi-Fi; CaseService answers; corrupt manifests are dead-lettered."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import zipfile
from collections import Counter

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fleetloop import topics
from fleetloop.bus import Bus, ensure_topics
from fleetloop.commands.cases import app as cases_cli
from fleetloop.report import cases_report
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.triggers import detect_recording, load_config
from fleetloop.v1 import case_service_pb2, case_service_pb2_grpc, cases_pb2, common_pb2, deadletter_pb2, uploads_pb2
from fleetloop.vehicle import FleetVehicles, open_store, read_mcap
from typer.testing import CliRunner

from services.case_assembler.service import GROUP_ID, MIGRATIONS, CaseAssembler
from tests.conftest import assert_letters_point_at_their_records, truncate_owned_tables, wait_until

pytestmark = pytest.mark.integration

SIM = SimConfig(vehicles=3, duration_s=300, seed=3, incidents=[ScheduledIncident("hard_brake", 0, 60),
                                                                ScheduledIncident("contact", 1, 60)])


@pytest.fixture(scope="module")
def fleet():
    """The simulated seconds, its ground truth and the TriggerEvents the trigger library finds in them."""
    sim = FleetSimulator(SIM)
    seconds = list(sim.seconds())
    envelopes = [env for second in seconds for _, env in second.messages]
    return seconds, sim.ground_truth, detect_recording(envelopes, load_config())


@pytest.fixture
def clean(warehouse):
    warehouse.migrate("case_assembler", MIGRATIONS)
    truncate_owned_tables(warehouse, ("trigger_events", "cases", "case_logs"))


def cellular(env: common_pb2.Envelope) -> common_pb2.Envelope:
    """The heartbeat as if the vehicle were on cellular and not charging: the test owns the link."""
    out = common_pb2.Envelope()
    out.CopyFrom(env)
    out.heartbeat.connectivity, out.heartbeat.charging = common_pb2.CONNECTIVITY_CELLULAR, False
    return out


class Stack:
    """case-assembler (with gRPC) and the simulated vehicles, in this process."""

    def __init__(self, settings, warehouse):
        self.settings, self.warehouse = settings, warehouse
        self.bus = Bus(settings.kafka_bootstrap_servers)

    async def __aenter__(self):
        await ensure_topics(self.settings.kafka_bootstrap_servers)
        await self.bus.start()
        self.stop = asyncio.Event()
        self.vehicles = FleetVehicles(self.settings, self.bus)
        self.assembler = CaseAssembler(self.settings, self.warehouse, self.bus)
        self.tasks = [asyncio.create_task(self.assembler.run(self.stop)),
                      asyncio.create_task(self.vehicles.run(self.stop))]
        await wait_until(lambda: asyncio.sleep(0, self.assembler.grpc_port != 0))
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.assembler.grpc_port}")
        self.api = case_service_pb2_grpc.CaseServiceStub(self.channel)
        return self

    async def send(self, messages: list[tuple[str, str, bytes]]) -> None:
        await self.bus.send_many([(topic, key.encode(), value) for topic, key, value in messages])

    async def idle(self) -> None:
        async def quiet() -> bool:
            for task in self.tasks:
                if task.done():
                    task.result()
            lags = [await self.assembler.consumer.lag(), await self.vehicles.consumer.lag()]
            return lags == [0, 0]
        for _ in range(3):  # commands and manifests ping-pong: quiet three polls in a row
            await wait_until(quiet)
            await asyncio.sleep(0.3)

    async def send_and_consume(self, messages: list[tuple[str, str, bytes]]) -> None:
        """Send, then wait until the case-assembler has committed past every message sent (its group's
        committed offsets reach the end offsets the broker acknowledged) and has handled each of them."""
        handled = Counter(topic for topic, _, _ in messages)
        # Read before sending: the running assembler may handle some of them before the send returns.
        before = {topic: self.assembler.consumer.records_by_topic[topic] for topic in handled}
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            sent = [await producer.send(topic, value, key=key.encode()) for topic, key, value in messages]
            acked = await asyncio.gather(*sent)
        finally:
            await producer.stop()
        end = {}
        for meta in acked:
            tp = TopicPartition(meta.topic, meta.partition)
            end[tp] = max(end.get(tp, 0), meta.offset + 1)
        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=GROUP_ID,
                                 enable_auto_commit=False)
        await probe.start()

        async def committed_to_the_end() -> bool:
            for task in self.tasks:
                if task.done():
                    task.result()
            return all([(await probe.committed(tp) or 0) >= offset for tp, offset in end.items()])

        try:
            await wait_until(committed_to_the_end)
        finally:
            await probe.stop()
        # A batch is counted only after its commit returns, so count once idle (lag 0: every batch done),
        # when the commands the messages caused have been answered too.
        await self.idle()
        done = {topic: self.assembler.consumer.records_by_topic[topic] - before[topic] for topic in handled}
        assert done == dict(handled), "every message sent was handled, none skipped"

    def cases(self, vehicle_id: str) -> list[dict]:
        return self.warehouse.query_dicts(
            "SELECT case_id, window_start, window_end, triggers, tier_status, status, revision FROM cases FINAL "
            "WHERE vehicle_id = {v:String} ORDER BY window_start", {"v": vehicle_id})

    async def __aexit__(self, *exc):
        await self.channel.close()
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.bus.stop()


def overlapping(cases: list[dict], start_ms: int, end_ms: int) -> list[dict]:
    return [c for c in cases if c["window_start"].timestamp() * 1000 < end_ms
            and c["window_end"].timestamp() * 1000 > start_ms]


async def test_incident_to_one_case_with_complete_mcap_logs_and_the_case_api(settings, warehouse, redis_client,
                                                                           clean, fleet, tmp_path):
    seconds, truth, triggers = fleet
    brake = next(i for i in truth.incidents if i.kind == "hard_brake")
    contact = next(i for i in truth.incidents if i.kind == "contact")
    heartbeats = [(topics.HEARTBEAT, env.vehicle_id, cellular(env).SerializeToString())
                  for second in seconds for topic, env in second.messages if topic == topics.HEARTBEAT]
    trigger_msgs = [(topics.TRIGGERS, t.vehicle_id, t.SerializeToString()) for t in triggers]
    async with Stack(settings, warehouse) as stack:
        for _ in stack.vehicles.pass_through(seconds):  # the vehicles record what they drove
            pass
        await stack.send(heartbeats + trigger_msgs)
        await stack.idle()

        # Exactly one case covers the injected hard brake, and it holds the brake trigger.
        brake_cases = overlapping(stack.cases(brake.vehicle_id), brake.start_ms, brake.end_ms)
        assert len(brake_cases) == 1
        case = await stack.api.GetCase(case_service_pb2.GetCaseRequest(case_id=brake_cases[0]["case_id"]))
        assert "hard_brake" in [t.trigger for t in case.triggers]
        assert case.window_start_ms <= brake.start_ms - 9000 and case.window_end_ms >= brake.start_ms + 5000
        assert list(case.tiers) == ["microlog", "minilog"] and case.replay_queued
        assert case.status == cases_pb2.CASE_STATUS_COMPLETE

        # Its logs: one object per tier, matching the manifest, readable and complete for the window.
        store = open_store(settings.object_store_url)
        for upload in case.uploads:
            data = store.get(upload.uri)
            assert (len(data), hashlib.sha256(data).hexdigest()) == (upload.size_bytes, upload.sha256)
            metadata, messages = read_mcap(data)
            assert metadata["case_id"] == case.case_id and metadata["tier"] == upload.tier
            assert len(messages) == upload.message_count
            window_s = (case.window_end_ms - case.window_start_ms) / 1000
            for channel in ("/pose", "/heartbeat", "/perception"):
                times = [t for ch, t, _ in messages if ch == channel]
                assert len(times) == pytest.approx(window_s, abs=1), channel  # one per vehicle-second
                assert all(case.window_start_ms <= t < case.window_end_ms for t in times)
        logs = warehouse.query_dicts("SELECT tier, status FROM case_logs FINAL WHERE case_id = {c:String}",
                                     {"c": case.case_id})
        assert sorted((r["tier"], r["status"]) for r in logs) == [("microlog", "complete"), ("minilog", "complete")]
        (row,) = warehouse.query_rows("SELECT case_id FROM trigger_events FINAL WHERE vehicle_id = {v:String} "
                                      "AND trigger = 'hard_brake'", {"v": brake.vehicle_id})
        assert row[0] == case.case_id

        # The contact asks for raw too, which waits for Wi-Fi while the light tiers go over cellular.
        (contact_case,) = overlapping(stack.cases(contact.vehicle_id), contact.start_ms, contact.end_ms)
        assert contact_case["tier_status"] == {"microlog": "complete", "minilog": "complete", "raw": "pending"}
        waiting = await stack.api.ListCases(case_service_pb2.ListCasesRequest(tier_status="pending"))
        assert contact_case["case_id"] in [c.case_id for c in waiting.cases]
        wifi = cellular(next(env for second in seconds[::-1] for topic, env in second.messages
                             if topic == topics.HEARTBEAT and env.vehicle_id == contact.vehicle_id))
        wifi.heartbeat.connectivity = common_pb2.CONNECTIVITY_WIFI
        await stack.send([(topics.HEARTBEAT, wifi.vehicle_id, wifi.SerializeToString())])
        await stack.idle()
        raw_case = await stack.api.GetCase(case_service_pb2.GetCaseRequest(case_id=contact_case["case_id"]))
        raw = next(u for u in raw_case.uploads if u.tier == "raw")
        assert raw.status == cases_pb2.UPLOAD_STATUS_COMPLETE and not raw.metered
        assert raw.declared_bytes > 10**9  # ~4 GB per minute stands behind a 15+ s raw window

        online_s = sum(u.online_s for u in await stack.assembler.state.all_usage())
        report = cases_report(stack.warehouse, online_s)
        assert case.case_id in report and "x less" in report
        assert "of 0.25 online vehicle-hours" in report  # 3 vehicles x 300 heartbeat-seconds, none twice

        # A replay of the whole trigger stream makes no second case and changes no case.
        before = {c["case_id"]: c["revision"] for v in ("veh-0001", "veh-0002", "veh-0003") for c in stack.cases(v)}
        await stack.send_and_consume(trigger_msgs)
        after = {c["case_id"]: c["revision"] for v in ("veh-0001", "veh-0002", "veh-0003") for c in stack.cases(v)}
        assert after == before

        # List filters, adjudication (re-published with verdict and responsibility) and the bundle.
        listed = await stack.api.ListCases(case_service_pb2.ListCasesRequest(
            vehicle_id=brake.vehicle_id, trigger="hard_brake", start_ms=brake.start_ms, end_ms=brake.end_ms))
        assert [c.case_id for c in listed.cases] == [case.case_id]
        judged = await stack.api.AdjudicateCase(case_service_pb2.AdjudicateCaseRequest(
            case_id=case.case_id, verdict=cases_pb2.VERDICT_DANGEROUS,
            responsibility=cases_pb2.RESPONSIBILITY_THIRD_PARTY, reviewer="ana",
            note="rider fell avoiding our brake, no contact"))
        assert judged.revision > case.revision and judged.adjudication.verdict == cases_pb2.VERDICT_DANGEROUS
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stack.api.AdjudicateCase(case_service_pb2.AdjudicateCaseRequest(
                case_id="nope", verdict=cases_pb2.VERDICT_STUPID, reviewer="ana"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        bundle = await stack.api.ExportCaseBundle(case_service_pb2.ExportCaseBundleRequest(case_id=case.case_id,
                                                                                           inline=True))
        with zipfile.ZipFile(io.BytesIO(bundle.bundle)) as z:
            assert sorted(z.namelist()) == ["case.json", "logs/microlog.mcap", "logs/minilog.mcap"]
            assert read_mcap(z.read("logs/minilog.mcap"))[0]["case_id"] == case.case_id
        published = await read_topic(settings.kafka_bootstrap_servers, topics.CASES, cases_pb2.Case)
        latest = max((c for c in published if c.case_id == case.case_id), key=lambda c: c.revision)
        assert latest.revision == judged.revision
        assert latest.adjudication.responsibility == cases_pb2.RESPONSIBILITY_THIRD_PARTY
        assert "hard_brake" in [t.trigger for t in latest.triggers]

        # The same through `fleetloop cases` (run in a thread: the server lives on this event loop).
        env = {"FLEETLOOP_CASES_GRPC": f"127.0.0.1:{stack.assembler.grpc_port}"}
        listed = await asyncio.to_thread(CliRunner().invoke, cases_cli,
                                         ["list", "--vehicle", brake.vehicle_id, "--trigger", "hard_brake"], env=env)
        assert listed.exit_code == 0 and case.case_id in listed.output and "dangerous" in listed.output
        shown = await asyncio.to_thread(CliRunner().invoke, cases_cli, ["show", case.case_id], env=env)
        assert json.loads(shown.output)["adjudication"]["reviewer"] == "ana"
        out = tmp_path / "bundle.zip"
        exported = await asyncio.to_thread(CliRunner().invoke, cases_cli, ["export", case.case_id, "--out", str(out)],
                                           env=env)
        assert exported.exit_code == 0 and zipfile.is_zipfile(out)
        missing_cli = await asyncio.to_thread(CliRunner().invoke, cases_cli, ["show", "nope"], env=env)
        assert missing_cli.exit_code == 2


async def read_topic(bootstrap: str, topic: str, message_type, want: int = 1) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=f"reader-{topic}")
    await consumer.start()
    out, empty = [], 0
    try:
        while empty < 2 or len(out) < want:
            batch = await consumer.getmany(timeout_ms=1000)
            empty = 0 if batch else empty + 1
            out += [message_type.FromString(m.value) for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    return out


async def test_corrupt_manifests_land_in_the_dead_letter_topic(settings, warehouse, redis_client, clean, fleet):
    seconds, truth, triggers = fleet
    async with Stack(settings, warehouse) as stack:
        for _ in stack.vehicles.pass_through(seconds):
            pass
        await stack.send([(topics.HEARTBEAT, env.vehicle_id, cellular(env).SerializeToString())
                          for second in seconds for topic, env in second.messages if topic == topics.HEARTBEAT]
                         + [(topics.TRIGGERS, t.vehicle_id, t.SerializeToString()) for t in triggers])
        await stack.idle()
        (case,) = (await stack.api.ListCases(case_service_pb2.ListCasesRequest(
            vehicle_id="veh-0001", trigger="hard_brake"))).cases
        micro = case.uploads[0]
        forged = uploads_pb2.UploadManifest(
            schema_version=1, vehicle_id=case.vehicle_id, message_id="forged", request_id=micro.request_id,
            case_id=case.case_id, tier="microlog", window_start_ms=case.window_start_ms,
            window_end_ms=case.window_end_ms, state=uploads_pb2.UPLOAD_STATE_COMPLETE, uri=micro.uri,
            size_bytes=micro.size_bytes, sha256="f" * 64)
        unknown = uploads_pb2.UploadManifest()
        unknown.CopyFrom(forged)
        unknown.case_id = "no-such-case"
        await stack.send([(topics.UPLOADS, "veh-0001", b"\xff\x00garbage"),
                          (topics.UPLOADS, "veh-0001", forged.SerializeToString()),
                          (topics.UPLOADS, "veh-0001", unknown.SerializeToString())])
        await stack.idle()
        letters = await read_topic(settings.kafka_bootstrap_servers, topics.DEADLETTER, deadletter_pb2.DeadLetter,
                                   want=3)
        assert sorted(letter.reason for letter in letters) == ["checksum_mismatch", "decode_error", "unknown_case"]
        assert all(letter.source_topic == topics.UPLOADS and letter.service == "case-assembler" for letter in letters)
        assert {letter.original for letter in letters} == {b"\xff\x00garbage", forged.SerializeToString(),
                                                           unknown.SerializeToString()}
        await assert_letters_point_at_their_records(settings.kafka_bootstrap_servers, letters)
        assert stack.assembler.consumer.refused == 3  # the dead-letter counter
        # The forged manifest did not overwrite the good, already complete log.
        again = await stack.api.GetCase(case_service_pb2.GetCaseRequest(case_id=case.case_id))
        assert again.uploads[0].sha256 == micro.sha256 and again.status == cases_pb2.CASE_STATUS_COMPLETE
