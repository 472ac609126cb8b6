"""The fleet monitors (the "ECG") as a faust-streaming app inside heartbeat-ingest.

Two agents, so the work shards by key like the rest of the loop:
* `vehicles` reads heartbeats and events keyed by vehicle id: OFFLINE/RECOVERED and
  stop-and-not-go; it forwards each heartbeat and error code to `loop.monitor.park.v1`
  re-keyed by park (the group-by);
* `parks` reads that topic keyed by park: PARK_STALL and ERROR_BURST.
Each agent's monitor state per key (vehicle, park) is checkpointed to Redis after every batch for
the keys it touched, and imported the first time a key shows up after a restart or rebalance.
Faust tables were the first choice, but their changelog recovery relies on ListOffsets, which
Tansu 0.6 answers with the last batch's base offset + 1: after a restart, recovery waited for
offsets it never saw. Redis is already this service's state store. Alerts merge into Redis
(AlertStore) and every change goes to fleet.alerts.v1.

Dead-lettering of these topics belongs to the ingest consumer that reads the same messages; the
vehicles agent decodes them through the same codec path (`codec.decode`) and skips, and counts,
exactly what ingest refuses at decode — a key mismatch or a wrong payload never reaches a monitor,
so it cannot raise an alert for a vehicle that does not exist.
"""

from __future__ import annotations

import heapq
import json
import logging
import time

import faust
from fleetloop import codec, topics
from fleetloop.bus import Bus, Watermark
from fleetloop.config import Settings
from fleetloop.monitors import ClockMode, FleetMonitor, MonitorInputError, load_monitor_config
from fleetloop.state import key
from fleetloop.v1 import alerts_pb2, common_pb2

from services.heartbeat_ingest.alert_store import AlertStore

log = logging.getLogger(__name__)

PARK_TOPIC = "loop.monitor.park.v1"
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.5
# No heartbeat partition is ever treated as idle: while vehicles are still publishing, a lagging
# partition is momentarily "caught up" between two fetches, and releasing the watermark past it
# raised OFFLINE for all its vehicles (seen in `make demo`). A partition whose vehicles all fall
# silent holds event time back until they return (their gap then raises OFFLINE from their own data);
# in LIVE mode the wall-clock tick moves time through silence.
IDLE_SOURCE_MS = None
# Reorder window of the parks agent (see FleetMonitoring._reorder): twice the largest disorder seen.
# A park stall needs 4 vehicles stopped a minute each within 5 minutes, so 2 minutes late is still useful.
PARK_REORDER_MS = 120_000


def wall_ms() -> int:
    return int(time.time() * 1000)


class MonitorCheckpoints:
    """Per-key monitor state in Redis: `fl:ingest:monitor-<scope>:<key>` (JSON, 7-day TTL)."""

    TTL_S = 7 * 86_400  # a week: longer than any outage a restarted monitor should remember

    def __init__(self, client) -> None:
        self.client = client

    async def save(self, scope: str, states: dict[str, dict | None]) -> None:
        if not states:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for name, state in states.items():
                if state is not None:
                    pipe.set(key("ingest", f"monitor-{scope}", name), json.dumps(state), ex=self.TTL_S)
            await pipe.execute()

    async def load(self, scope: str, names: set[str]) -> dict[str, dict]:
        ordered = sorted(names)
        raws = await self.client.mget([key("ingest", f"monitor-{scope}", n) for n in ordered])
        return {n: json.loads(raw) for n, raw in zip(ordered, raws, strict=True) if raw is not None}


class FleetMonitoring:
    """Owns the faust app; `start()`/`stop()` run it on the caller's event loop."""

    def __init__(self, settings: Settings, bus: Bus, store: AlertStore, clock: ClockMode) -> None:
        self.bus = bus
        self.store = store
        self.clock = clock
        self.skipped = 0
        self.alerts_published = 0
        self.vehicle_records = 0   # heartbeats and events the vehicles agent has taken
        self.forwarded = 0         # sent to the park topic
        self.park_records = 0      # taken by the parks agent
        self.config = config = load_monitor_config()  # the one read of monitors.yaml in this service
        self.vehicle_monitor = FleetMonitor(config, clock, parks=False, external_watermark=True)
        # The park topic is written in event-time order (see `vehicles`), so its own clock is sound.
        self.park_monitor = FleetMonitor(config, clock, vehicles=False)
        self.vehicle_sources = Watermark(IDLE_SOURCE_MS)
        self.allowed_lateness_ms = config.clock.allowed_lateness_ms
        self._seen_vehicles: set[str] = set()
        self._seen_parks: set[str] = set()
        # (event ms, park, envelope bytes) waiting for the watermark. Not checkpointed: after a crash
        # the parks agent misses at most the last lateness window of heartbeats, a stall still shows.
        self._park_pending: list[tuple[int, str, bytes]] = []
        self._park_reorder: list[tuple[int, int, common_pb2.Envelope]] = []
        self._park_newest_ms = 0
        self._park_seq = 0
        app = faust.App(
            "heartbeat-ingest-monitors", broker=f"kafka://{settings.kafka_bootstrap_servers}", store="memory://",
            key_serializer="raw", value_serializer="raw", web_enabled=False, producer_acks=-1,
            topic_partitions=topics.DEFAULT_PARTITIONS, consumer_auto_offset_reset="earliest",
            # Tansu holds a join for the whole rebalance timeout; keep it short so a restart rejoins fast.
            broker_session_timeout=6.0, broker_rebalance_timeout=3.0, broker_heartbeat_interval=1.0,
        )
        self.app = app
        fleet_in = app.topic(topics.HEARTBEAT, topics.EVENTS, key_type=bytes, value_type=bytes)
        # Faust owns (creates) the repartition topic, so the parks agent is subscribed from the start.
        park_topic = app.topic(PARK_TOPIC, key_type=bytes, value_type=bytes, internal=True,
                               partitions=topics.DEFAULT_PARTITIONS)
        self.checkpoints = MonitorCheckpoints(store.client)

        @app.agent(fleet_in)
        async def vehicles(stream):
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                await self._restore_vehicles(batch)
                alerts, forwards = self._on_vehicle_batch(batch)
                await self.checkpoints.save("vehicle", {vid: self.vehicle_monitor.vehicles.snapshot_vehicle(vid)
                                                        for vid in self.vehicle_monitor.vehicles.pop_dirty()})
                # Source partitions catch up at different paces, so forwards wait in an event-time heap
                # until this agent's watermark passes them: the park topic then reads in time order.
                for item in forwards:
                    heapq.heappush(self._park_pending, item)
                watermark = self.vehicle_monitor.watermark_ms or 0
                while self._park_pending and self._park_pending[0][0] <= watermark:
                    _, park, value = heapq.heappop(self._park_pending)
                    # force: send now, in this order; faust would otherwise attach each message to its
                    # source offset and publish at that offset's commit, regrouped by source partition.
                    await park_topic.send(key=park.encode(), value=value, force=True)
                    self.forwarded += 1
                await self._emit(alerts)
                self.vehicle_records += len(batch)

        @app.agent(park_topic)
        async def parks(stream):
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                await self._restore_parks(batch)
                await self._emit(self._on_park_batch(self._reorder(batch)))
                await self.checkpoints.save("park", {park: self.park_monitor.parks.snapshot_park(park)
                                                     for park in self.park_monitor.parks.pop_dirty()})
                self.park_records += len(batch)

        if clock is ClockMode.LIVE:
            @app.timer(1.0)
            async def live_clock():
                now = wall_ms()
                await self._emit(self.vehicle_monitor.tick(now) + self.park_monitor.tick(now))

    async def _restore_vehicles(self, batch: list) -> None:
        """Import saved state of vehicles this worker has not seen yet, before their first message."""
        new = {str(event.key, "utf-8") for event in batch if event.key} - self._seen_vehicles
        if new:
            self._seen_vehicles |= new
            for vid, saved in (await self.checkpoints.load("vehicle", new)).items():
                self.vehicle_monitor.vehicles.restore_vehicle(vid, saved)

    async def _restore_parks(self, batch: list) -> None:
        new = {str(event.key, "utf-8") for event in batch if event.key} - self._seen_parks
        if new:
            self._seen_parks |= new
            for park, saved in (await self.checkpoints.load("park", new)).items():
                self.park_monitor.parks.restore_park(park, saved)

    def _reorder(self, batch: list) -> list[common_pb2.Envelope]:
        """Release the park topic's messages in event-time order, PARK_REORDER_MS behind the newest.

        The vehicles agent sends them in order, yet they were seen landing up to a minute of event
        time out of order on the topic (faust's producer path), and a park's stall count needs
        its vehicles' heartbeats in time order.
        """
        for event in batch:
            env = self._decode(event.value)
            if env is not None:
                self._park_newest_ms = max(self._park_newest_ms, env.event_time_ms)
                heapq.heappush(self._park_reorder, (env.event_time_ms, self._park_seq, env))
                self._park_seq += 1
        released = []
        while self._park_reorder and self._park_reorder[0][0] <= self._park_newest_ms - PARK_REORDER_MS:
            released.append(heapq.heappop(self._park_reorder)[2])
        return released

    def _heartbeat_partitions_with_data(self) -> set[int]:
        """Assigned heartbeat partitions that hold (or may hold) records: an empty one never
        speaks, so it must not hold event time back; one not fetched yet must."""
        partitions = set()
        for tp in self.app.consumer.assignment():
            if tp.topic == topics.HEARTBEAT and self.app.consumer.highwater(tp) != 0:
                partitions.add(tp.partition)
        return partitions

    def _decode_fleet(self, topic: str, key: bytes | None, value: bytes | None) -> common_pb2.Envelope | None:
        """The fleet record's Envelope by ingest's own decode path, or None (counted) for what it refuses."""
        try:
            return codec.decode(topic, key, value)
        except codec.Rejected:
            self.skipped += 1
            return None

    def _decode(self, value: bytes) -> common_pb2.Envelope | None:
        """An Envelope of the park topic (forwarded by the vehicles agent after `_decode_fleet`)."""
        env = common_pb2.Envelope()
        try:
            env.ParseFromString(value)
        except Exception:  # noqa: BLE001 - undecodable bytes are the ingest consumer's dead letter
            self.skipped += 1
            return None
        return env

    def _on_vehicle_batch(self, batch: list) -> tuple[list[alerts_pb2.Alert], list[tuple[int, str, bytes]]]:
        monitor, alerts, forwards = self.vehicle_monitor, [], []
        live_ms = wall_ms() if self.clock is ClockMode.LIVE else None
        for event in batch:
            value = event.value
            env = self._decode_fleet(event.message.topic, event.key, value)
            if env is None:
                continue
            if event.message.topic == topics.HEARTBEAT:  # the 1 Hz line is the clock; events are sparse
                self.vehicle_sources.observe(event.message.partition, env.event_time_ms)
            vid = env.vehicle_id
            try:
                alerts += monitor.on_envelope(env, live_ms)
            except MonitorInputError:
                self.skipped += 1
                continue
            scope = monitor.vehicle_scope(vid)
            kind = env.WhichOneof("payload")
            if scope and (kind == "heartbeat" or env.event.kind == common_pb2.EVENT_KIND_ERROR_CODE):
                forwards.append((env.event_time_ms, scope[0], value))
        watermark = self._vehicle_watermark()
        if watermark is not None:
            alerts += monitor.advance(watermark)
        return alerts, forwards

    def _vehicle_watermark(self) -> int | None:
        """Event time of the heartbeat partitions minus the allowed lateness; None until every
        assigned heartbeat partition holding data has been observed (one not read yet may hold the
        oldest data of all)."""
        newest = self.vehicle_sources.newest
        if not newest or not self._heartbeat_partitions_with_data() <= newest.keys():
            return None
        return self.vehicle_sources.value(lagging=set()) - self.allowed_lateness_ms

    def _on_park_batch(self, envelopes: list[common_pb2.Envelope]) -> list[alerts_pb2.Alert]:
        monitor, alerts = self.park_monitor, []
        live_ms = wall_ms() if self.clock is ClockMode.LIVE else None
        for env in envelopes:
            try:
                alerts += monitor.on_envelope(env, live_ms)
            except MonitorInputError:
                self.skipped += 1
        return alerts

    async def _emit(self, alerts: list[alerts_pb2.Alert]) -> None:
        if not alerts:
            return
        changed = await self.store.merge(alerts)
        await self.bus.send_many([(topics.ALERTS, a.alert_id.encode(), a.SerializeToString()) for a in changed])
        self.alerts_published += len(changed)

    async def start(self) -> None:
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()
