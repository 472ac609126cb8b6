"""heartbeat-ingest wiring: a batched consumer over the four fleet topics whose handler writes
ClickHouse and Redis before the offsets are committed, a daily rollup, and FleetService."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from fleetloop import codec, topics
from fleetloop.bus import BatchConsumer, Bus, FleetClock, Record, Refusal
from fleetloop.config import Settings
from fleetloop.grpc_server import Servicer, start_server
from fleetloop.monitors import ClockMode
from fleetloop.state import connect
from fleetloop.v1 import alerts_pb2_grpc, common_pb2, fleet_service_pb2_grpc, metrics_pb2_grpc
from fleetloop.warehouse import Warehouse

from services.heartbeat_ingest import rows
from services.heartbeat_ingest.alert_store import AlertStore
from services.heartbeat_ingest.alerts_api import AlertApi
from services.heartbeat_ingest.api import FleetApi
from services.heartbeat_ingest.live_state import LiveState
from services.heartbeat_ingest.metrics import MetricsSink
from services.heartbeat_ingest.metrics_api import MetricsApi
from services.heartbeat_ingest.monitoring import FleetMonitoring

log = logging.getLogger(__name__)

NAME = "heartbeat-ingest"
GROUP_ID = "heartbeat-ingest"
MIGRATIONS = Path(__file__).parent / "migrations"
PAYLOAD_BY_TOPIC = {topics.HEARTBEAT: "heartbeat", topics.POSE: "pose", topics.EVENTS: "event",
                    topics.PERCEPTION: "perception"}
# Events and perception are few per second: checked one by one. Heartbeat and pose are screened in bulk.
ROLLUP_EVERY_S = 30.0  # wall-clock cadence of the daily recompute; an infrastructure knob, not logic

ROLLUP_SQL = """
INSERT INTO dws_fleet_day_staging
SELECT toDate(ts) AS day, vehicle_id, city, park, route, road_type, software_version,
       sum(distance_m), count(), countIf(has_heartbeat = 1 AND task_state IN (2, 3)),
       countIf(has_heartbeat = 1 AND task_state IN (2, 3) AND mode = 1), countIf(distance_m > 0.1)
FROM dwd_vehicle_second FINAL
WHERE toDate(ts) = {day:Date}
GROUP BY day, vehicle_id, city, park, route, road_type, software_version
"""


class HeartbeatIngest:
    """The service: `handle` is the consumer's handler and the unit tests' entry point."""

    name = NAME

    def __init__(self, settings: Settings, warehouse: Warehouse, bus: Bus) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.bus = bus
        self.live = LiveState(connect(settings.redis_url))
        # Event-time plausibility per vehicle against the fleet's bulk and the broker's append time
        # (fleetloop.bus.watermark): a vehicle alone on its partition is still judged against the
        # others, and one forged clock cannot move anyone else's judgement.
        self.clock = FleetClock()
        self.dirty_days: set[str] = set()
        self._last_rollup = time.monotonic()
        self.consumer = BatchConsumer(
            bootstrap=settings.kafka_bootstrap_servers, group_id=GROUP_ID,
            topic_names=list(PAYLOAD_BY_TOPIC), handler=self.handle, bus=bus, service=NAME,
            batch_max=settings.consumer_batch_max, poll_ms=settings.consumer_poll_ms,
        )
        # MPS/MPD/MPI: triggers and case verdicts, joined with this service's mileage.
        self.metrics = MetricsSink(warehouse)
        self.metrics_api = MetricsApi(warehouse)  # MetricsService; `make demo` reads it in-process
        self.metrics_consumer = BatchConsumer(
            bootstrap=settings.kafka_bootstrap_servers, group_id=f"{GROUP_ID}-metrics",
            topic_names=[topics.TRIGGERS, topics.CASES], handler=self.metrics.handle, bus=bus, service=NAME,
            batch_max=settings.consumer_batch_max, poll_ms=settings.consumer_poll_ms,
        )
        self.consumers = [self.consumer, self.metrics_consumer]
        self.grpc_port = 0
        self.alerts = AlertStore(settings.redis_url)
        self.monitoring = FleetMonitoring(settings, bus, self.alerts, ClockMode(settings.monitor_clock))

    def migrate(self) -> None:
        self.warehouse.migrate("heartbeat_ingest", MIGRATIONS)

    async def handle(self, records: list[Record]) -> list[Refusal]:
        """Validate, land ODS + DWD in ClickHouse and live state in Redis; return refusals.

        Envelope checks run per message; payload checks run vectorised over the batch, and
        only the suspects they flag are judged one by one (for the exact reason).
        """
        refusals: list[Refusal] = []
        by_kind: dict[str, list[tuple[Record, common_pb2.Envelope]]] = {k: [] for k in PAYLOAD_BY_TOPIC.values()}
        for record in records:
            payload = PAYLOAD_BY_TOPIC[record.topic]
            try:
                env = codec.decode(record.topic, record.key, record.value, plausibility=False)
                self.clock.check(env.vehicle_id, env.event_time_ms, record.timestamp_ms)
                if payload in ("event", "perception"):  # few per second: judged one by one
                    codec.PLAUSIBILITY[payload](env)
            except codec.Rejected as rejected:
                refusals.append(Refusal(record, rejected.reason, rejected.detail))
                continue
            self.clock.observe(env.vehicle_id, env.event_time_ms, record.timestamp_ms)
            by_kind[payload].append((record, env))
        self.clock.advance()

        heartbeats = by_kind["heartbeat"]
        if heartbeats:
            ods, dwd = rows.heartbeat_tables([env for _, env in heartbeats])
            suspects = codec.heartbeat_suspects(ods)
            if suspects.any():
                heartbeats = self._judge(heartbeats, suspects, codec.PLAUSIBILITY["heartbeat"], refusals)
                ods, dwd = rows.heartbeat_tables([env for _, env in heartbeats])
            await self.warehouse.ainsert_arrow("ods_heartbeat", ods)
            await self.warehouse.ainsert_arrow("dwd_vehicle_second", dwd)

        poses = by_kind["pose"]
        if poses:
            arrays, counts, suspects = codec.pose_screen([env.pose for _, env in poses])
            if suspects.any():
                poses = self._judge(poses, suspects, codec.PLAUSIBILITY["pose"], refusals)
                arrays, counts, _ = codec.pose_screen([env.pose for _, env in poses])
            if poses:
                ods, dwd = rows.pose_tables([env for _, env in poses], arrays, counts)
                await self.warehouse.ainsert_arrow("ods_pose", ods)
                await self.warehouse.ainsert_arrow("dwd_vehicle_second", dwd)

        if by_kind["event"]:
            await self.warehouse.ainsert_arrow("ods_vehicle_event",
                                               rows.event_table([e for _, e in by_kind["event"]]))
        if by_kind["perception"]:
            await self.warehouse.ainsert_arrow("ods_perception",
                                               rows.perception_table([e for _, e in by_kind["perception"]]))
        await self.live.apply([env for _, env in heartbeats])
        days = {env.event_time_ms // 86_400_000 for _, env in (*heartbeats, *poses)}
        self.dirty_days |= {time.strftime("%Y-%m-%d", time.gmtime(day * 86_400)) for day in days}
        if self.dirty_days and time.monotonic() - self._last_rollup > ROLLUP_EVERY_S:
            await self.rollup()
        return refusals

    @staticmethod
    def _judge(items, suspects: np.ndarray, check, refusals: list[Refusal]):
        """Keep the suspects that pass `check`; refuse the others with its reason."""
        kept = []
        for (record, env), suspect in zip(items, suspects, strict=True):
            if suspect:
                try:
                    check(env)
                except codec.Rejected as rejected:
                    refusals.append(Refusal(record, rejected.reason, rejected.detail))
                    continue
            kept.append((record, env))
        return kept

    async def settled(self) -> bool:
        """True when the monitors have taken every heartbeat and event the ingest consumer has."""
        seen = self.consumer.records_by_topic
        m = self.monitoring
        return m.vehicle_records >= seen[topics.HEARTBEAT] + seen[topics.EVENTS] and m.park_records >= m.forwarded

    async def rollup(self, days: set[str] | None = None) -> list[str]:
        """Recompute DWS for the days touched since the last rollup (or `days`)."""
        todo = sorted(days if days is not None else self.dirty_days)
        for day in todo:
            await asyncio.get_running_loop().run_in_executor(None, self._rollup_day, day)
        self.dirty_days -= set(todo)
        self._last_rollup = time.monotonic()
        return todo

    def _rollup_day(self, day: str) -> None:
        partition = f"'{day}'"  # a Date we formatted ourselves, never client input
        self.warehouse.command(f"ALTER TABLE dws_fleet_day_staging DROP PARTITION {partition}")
        self.warehouse.command(ROLLUP_SQL, {"day": day})
        self.warehouse.command(f"ALTER TABLE dws_fleet_day REPLACE PARTITION {partition} FROM dws_fleet_day_staging")

    async def serve_grpc(self) -> None:
        offline = self.monitoring.config.offline
        api = FleetApi(self.warehouse, self.live, offline_after_s=offline.missed_heartbeats / offline.default_rate_hz)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self._server, self.grpc_port = await start_server([
            Servicer(fleet_service_pb2_grpc.add_FleetServiceServicer_to_server, api, "fleetloop.v1.FleetService"),
            Servicer(alerts_pb2_grpc.add_AlertServiceServicer_to_server, AlertApi(self.alerts, self.bus),
                     "fleetloop.v1.AlertService"),
            Servicer(metrics_pb2_grpc.add_MetricsServiceServicer_to_server, self.metrics_api,
                     "fleetloop.v1.MetricsService"),
        ], address, watch=self.consumers)

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.migrate)
        if serve_grpc:
            await self.serve_grpc()
        await self.monitoring.start()
        try:
            async with asyncio.TaskGroup() as consumers:  # one failing cancels (and so stops) the other
                for consumer in (self.consumer, self.metrics_consumer):
                    consumers.create_task(consumer.run(stop))
        finally:
            await self.monitoring.stop()
            await self.alerts.close()
            if self.dirty_days:
                await self.rollup()
            if serve_grpc:
                await self._server.stop(grace=1)
            await self.live.client.aclose()
