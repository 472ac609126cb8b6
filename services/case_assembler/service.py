"""case-assembler wiring: one batched consumer over loop.triggers.v1, fleet.uploads.v1 and
fleet.heartbeat.v1 whose handler turns triggers into cases, follows the uploads, asks vehicles for
the next tiers, and writes ClickHouse, loop.cases.v1, fleet.commands.v1 and Redis before the offsets
are committed; plus CaseService.

Why heartbeats: the tier rules need each vehicle's Wi-Fi/charging state and the lifecycle needs a
clock. Both come from the heartbeat stream in event time; reading heartbeat-ingest's Redis keys
instead would couple two services through private state (ARCHITECTURE §2: topics and gRPC only).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path

from fleetloop import codec, topics
from fleetloop.bus import BatchConsumer, Bus, Record, Refusal
from fleetloop.config import Settings
from fleetloop.grpc_server import Servicer, start_server
from fleetloop.replay.requests import replay_request
from fleetloop.state import connect
from fleetloop.v1 import case_service_pb2_grpc, cases_pb2, replay_service_pb2, triggers_pb2, uploads_pb2
from fleetloop.vehicle.objectstore import open_store
from fleetloop.warehouse import Warehouse

from services.case_assembler import assembly, rows
from services.case_assembler.api import CaseApi
from services.case_assembler.policy import Policy, load_policy
from services.case_assembler.state import CaseState, Changes

log = logging.getLogger(__name__)

NAME = "case-assembler"
GROUP_ID = "case-assembler"
MIGRATIONS = Path(__file__).parent / "migrations"


def decode_trigger(record: Record) -> triggers_pb2.TriggerEvent:
    """A TriggerEvent from loop.triggers.v1, fully checked (codec.decode_trigger); raises codec.Rejected."""
    return codec.decode_trigger(record.value, record.key)


def decode_manifest(record: Record) -> uploads_pb2.UploadManifest:
    """An UploadManifest from fleet.uploads.v1, checked (codec.decode_manifest); raises codec.Rejected."""
    return codec.decode_manifest(record.value, record.key)


def replay_request_for(case: cases_pb2.Case) -> replay_service_pb2.ReplayRequest | None:
    """The replay request of a case marked for replay whose minilog is uploaded, else None. Deterministic
    (requested at the minilog's completion, in event time), so every later revision of the case and a
    replayed batch republish the same request, which the replay-validator absorbs."""
    minilog = next((u for u in case.uploads if u.tier == "minilog" and u.status == assembly.COMPLETE), None)
    if not case.replay_queued or minilog is None:
        return None
    return replay_request(case.case_id, requested_by=NAME, requested_ms=minilog.updated_ms)


class CaseAssembler:
    """The service; `handle` is the consumer's handler. State mutations hold `lock` (batches and
    adjudications of one process never interleave)."""

    name = NAME

    def __init__(self, settings: Settings, warehouse: Warehouse, bus: Bus, policy: Policy | None = None) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.bus = bus
        self.policy = policy or load_policy()
        self.store = open_store(settings.object_store_url)
        self.state = CaseState(connect(settings.redis_url))
        self.lock = asyncio.Lock()
        self.active: dict[str, cases_pb2.Case] = {}
        self.links: dict[str, assembly.VehicleLink] = {}
        self.usage: dict[str, assembly.DayUsage] = {}
        self.watermark_ms = 0
        self.loaded = False
        self.counters: dict[str, int] = defaultdict(int)
        self.consumer = BatchConsumer(
            bootstrap=settings.kafka_bootstrap_servers, group_id=GROUP_ID,
            topic_names=[topics.TRIGGERS, topics.UPLOADS, topics.HEARTBEAT], handler=self.handle, bus=bus,
            service=NAME, batch_max=settings.consumer_batch_max, poll_ms=settings.consumer_poll_ms,
        )
        self.consumers = [self.consumer]
        self.grpc_port = 0

    def migrate(self) -> None:
        self.warehouse.migrate("case_assembler", MIGRATIONS)

    async def load(self) -> None:
        """Load the hot state of cases still in flight (once, before the first batch)."""
        if self.loaded:
            return
        self.watermark_ms = await self.state.watermark_ms()
        for case in await self.state.active_cases():
            self.active[case.case_id] = case
        for vehicle_id in {c.vehicle_id for c in self.active.values()}:
            self.links[vehicle_id] = await self.state.link(vehicle_id)
        self.loaded = True

    async def case(self, case_id: str) -> cases_pb2.Case | None:
        """A case from the active cache, else Redis, else ClickHouse."""
        if case_id in self.active:
            return self.active[case_id]
        (found,) = await self.state.cases([case_id])
        if found is not None:
            return found
        hits = await self.warehouse.aquery_dicts(
            "SELECT case_json FROM cases FINAL WHERE case_id = {cid:String}", {"cid": case_id})
        return rows.case_from_json(hits[0]["case_json"]) if hits else None

    async def _link(self, vehicle_id: str) -> assembly.VehicleLink:
        if vehicle_id not in self.links:
            self.links[vehicle_id] = await self.state.link(vehicle_id)
        return self.links[vehicle_id]

    async def _usage(self, vehicle_id: str, day: int) -> assembly.DayUsage:
        usage = self.usage.get(vehicle_id)
        if usage is None or usage.day != day:
            usage = self.usage[vehicle_id] = await self.state.usage(vehicle_id, day)
        return usage

    # ------------------------------------------------------------------------------------ handler

    async def handle(self, records: list[Record]) -> list[Refusal]:
        async with self.lock:
            await self.load()
            refusals: list[Refusal] = []
            changes = Changes()
            trigger_rows: list[tuple] = []
            heartbeats, triggers, manifests = [], [], []
            for record in records:
                if record.topic == topics.HEARTBEAT:
                    try:
                        heartbeats.append(codec.decode_envelope(record.value, record.key, "heartbeat"))
                    except codec.Rejected:  # heartbeat-ingest owns (and dead-letters) bad heartbeats
                        self.counters["skipped_heartbeats"] += 1
                    continue
                try:
                    if record.topic == topics.TRIGGERS:
                        triggers.append(decode_trigger(record))
                    else:
                        manifests.append((record, decode_manifest(record)))
                except codec.Rejected as rejected:
                    refusals.append(Refusal(record, rejected.reason, rejected.detail))

            for env in heartbeats:
                link = await self._link(env.vehicle_id)
                if env.event_time_ms > link.last_heartbeat_ms:  # a replayed heartbeat is not counted twice
                    usage = await self._usage(env.vehicle_id, env.event_time_ms // assembly.DAY_MS)
                    usage.online_s += 1
                    changes.usage[env.vehicle_id] = usage
                if env.event_time_ms >= link.last_heartbeat_ms:
                    link.last_heartbeat_ms = env.event_time_ms
                    link.connectivity, link.charging = env.heartbeat.connectivity, env.heartbeat.charging
                    changes.links[env.vehicle_id] = link
                self.watermark_ms = max(self.watermark_ms, env.event_time_ms)
            for trigger in triggers:
                self.watermark_ms = max(self.watermark_ms, trigger.end_ms)
            now_ms = self.watermark_ms
            changes.watermark_ms = now_ms

            known = await self.state.routes([t.trigger_id for t in triggers])
            for trigger in triggers:
                if trigger.trigger_id in known or trigger.trigger_id in changes.routes:
                    self.counters["duplicate_triggers"] += 1
                    continue
                await self._route(trigger, now_ms, changes, trigger_rows)

            for record, manifest in manifests:
                refusal = await self._manifest(record, manifest, now_ms, changes)
                if refusal is not None:
                    refusals.append(refusal)

            commands = await self._advance(now_ms, changes)
            await self._commit(changes, trigger_rows, commands)
            return refusals

    async def _route(self, trigger: triggers_pb2.TriggerEvent, now_ms: int, changes: Changes,
                     trigger_rows: list[tuple]) -> None:
        vid = trigger.vehicle_id
        latest_id = changes.latest.get(vid) or await self.state.latest(vid)
        latest = (changes.cases.get(latest_id) or await self.case(latest_id)) if latest_id else None
        family = self.policy.family_of.get(trigger.trigger)
        cooldown = None
        if family is not None:
            cooldown = changes.cooldowns.get((vid, family)) or await self.state.cooldown(vid, family)
        action, case_id = assembly.route(trigger, latest, cooldown, self.policy)
        if action == "new":
            case = assembly.new_case(trigger, self.policy, now_ms)
            if case.case_id in self.active or (await self.state.cases([case.case_id]))[0] is not None:
                # Two triggers with the same onset opening the same case: fold in, never a second case.
                case = await self.case(case.case_id)
                assembly.add_trigger(case, trigger, self.policy, now_ms)
            changes.latest[vid] = case.case_id
            if family is not None:
                changes.cooldowns[(vid, family)] = assembly.Cooldown(case.case_id, trigger.onset_ms)
        else:
            case = changes.cases.get(case_id) or await self.case(case_id)
            if case is None:  # the referenced case left every store: start afresh, deterministically
                case = assembly.new_case(trigger, self.policy, now_ms)
                changes.latest[vid] = case.case_id
            elif action == "merge":
                assembly.add_trigger(case, trigger, self.policy, now_ms)
                if case.window_end_ms > (latest.window_end_ms if latest else 0):
                    changes.latest[vid] = case.case_id
            else:
                assembly.suppress(case, trigger, now_ms)
        suppressed = action == "suppress" and trigger.trigger_id in case.suppressed_trigger_ids
        changes.cases[case.case_id] = case
        self.active[case.case_id] = case
        changes.routes[trigger.trigger_id] = f"~{case.case_id}" if suppressed else case.case_id
        trigger_rows.append(rows.trigger_row(trigger, "" if suppressed else case.case_id,
                                             case.case_id if suppressed else "", case.revision))

    async def _manifest(self, record: Record, manifest: uploads_pb2.UploadManifest, now_ms: int,
                        changes: Changes) -> Refusal | None:
        case = changes.cases.get(manifest.case_id) or await self.case(manifest.case_id)
        if case is None or case.vehicle_id != manifest.vehicle_id:
            return Refusal(record, "unknown_case", f"no case {manifest.case_id!r} of {manifest.vehicle_id!r}")
        if manifest.state == uploads_pb2.UPLOAD_STATE_COMPLETE:
            try:
                size, digest = await asyncio.get_running_loop().run_in_executor(None, self.store.stat, manifest.uri)
            except (FileNotFoundError, ValueError) as exc:
                size, digest = -1, f"unreadable: {exc}"
            if (size, digest) != (manifest.size_bytes, manifest.sha256):
                # The object does not match its manifest: dead-letter it and ask the vehicle again.
                failed = uploads_pb2.UploadManifest()
                failed.CopyFrom(manifest)
                failed.state, failed.retryable = uploads_pb2.UPLOAD_STATE_FAILED, True
                failed.error = "object does not match its manifest"
                if assembly.apply_manifest(case, failed, None, now_ms, self.policy) == "applied":
                    changes.cases[case.case_id] = case
                return Refusal(record, "checksum_mismatch",
                               f"{manifest.uri}: manifest says {manifest.size_bytes} B sha256 {manifest.sha256[:12]}…, "
                               f"object has {size} B {digest[:12]}…")
        link = await self._link(case.vehicle_id)
        usage = await self._usage(case.vehicle_id, link.last_heartbeat_ms // assembly.DAY_MS)
        outcome = assembly.apply_manifest(case, manifest, usage, now_ms, self.policy)
        self.counters[f"manifest_{outcome}"] += 1
        if outcome == "applied":
            changes.cases[case.case_id] = case
            changes.usage[case.vehicle_id] = usage
            self.active[case.case_id] = case
        return None

    async def _advance(self, now_ms: int, changes: Changes) -> list[uploads_pb2.VehicleCommand]:
        """Timeouts, then each vehicle's upload queue; returns the commands to send."""
        by_vehicle: dict[str, list[cases_pb2.Case]] = defaultdict(list)
        for case in self.active.values():
            if assembly.expire(case, now_ms, self.policy):
                changes.cases[case.case_id] = case
            by_vehicle[case.vehicle_id].append(case)
        commands: list[uploads_pb2.VehicleCommand] = []
        for vehicle_id, cases in by_vehicle.items():
            if not any(u.status == assembly.PENDING for c in cases for u in c.uploads):
                continue
            link = await self._link(vehicle_id)
            usage = await self._usage(vehicle_id, link.last_heartbeat_ms // assembly.DAY_MS)
            sent, changed = assembly.plan_vehicle(cases, link, usage, now_ms, self.policy)
            commands.extend(sent)
            for case in cases:
                if case.case_id in changed:
                    changes.cases[case.case_id] = case
            if sent:
                changes.usage[vehicle_id] = usage
        return commands

    async def _commit(self, changes: Changes, trigger_rows: list[tuple],
                      commands: list[uploads_pb2.VehicleCommand]) -> None:
        """ClickHouse, then Kafka, then Redis: a crash before Redis replays the batch from the old
        state and rewrites the same rows, cases and request ids (all idempotent). Replay requests
        follow the case rows, so the validator finds the case and its minilog when one arrives."""
        cases = list(changes.cases.values())
        await self.warehouse.ainsert_rows("trigger_events", trigger_rows, rows.TRIGGER_COLUMNS)
        await self.warehouse.ainsert_rows("cases", [rows.case_row(c) for c in cases], rows.CASE_COLUMNS)
        await self.warehouse.ainsert_rows("case_logs", [r for c in cases for r in rows.log_rows(c)],
                                          rows.LOG_COLUMNS)
        messages = [(topics.CASES, c.vehicle_id.encode(), c.SerializeToString()) for c in cases]
        messages += [(topics.COMMANDS, cmd.vehicle_id.encode(), cmd.SerializeToString())
                     for cmd in commands]
        messages += [(topics.REPLAY_REQUESTS, c.case_id.encode(), request.SerializeToString())
                     for c in cases if (request := replay_request_for(c)) is not None]
        await self.bus.send_many(messages)
        await self.state.save(changes)
        for case in cases:
            if not assembly.is_active(case):
                self.active.pop(case.case_id, None)

    # ------------------------------------------------------------------------------------ API hooks

    async def adjudicate(self, case_id: str, adjudication: cases_pb2.Adjudication) -> cases_pb2.Case | None:
        """Record a verdict; the case is re-published with a new revision. None if unknown."""
        async with self.lock:
            await self.load()
            case = await self.case(case_id)
            if case is None:
                return None
            assembly.adjudicate(case, adjudication)
            if assembly.is_active(case):
                self.active[case.case_id] = case
            await self._commit(Changes(cases={case.case_id: case}), [], [])
            return case

    async def serve_grpc(self) -> None:
        api = CaseApi(self, self.warehouse, self.store, self.settings.data_dir / "exports")
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self._server, self.grpc_port = await start_server(
            [Servicer(case_service_pb2_grpc.add_CaseServiceServicer_to_server, api, "fleetloop.v1.CaseService")],
            address, watch=[self.consumer])

    async def settled(self) -> bool:
        """Nothing is pending beyond the consumers' lag (runtime.Service)."""
        return True

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.migrate)
        if serve_grpc:
            await self.serve_grpc()
        try:
            await self.consumer.run(stop)
        finally:
            if serve_grpc:
                await self._server.stop(grace=1)
            await self.state.client.aclose()
