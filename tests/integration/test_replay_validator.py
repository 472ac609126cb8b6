"""replay-validator against the real broker, Redis-free, and chDB: a case with its minilog in the object
store and a replay request become one solution row, one pair object and one message on
loop.solutions.v1, which `fleetloop replay show` prints; duplicated requests make one row; bad
requests are dead-lettered with their reason while the good ones land; ReplayService refuses bad calls
with the field named. Searches use the `quick` budget and no map, so each batch takes about a second."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import grpc
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from fleetloop import tables, topics
from fleetloop.bus import Bus, ensure_topics
from fleetloop.commands.replay import app as replay_cli
from fleetloop.replay.pair import pair_from_bytes
from fleetloop.replay.requests import replay_request
from fleetloop.report import solutions_report
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.v1 import cases_pb2, deadletter_pb2, replay_service_pb2, replay_service_pb2_grpc, uploads_pb2
from fleetloop.vehicle import RingBuffer, Uploader, open_store
from fleetloop.vehicle.params import load_vehicle_params
from typer.testing import CliRunner

from services.case_assembler import rows as case_rows
from services.case_assembler.service import MIGRATIONS as CASE_MIGRATIONS
from services.replay_validator.plans import CONFIG as CONFIG_PATH
from services.replay_validator.plans import MapConfig, load_validator_config
from services.replay_validator.service import MIGRATIONS, ReplayValidator
from tests.conftest import Running, truncate_owned_tables, wait_until

pytestmark = pytest.mark.integration

CONFIG = load_validator_config().model_copy(update={"default_search_config": "quick", "map": MapConfig(source="none")})
Validator = functools.partial(ReplayValidator, config=CONFIG)


@pytest.fixture(scope="module")
def fleet():
    """Two simulated hard brakes on two vehicles, each vehicle's messages in its ring buffer as the
    vehicle runtime keeps them; `cut(store, case_id, i)` uploads brake i's minilog for `case_id`."""
    sim = FleetSimulator(SimConfig(vehicles=2, duration_s=150, seed=3, incidents=[
        ScheduledIncident("hard_brake", 0, 60), ScheduledIncident("hard_brake", 1, 80)]))
    params = load_vehicle_params()
    buffers: dict[str, RingBuffer] = {}
    for second in sim.seconds():
        for topic, env in second.messages:
            buffers.setdefault(env.vehicle_id, RingBuffer(params.ring_capacity_s)).append(topic, env)
    incidents = sorted(sim.ground_truth.incidents, key=lambda i: i.start_ms)

    def cut(store, case_id: str, i: int) -> uploads_pb2.UploadManifest:
        incident = incidents[i]
        request = uploads_pb2.UploadRequest(request_id=f"req-{case_id}", case_id=case_id, tier="minilog",
                                            window_start_ms=incident.start_ms - 10_000,
                                            window_end_ms=incident.start_ms + 5_000, attempt=1)
        *_, complete = Uploader(store, params).answer(incident.vehicle_id, buffers[incident.vehicle_id], request)
        assert complete.state == uploads_pb2.UPLOAD_STATE_COMPLETE
        return complete

    return cut, incidents


@pytest.fixture
def clean(warehouse):
    warehouse.migrate("case_assembler", CASE_MIGRATIONS)
    warehouse.migrate("replay_validator", MIGRATIONS)
    truncate_owned_tables(warehouse, ("cases", "case_logs", "replay_solutions"))


def seed_case(warehouse, case_id: str, vehicle_id: str, manifest: uploads_pb2.UploadManifest | None,
              status: int = cases_pb2.UPLOAD_STATUS_COMPLETE) -> None:
    """A replay-marked case and its minilog's case_logs row, as the case-assembler writes them."""
    case = cases_pb2.Case(case_id=case_id, vehicle_id=vehicle_id, replay_queued=True, revision=1, tiers=["minilog"])
    if manifest is not None:
        case.uploads.add(tier="minilog", status=status, uri=manifest.uri, size_bytes=manifest.size_bytes,
                         sha256=manifest.sha256, updated_ms=manifest.event_time_ms)
    warehouse.insert_rows(tables.CASES.name, [case_rows.case_row(case)], case_rows.CASE_COLUMNS)
    warehouse.insert_rows(tables.CASE_LOGS.name, case_rows.log_rows(case), case_rows.LOG_COLUMNS)


def object_path(uri: str) -> Path:
    """The file behind a file:// object (the test plays the store losing or changing it)."""
    return Path(unquote(urlparse(uri).path))


def request_bytes(case_id: str, **kw) -> tuple[str, bytes, bytes]:
    message = replay_request(case_id, requested_by="test", requested_ms=1_700_000_000_000, **kw)
    return topics.REPLAY_REQUESTS, case_id.encode(), message.SerializeToString()


async def send(bootstrap: str, messages) -> None:
    await ensure_topics(bootstrap)
    bus = Bus(bootstrap)
    await bus.start()
    try:
        await bus.send_many(messages)
    finally:
        await bus.stop()


class TopicReader:
    """Reads a topic from its beginning, without a consumer group (no rebalance to wait for); `poll`
    returns what arrived since the last call."""

    def __init__(self, bootstrap: str, topic: str, message_type) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.topic, self.message_type = topic, message_type

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        self.consumer.assign([TopicPartition(self.topic, p) for p in range(topics.DEFAULT_PARTITIONS)])
        await self.consumer.seek_to_beginning()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()

    async def poll(self) -> list:
        batch = await self.consumer.getmany(timeout_ms=200)
        out = []
        for m in (m for records in batch.values() for m in records):
            message = self.message_type()
            message.ParseFromString(m.value)
            out.append(message)
        return out


async def read_topic(bootstrap: str, topic: str, message_type, settle_s: float = 1.0) -> list:
    """Everything on `topic` so far (reads until it has been quiet for `settle_s`)."""
    async with TopicReader(bootstrap, topic, message_type) as reader:
        out, quiet = [], 0.0
        while quiet < settle_s:
            got = await reader.poll()
            quiet = 0.0 if got else quiet + 0.2
            out += got
    return out


def solution_count(warehouse) -> int:
    return warehouse.query_rows(f"SELECT count() FROM {tables.SOLUTIONS} FINAL")[0][0]


async def test_case_request_becomes_one_row_one_pair_one_message_and_replay_show_prints_it(
        settings, warehouse, clean, fleet):
    cut, incidents = fleet
    store = open_store(settings.object_store_url)
    seed_case(warehouse, "case-a", incidents[0].vehicle_id, cut(store, "case-a", 0))
    seed_case(warehouse, "case-b", incidents[1].vehicle_id, cut(store, "case-b", 1))
    # case-a asked three times (the case-assembler republishes on every revision), case-b once
    await send(settings.kafka_bootstrap_servers, [request_bytes("case-a"), request_bytes("case-b"),
                                                  request_bytes("case-a"), request_bytes("case-a")])
    running = Running(Validator, settings, warehouse)
    async with running as validator:
        await wait_until(lambda: _rows_at_least(warehouse, 2))
        await running.caught_up()
        assert solution_count(warehouse) == 2
        rows = warehouse.query_dicts(f"SELECT * FROM {tables.SOLUTIONS} FINAL ORDER BY case_id")
        assert [r["case_id"] for r in rows] == ["case-a", "case-b"]
        assert [r["vehicle_id"] for r in rows] == [incidents[0].vehicle_id, incidents[1].vehicle_id]
        assert {r["policy"] for r in rows} == {CONFIG.default_policy}
        assert all(r["verdict"] in ("improved", "fragile", "baseline_stands") for r in rows)
        assert all({"collision", "ttc", "comfort"} <= set(r["baseline_terms"]) for r in rows)

        published = await read_topic(settings.kafka_bootstrap_servers, topics.SOLUTIONS, replay_service_pb2.Solution)
        by_id = {s.solution_id: s for s in published}
        assert sorted(by_id) == sorted(r["solution_id"] for r in rows)  # duplicates absorbed: one id per case
        for row in rows:
            solution = by_id[row["solution_id"]]
            data = store.get(solution.pair_uri)
            assert len(data) == solution.pair_size_bytes == row["pair_size_bytes"] > 0
            pair = pair_from_bytes(data)
            assert pair.problem.case_id == solution.case_id and pair.provenance.policy_version == solution.policy
            assert pair.provenance.search_config_version == solution.search_config_version

        # asked again once solved: nothing is searched, no second message
        solved_before = validator.counters["solved"]
        await send(settings.kafka_bootstrap_servers, [request_bytes("case-b")])
        await wait_until(lambda: _counter_at_least(validator, "already_solved", 1))
        await running.caught_up()
        assert validator.counters["solved"] == solved_before and solution_count(warehouse) == 2
        again = await read_topic(settings.kafka_bootstrap_servers, topics.SOLUTIONS, replay_service_pb2.Solution)
        assert len(again) == len(published)

        # `fleetloop replay show` and `list` through ReplayService (in a thread: the server is on this loop)
        env = {"FLEETLOOP_REPLAY_GRPC": f"127.0.0.1:{validator.grpc_port}"}
        sid = rows[0]["solution_id"]
        shown = await asyncio.to_thread(CliRunner().invoke, replay_cli, ["show", sid], env=env)
        assert shown.exit_code == 0, shown.output
        assert f"solution {sid}: case case-a" in shown.output and "cost term" in shown.output
        assert "ttc" in shown.output and f"verdict {rows[0]['verdict']}" in shown.output and "pair: " in shown.output
        listed = await asyncio.to_thread(CliRunner().invoke, replay_cli, ["list", "--case", "case-b"], env=env)
        assert listed.exit_code == 0 and rows[1]["solution_id"] in listed.output and sid not in listed.output
        missing = await asyncio.to_thread(CliRunner().invoke, replay_cli, ["show", "nope"], env=env)
        assert missing.exit_code == 2 and "NOT_FOUND" in missing.output

        # what `make demo` prints: one line per replayed case, then the verdict counts and the pairs' bytes
        report = solutions_report(warehouse).splitlines()
        assert [line.split()[0] for line in report[2:4]] == ["case-a", "case-b"]
        assert all(f"{r['pair_size_bytes']:,}" in line for r, line in zip(rows, report[2:4], strict=True))
        total_kb = sum(r["pair_size_bytes"] for r in rows) / 1e3
        assert report[-1].startswith("2 cases replayed: ") and f"pairs {total_kb:,.1f} kB in all" in report[-1]


async def _rows_at_least(warehouse, n: int) -> bool:
    return solution_count(warehouse) >= n


async def _counter_at_least(service, name: str, n: int) -> bool:
    return service.counters[name] >= n


async def test_bad_requests_are_dead_lettered_with_their_reason_and_the_good_one_lands(
        settings, warehouse, clean, fleet):
    cut, incidents = fleet
    store = open_store(settings.object_store_url)
    vehicle = incidents[0].vehicle_id
    seed_case(warehouse, "good", vehicle, cut(store, "good", 0))
    seed_case(warehouse, "pending", vehicle, cut(store, "pending", 0), status=cases_pb2.UPLOAD_STATUS_REQUESTED)
    gone = cut(store, "gone", 0)
    seed_case(warehouse, "gone", vehicle, gone)
    object_path(gone.uri).unlink()  # the store lost the object after the upload
    # corrupt bytes whose digest the case_logs row carries (a vehicle that uploaded garbage)
    junk = b"MCAP? no." * 40
    junk_uri = store.put("junk/minilog.mcap", junk)
    seed_case(warehouse, "junk", vehicle, uploads_pb2.UploadManifest(
        uri=junk_uri, size_bytes=len(junk), sha256=hashlib.sha256(junk).hexdigest(), event_time_ms=1))
    # a minilog changed after its upload: the digest does not match
    tampered = cut(store, "tampered", 0)
    seed_case(warehouse, "tampered", vehicle, tampered)
    object_path(tampered.uri).write_bytes(b"x" * 100)

    await send(settings.kafka_bootstrap_servers, [
        request_bytes("nobody"), request_bytes("pending"), request_bytes("gone"), request_bytes("junk"),
        request_bytes("tampered"), request_bytes("good", policy="bc@7"), request_bytes("good", search_config="nope"),
        (topics.REPLAY_REQUESTS, b"garbage", b"\xff\x00 not a request"), request_bytes("good")])
    running = Running(Validator, settings, warehouse)
    async with running:
        await wait_until(lambda: _rows_at_least(warehouse, 1))
        await running.caught_up()
    letters = await read_topic(settings.kafka_bootstrap_servers, topics.DEADLETTER, deadletter_pb2.DeadLetter)
    reasons = {(letter.key.decode(), letter.reason) for letter in letters}
    assert reasons == {("nobody", "unknown_case"), ("pending", "minilog_missing"), ("gone", "minilog_missing"),
                       ("junk", "minilog_corrupt"), ("tampered", "minilog_corrupt"), ("good", "unknown_policy"),
                       ("good", "unknown_search_config"), ("garbage", "decode_error")}
    assert all(letter.service == "replay-validator" and letter.original for letter in letters)
    details = {letter.key.decode() + "/" + letter.reason: letter.detail for letter in letters}
    assert "requested" in details["pending/minilog_missing"] and "bc@7" in details["good/unknown_policy"]
    assert "case_logs says" in details["tampered/minilog_corrupt"]
    rows = warehouse.query_dicts(f"SELECT case_id, policy FROM {tables.SOLUTIONS} FINAL")
    assert rows == [{"case_id": "good", "policy": CONFIG.default_policy}]


async def test_replay_service_answers_and_refuses_bad_calls_with_the_field_named(settings, warehouse, clean, fleet):
    cut, incidents = fleet
    store = open_store(settings.object_store_url)
    seed_case(warehouse, "case-a", incidents[0].vehicle_id, cut(store, "case-a", 0))
    seed_case(warehouse, "pending", incidents[0].vehicle_id, cut(store, "pending", 0),
              status=cases_pb2.UPLOAD_STATUS_REQUESTED)
    await ensure_topics(settings.kafka_bootstrap_servers)
    running = Running(Validator, settings, warehouse)
    async with running as validator:
        await wait_until(lambda: _serving(validator))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{validator.grpc_port}") as channel:
            stub = replay_service_pb2_grpc.ReplayServiceStub(channel)
            policies = await stub.ListPolicies(replay_service_pb2.ListPoliciesRequest())
            assert "rule@1" in policies.policies and policies.default_search_config == "quick"
            bad = [
                (stub.GetSolution, replay_service_pb2.GetSolutionRequest(), "INVALID_ARGUMENT", "solution_id"),
                (stub.GetSolution, replay_service_pb2.GetSolutionRequest(solution_id="nope"), "NOT_FOUND",
                 "solution_id"),
                (stub.ListSolutions, replay_service_pb2.ListSolutionsRequest(page_size=5000), "INVALID_ARGUMENT",
                 "page_size"),
                (stub.ListSolutions, replay_service_pb2.ListSolutionsRequest(page_token="-3"), "INVALID_ARGUMENT",
                 "page_token"),
                (stub.ListSolutions, replay_service_pb2.ListSolutionsRequest(vehicle_id="not a vehicle!"),
                 "INVALID_ARGUMENT", "vehicle_id"),
                (stub.ListSolutions, replay_service_pb2.ListSolutionsRequest(verdict=42), "INVALID_ARGUMENT",
                 "verdict"),
                (stub.ReplayCase, replay_service_pb2.ReplayCaseRequest(), "INVALID_ARGUMENT", "case_id"),
                (stub.ReplayCase, replay_service_pb2.ReplayCaseRequest(case_id="nobody"), "NOT_FOUND", "case_id"),
                (stub.ReplayCase, replay_service_pb2.ReplayCaseRequest(case_id="case-a", policy="bc@7"),
                 "INVALID_ARGUMENT", "policy"),
                (stub.ReplayCase, replay_service_pb2.ReplayCaseRequest(case_id="case-a", search_config="huge"),
                 "INVALID_ARGUMENT", "search_config"),
                (stub.ReplayCase, replay_service_pb2.ReplayCaseRequest(
                    case_id="case-a", overrides=replay_service_pb2.SearchOverrides(iterations=10_000)),
                 "INVALID_ARGUMENT", "overrides.iterations"),
                (stub.ReplayCase, replay_service_pb2.ReplayCaseRequest(case_id="pending"), "FAILED_PRECONDITION",
                 "case_id"),
            ]
            for method, request, code, field in bad:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await method(request)
                assert refused.value.code().name == code, (request, refused.value.details())
                assert field in refused.value.details(), (request, refused.value.details())

            asked = await stub.ReplayCase(replay_service_pb2.ReplayCaseRequest(case_id="case-a", requested_by="ana"))
            assert asked.solution_id and not asked.already_solved
            await wait_until(lambda: _rows_at_least(warehouse, 1))
            solution = await stub.GetSolution(replay_service_pb2.GetSolutionRequest(solution_id=asked.solution_id))
            assert solution.case_id == "case-a" and solution.request_id == asked.request_id
            again = await stub.ReplayCase(replay_service_pb2.ReplayCaseRequest(case_id="case-a"))
            assert again.solution_id == asked.solution_id and again.already_solved
            page = await stub.ListSolutions(replay_service_pb2.ListSolutionsRequest(
                vehicle_id=incidents[0].vehicle_id, verdict=solution.verdict, page_size=1))
            assert [s.solution_id for s in page.solutions] == [asked.solution_id] and page.next_page_token == ""

        # `fleetloop replay case` waits for the solution (here: already there) and prints it
        env = {"FLEETLOOP_REPLAY_GRPC": f"127.0.0.1:{validator.grpc_port}"}
        done = await asyncio.to_thread(CliRunner().invoke, replay_cli, ["case", "case-a"], env=env)
        assert done.exit_code == 0, done.output
        assert f"solution {asked.solution_id} (already solved)" in done.output and "cost term" in done.output
        refused = await asyncio.to_thread(CliRunner().invoke, replay_cli, ["case", "case-a", "--policy", "bc@7"],
                                          env=env)
        assert refused.exit_code == 2 and "INVALID_ARGUMENT: policy: unknown policy 'bc@7'" in refused.output


async def _serving(service) -> bool:
    return service.grpc_port != 0


# --- SIGKILL mid-batch, then restart: every requested case solved exactly once ---------------------------------

KILLED_CASES = 8
# `fleetloop serve replay-validator` with the test's validator.yaml (argv[1]): quick budget, no map, two scenes
# per search call, so one batch of eight requests writes its pairs over several calls before its messages.
SERVE = ("import sys; from pathlib import Path; from services.replay_validator import plans; "
         "plans.CONFIG = Path(sys.argv[1]); from fleetloop.cli import app; "
         "app(['serve', 'replay-validator', '--verbose'])")
SEED = ("import json, sys; from fleetloop.warehouse import Warehouse; from fleetloop.v1 import cases_pb2; "
        "from services.case_assembler import rows; from services.case_assembler.service import MIGRATIONS; "
        "w = Warehouse(sys.argv[1]); w.migrate('case_assembler', MIGRATIONS); cases = []\n"
        "for cid, vid, uri, size, sha in json.loads(sys.argv[2]):\n"
        "    c = cases_pb2.Case(case_id=cid, vehicle_id=vid, replay_queued=True, revision=1)\n"
        "    c.uploads.add(tier='minilog', status=cases_pb2.UPLOAD_STATUS_COMPLETE, uri=uri, size_bytes=size, "
        "sha256=sha)\n"
        "    cases.append(c)\n"
        "w.insert_rows('cases', [rows.case_row(c) for c in cases], rows.CASE_COLUMNS)\n"
        "w.insert_rows('case_logs', [r for c in cases for r in rows.log_rows(c)], rows.LOG_COLUMNS)")
COUNT = ("import json, sys; from fleetloop.warehouse import Warehouse; w = Warehouse(sys.argv[1]); q = w.query_rows\n"
         "exists = q(\"SELECT count() FROM system.tables WHERE name = 'replay_solutions'\")[0][0]\n"
         "print(json.dumps(q('SELECT count(), uniqExact(solution_id), groupArray(case_id) "
         "FROM replay_solutions FINAL')[0] if exists else [0, 0, []]))")


def run_child(code: str, *args: str, env: dict[str, str]) -> str:
    """Python `code` in a fresh process (one chDB engine per process: the service's, or this reader's)."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


async def test_sigkill_mid_batch_then_restart_solves_every_case_exactly_once(broker, redis_url, tmp_path, fleet):
    cut, incidents = fleet
    objects = tmp_path / "objects"
    store = open_store(objects.as_uri())
    chdb = f"chdb://{tmp_path / 'warehouse'}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker, "REDIS_URL": redis_url, "CLICKHOUSE_URL": chdb,
           "FLEETLOOP_GRPC_PORT": "0",
           "FLEETLOOP_DATA_DIR": str(tmp_path), "FLEETLOOP_OBJECT_STORE_URL": objects.as_uri(),
           "FLEETLOOP_CONSUMER_POLL_MS": "100"}
    manifests = {f"case-{k:02d}": cut(store, f"case-{k:02d}", k % 2) for k in range(KILLED_CASES)}
    run_child(SEED, chdb, json.dumps([(cid, incidents[k % 2].vehicle_id, m.uri, m.size_bytes, m.sha256)
                                      for k, (cid, m) in enumerate(manifests.items())]), env=env)
    config = yaml.safe_load(CONFIG_PATH.read_text())
    config.update(default_search_config="quick", batch_scenarios=2, map={"source": "none"})
    config_path = tmp_path / "validator.yaml"
    config_path.write_text(yaml.safe_dump(config))
    await send(broker, [request_bytes(cid) for cid in manifests])
    pairs = objects / CONFIG.pair_prefix

    def start(name: str) -> subprocess.Popen:
        """The service, its log in a file (a pipe nobody reads could fill and block it)."""
        with open(tmp_path / f"{name}.log", "wb") as log:
            return subprocess.Popen([sys.executable, "-c", SERVE, str(config_path)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log)

    def said(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]

    first = start("first")

    async def a_pair_written() -> bool:
        assert first.poll() is None, said("first")
        return pairs.exists() and any(p.suffix == ".pair" for p in pairs.rglob("*"))

    try:
        await wait_until(a_pair_written, timeout_s=900, poll_s=0.02)
    except AssertionError:
        first.kill()
        raise AssertionError(f"no pair written; the service said: {said('first')}") from None
    first.send_signal(signal.SIGKILL)
    first.wait()
    rows_at_kill, _, _ = json.loads(run_child(COUNT, chdb, env=env))
    pairs_at_kill = sum(1 for p in pairs.rglob("*.pair"))
    assert rows_at_kill < KILLED_CASES and pairs_at_kill > rows_at_kill, "the kill must land inside a batch"

    second = start("second")
    published: list[replay_service_pb2.Solution] = []
    async with TopicReader(broker, topics.SOLUTIONS, replay_service_pb2.Solution) as reader:
        async def all_published() -> bool:
            assert second.poll() is None, said("second")
            published.extend(await reader.poll())
            return len({s.case_id for s in published}) == KILLED_CASES

        try:
            await wait_until(all_published, timeout_s=900, poll_s=0.2)
        except AssertionError:
            second.kill()
            raise AssertionError(f"{len({s.case_id for s in published})} of {KILLED_CASES} cases published; "
                                 f"the restarted service said: {said('second')}") from None
    await asyncio.sleep(2)  # the rows follow their messages; then the commit
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0, said("second")

    rows, unique, cases = json.loads(run_child(COUNT, chdb, env=env))
    assert rows == unique == KILLED_CASES and sorted(cases) == sorted(manifests)
    by_case: dict[str, set[str]] = {}
    for solution in published:
        by_case.setdefault(solution.case_id, set()).add(solution.solution_id)
    assert sorted(by_case) == sorted(manifests) and all(len(ids) == 1 for ids in by_case.values())
    written = sorted(p.name for p in pairs.rglob("*") if p.is_file())
    assert written == sorted(f"{next(iter(ids))}.pair" for ids in by_case.values())  # one object each, none partial
