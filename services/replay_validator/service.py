"""replay-validator wiring: one batched consumer over loop.replay.requests.v1 whose handler resolves each
request (policy, search budget, solution id), looks its case and minilog up in ClickHouse, reads the
minilog from the object store, rebuilds the scenes and searches those sharing a policy and budget
together (`fleetloop.replay.replayer`, the path `fleetloop replay scenario` takes), then writes the pair
objects, publishes loop.solutions.v1 and inserts replay_solutions rows, all before the consumer commits
the batch's offsets; plus ReplayService.

Exactly-once effect: a solution id is a hash of case, policy and effective search configuration; the
effects run pair -> topic -> row, so a request whose row exists has had all three and is skipped, and
a crash anywhere before the row replays the request into the same pair key, the same message (readers
keep one per solution_id) and the same row (ReplacingMergeTree).

Refusals (dead letters, the rest of the batch flows on): decode_error, unknown_schema_version,
missing_field, key_mismatch, bad_policy, bad_overrides (the request); unknown_policy,
unknown_search_config (the configuration); unknown_case, minilog_missing, minilog_corrupt (the data).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fleetloop import tables, topics
from fleetloop.bus import BatchConsumer, Bus, Record, Refusal
from fleetloop.codec.rejected import Rejected
from fleetloop.config import Settings
from fleetloop.grpc_server import Servicer, start_server
from fleetloop.replay.maps import MapPolyline, PolylineMap, SimWorldMap
from fleetloop.replay.minilog import from_minilog
from fleetloop.replay.pair import pair_to_bytes
from fleetloop.replay.policies import PolicyError
from fleetloop.replay.requests import decode_replay_request
from fleetloop.replay.scenario import ScenarioBatch, concat
from fleetloop.v1 import replay_service_pb2, replay_service_pb2_grpc
from fleetloop.vehicle.objectstore import open_store
from fleetloop.warehouse import Warehouse

from services.replay_validator.api import ReplayApi
from services.replay_validator.plans import Plan, Planner, Unplannable, ValidatorConfig, load_validator_config
from services.replay_validator.rows import SOLUTION_COLUMNS, solution_message, solution_row

log = logging.getLogger(__name__)

NAME = "replay-validator"
GROUP_ID = "replay-validator"
MIGRATIONS = Path(__file__).parent / "migrations"


class FleetMap:
    """The map scenes are cropped from (validator.yaml `map`); a city it does not hold crops to nothing
    (replayed without a map) instead of failing the request."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    @classmethod
    def from_config(cls, config: ValidatorConfig) -> FleetMap:
        if config.map.source == "none":
            return cls(PolylineMap([]))
        from fleetloop.sim import FleetSimulator, SimConfig

        sim = FleetSimulator(SimConfig(vehicles=config.map.sim_vehicles, seed=config.map.sim_seed,
                                       duration_s=config.map.sim_duration_s))
        return cls(SimWorldMap.from_simulator(sim))

    def crop(self, city: str, x_m: float, y_m: float, heading_rad: float, radius_m: float) -> list[MapPolyline]:
        cities = getattr(self.provider, "cities", None)
        if cities is not None and city not in cities:
            return []
        return self.provider.crop(city, x_m, y_m, heading_rad, radius_m)


@dataclass
class Job:
    """One request to solve: its record, the decoded request and its plan; `vehicle_id` and `minilog`
    once the case is looked up."""

    record: Record
    request: replay_service_pb2.ReplayRequest
    plan: Plan
    vehicle_id: str = ""
    minilog: dict | None = None


class ReplayValidator:
    """The service; `handle` is the consumer's handler and the tests' entry point."""

    name = NAME

    def __init__(self, settings: Settings, warehouse: Warehouse, bus: Bus,
                 config: ValidatorConfig | None = None) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.bus = bus
        self.config = config or load_validator_config()
        self.planner = Planner(self.config)
        self.store = open_store(settings.object_store_url)
        self._map: FleetMap | None = None
        self.counters: dict[str, int] = defaultdict(int)
        self.consumer = BatchConsumer(
            bootstrap=settings.kafka_bootstrap_servers, group_id=GROUP_ID, topic_names=[topics.REPLAY_REQUESTS],
            handler=self.handle, bus=bus, service=NAME, batch_max=self.config.batch_requests,
            poll_ms=settings.consumer_poll_ms)
        self.consumers = [self.consumer]
        self.grpc_port = 0

    def migrate(self) -> None:
        self.warehouse.migrate("replay_validator", MIGRATIONS)

    async def settled(self) -> bool:
        """Nothing is held beyond the consumer's lag: every batch is solved inside its handler."""
        return True

    @property
    def map(self) -> FleetMap:
        if self._map is None:
            self._map = FleetMap.from_config(self.config)
        return self._map

    # ------------------------------------------------------------------------------------ lookups

    async def existing(self, solution_ids: list[str]) -> set[str]:
        """The ids among `solution_ids` whose row is written (so their pair and message are too)."""
        if not solution_ids:
            return set()
        found = await self.warehouse.aquery_dicts(
            f"SELECT solution_id FROM {tables.SOLUTIONS} FINAL WHERE solution_id IN {{ids:Array(String)}}",
            {"ids": solution_ids})
        return {r["solution_id"] for r in found}

    async def cases(self, case_ids: list[str]) -> dict[str, tuple[str, dict | None]]:
        """case id -> (vehicle id, its minilog's case_logs row or None), for the cases that exist."""
        if not case_ids:
            return {}
        found = await self.warehouse.aquery_dicts(
            f"SELECT case_id, vehicle_id FROM {tables.CASES} FINAL WHERE case_id IN {{ids:Array(String)}}",
            {"ids": case_ids})
        logs = await self.warehouse.aquery_dicts(
            f"SELECT case_id, status, uri, size_bytes, sha256 FROM {tables.CASE_LOGS} FINAL "
            "WHERE case_id IN {ids:Array(String)} AND tier = 'minilog'", {"ids": case_ids})
        minilogs = {r["case_id"]: r for r in logs}
        return {r["case_id"]: (r["vehicle_id"], minilogs.get(r["case_id"])) for r in found}

    # ------------------------------------------------------------------------------------ handler

    async def handle(self, records: list[Record]) -> list[Refusal]:
        """Solve the batch's requests (module docstring); returns the refused records with their reasons."""
        refusals: list[Refusal] = []
        jobs: dict[str, Job] = {}
        for record in records:
            try:
                request = decode_replay_request(record.value, record.key)
                overrides = request.overrides if request.HasField("overrides") else None
                plan = self.planner.plan(request.case_id, request.policy, request.search_config, overrides)
            except (Rejected, Unplannable) as refused:
                refusals.append(Refusal(record, refused.reason, refused.detail))
                continue
            if plan.solution_id in jobs:
                self.counters["duplicate_requests"] += 1
                continue
            jobs[plan.solution_id] = Job(record, request, plan)
        for solution_id in await self.existing(list(jobs)):
            self.counters["already_solved"] += 1
            del jobs[solution_id]
        found = await self.cases(sorted({j.plan.case_id for j in jobs.values()}))
        ready = []
        for job in jobs.values():
            if job.plan.case_id not in found:
                refusals.append(Refusal(job.record, "unknown_case", f"no case {job.plan.case_id!r} in {tables.CASES}"))
                continue
            job.vehicle_id, job.minilog = found[job.plan.case_id]
            if job.minilog is None or job.minilog["status"] != "complete" or not job.minilog["uri"]:
                status = job.minilog["status"] if job.minilog else "not requested"
                refusals.append(Refusal(job.record, "minilog_missing",
                                        f"case {job.plan.case_id!r} has no complete minilog (minilog: {status})"))
                continue
            ready.append(job)
        loop = asyncio.get_running_loop()
        scenes, bad = await loop.run_in_executor(None, self._scenes, ready)
        refusals += bad
        solutions = await loop.run_in_executor(None, self._solve, scenes)
        # pairs are in the store; the message next, the row last (see the module docstring)
        await self.bus.send_many([(topics.SOLUTIONS, s.case_id.encode(), s.SerializeToString()) for s in solutions])
        await self.warehouse.ainsert_rows(tables.SOLUTIONS.name, [solution_row(s) for s in solutions],
                                          SOLUTION_COLUMNS)
        self.counters["solved"] += len(solutions)
        return refusals

    def _scenes(self, jobs: list[Job]) -> tuple[list[tuple[Job, ScenarioBatch]], list[Refusal]]:
        """Each job's minilog read and rebuilt as a one-scenario batch (runs off the event loop)."""
        scenes, refusals = [], []
        for job in jobs:
            uri = job.minilog["uri"]
            try:
                data = self.store.get(uri)
            except (FileNotFoundError, ValueError) as exc:
                refusals.append(Refusal(job.record, "minilog_missing", f"{uri}: {exc}"))
                continue
            digest = hashlib.sha256(data).hexdigest()
            if job.minilog["sha256"] and digest != job.minilog["sha256"]:
                refusals.append(Refusal(job.record, "minilog_corrupt",
                                        f"{uri}: {len(data)} B sha256 {digest[:12]}…, case_logs says "
                                        f"{job.minilog['size_bytes']} B {job.minilog['sha256'][:12]}…"))
                continue
            try:
                replayer = self.planner.replayer(job.plan)
            except PolicyError as exc:  # listed, but its checkpoint cannot be loaded
                refusals.append(Refusal(job.record, "unknown_policy", str(exc)))
                continue
            world_map = self.map
            try:
                scen = from_minilog(data, world_map, replayer.config, device=replayer.device)
            except Exception as exc:  # noqa: BLE001 - any failure to read the file is a corrupt minilog
                refusals.append(Refusal(job.record, "minilog_corrupt", f"{uri}: {type(exc).__name__}: {exc}"[:4096]))
                continue
            scenes.append((job, scen))
        return scenes, refusals

    def _solve(self, scenes: list[tuple[Job, ScenarioBatch]]) -> list[replay_service_pb2.Solution]:
        """Search the scenes sharing a policy and budget together, in chunks of `batch_scenarios`; write each
        pair to the store; return the Solutions (runs off the event loop)."""
        groups: dict[tuple, list[tuple[Job, ScenarioBatch]]] = defaultdict(list)
        for job, scen in scenes:
            groups[job.plan.setup_key].append((job, scen))
        solutions: list[replay_service_pb2.Solution] = []
        size = self.config.batch_scenarios
        for members in groups.values():
            replayer = self.planner.replayer(members[0][0].plan)
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                batch = concat([scen for _, scen in chunk])
                solved = replayer.solve(batch, seed=self.config.seed, robust=self.config.robust)
                for i, (job, _) in enumerate(chunk):
                    pair = replayer.pair(batch, solved, i, created_ms=job.request.requested_ms)
                    data = pair_to_bytes(pair, replayer.config)
                    key = f"{self.config.pair_prefix}/{job.plan.case_id}/{job.plan.solution_id}.pair"
                    uri = self.store.put(key, data)
                    solutions.append(solution_message(job.plan, job.request, job.vehicle_id, solved, i,
                                                      self.config.min_win_rate, key, uri, len(data), len(chunk)))
                log.info("%s: solved %d case(s) together in %.2f s (+%.2f s re-validation, %s)", NAME, len(chunk),
                         solved.seconds, solved.robust_seconds, solved.result.device)
        return solutions

    # ------------------------------------------------------------------------------------ gRPC and run

    async def serve_grpc(self) -> None:
        api = ReplayApi(self)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self._server, self.grpc_port = await start_server(
            [Servicer(replay_service_pb2_grpc.add_ReplayServiceServicer_to_server, api, "fleetloop.v1.ReplayService")],
            address, watch=[self.consumer])

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        torch.set_num_threads(self.config.torch_threads or max(1, (os.cpu_count() or 1) - 1))
        await asyncio.get_running_loop().run_in_executor(None, self.migrate)
        if serve_grpc:
            await self.serve_grpc()
        try:
            await self.consumer.run(stop)
        finally:
            if serve_grpc:
                await self._server.stop(grace=1)
