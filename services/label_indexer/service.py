"""label-indexer wiring: a consumer over pose, perception and heartbeat that joins them per
vehicle-second (`SecondJoiner`), labels due seconds in batches (`label_seconds`), writes the
label table, and seals each finished hour into the bitmap index.

Delivery: offsets are committed only up to the oldest record whose second is still pending in
memory (the consumer's `commit_limit` hook is the joiner's `held_offsets`; `align`, its `ahead`),
so a crash replays every part of every unlabelled second. Replay can also bring back single
parts of seconds already labelled; an incomplete second is written only when no stored row was
labelled from more parts (`data.no_*` bits), so a replay never replaces a complete row with a
partial one. Complete seconds are always written; re-writing the same second is idempotent
(ReplacingMergeTree keyed by vehicle and second).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from fleetloop import codec, tables, topics
from fleetloop.bus import BatchConsumer, Bus, FleetClock, Record, Refusal
from fleetloop.config import ConfigModel, Settings, load_yaml
from fleetloop.labels import LABEL_TABLE, Taxonomy, load_taxonomy
from fleetloop.labels.batch import SecondParts, label_seconds
from fleetloop.query.index import HOUR_COLUMNS, HOUR_MS, build_hour_index, store_hour_index, unsealed_hour_row
from fleetloop.warehouse import Warehouse
from pydantic import Field

from services.label_indexer.join import Entry, SecondJoiner, TooLate

log = logging.getLogger(__name__)

NAME = "label-indexer"
GROUP_ID = "label-indexer"
MIGRATIONS = Path(__file__).parent / "migrations"
CONFIG = Path(__file__).with_name("indexer.yaml")


class IndexerConfig(ConfigModel):
    """services/label_indexer/indexer.yaml (the reasons for each value are there)."""

    lateness_s: float = Field(ge=0)
    retain_s: float = Field(ge=0)
    align_s: float = Field(gt=0)
    seal_after_s: float = Field(ge=0)


PAYLOAD_BY_TOPIC = {topics.HEARTBEAT: "heartbeat", topics.POSE: "pose", topics.PERCEPTION: "perception"}
INDEX_HOUR_TABLE = tables.INDEX_HOUR.name
INDEX_BITMAP_TABLE = tables.INDEX_BITMAP.name
_DATA_TAGS = {"heartbeat": "data.no_heartbeat", "pose": "data.no_pose", "perception": "data.no_perception"}


class LabelIndexer:
    """The service; `handle` is the consumer's handler and the tests' entry point."""

    name = NAME

    def __init__(self, settings: Settings, warehouse: Warehouse, bus: Bus,
                 taxonomy: Taxonomy | None = None) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.bus = bus
        self.taxonomy = taxonomy or load_taxonomy()
        config = load_yaml(CONFIG, IndexerConfig)
        self.joiner = SecondJoiner(lateness_ms=int(config.lateness_s * 1000),
                                   retain_ms=int(config.retain_s * 1000), align_ms=int(config.align_s * 1000))
        self.seal_after_ms = int(config.seal_after_s * 1000)
        self.unsealed_hours: set[int] = set()
        self.rows_written = 0
        self.clock = FleetClock()  # per-vehicle plausibility: a forged clock must not time out the fleet
        self.consumer = BatchConsumer(
            commit_limit=self.joiner.held_offsets, align=self.joiner.ahead,
            bootstrap=settings.kafka_bootstrap_servers, group_id=GROUP_ID,
            topic_names=list(PAYLOAD_BY_TOPIC), handler=self.handle, bus=bus, service=NAME,
            batch_max=settings.consumer_batch_max, poll_ms=settings.consumer_poll_ms,
        )
        self.consumers = [self.consumer]
        self.grpc_port = 0
        self._data_bits = {kind: self.taxonomy.tag(name).bit for kind, name in _DATA_TAGS.items()}

    def migrate(self) -> None:
        self.warehouse.migrate("label_indexer", MIGRATIONS)
        rows = self.warehouse.query_rows(
            f"SELECT toUnixTimestamp(hour) * 1000 FROM {INDEX_HOUR_TABLE} FINAL WHERE sealed = 0")
        self.unsealed_hours = {int(r[0]) for r in rows}

    async def handle(self, records: list[Record]) -> list[Refusal]:
        """Validate and join the records, label every due second, write rows and seal hours."""
        refusals: list[Refusal] = []
        self.joiner.lagging = self.consumer.lagging
        for record in records:
            payload = PAYLOAD_BY_TOPIC[record.topic]
            try:
                env = codec.decode(record.topic, record.key, record.value)
                self.clock.check(env.vehicle_id, env.event_time_ms, record.timestamp_ms)
                codec.check_watermark(env.event_time_ms, self.joiner.watermark_ms)
                self.joiner.add(payload, env.vehicle_id, env.event_time_ms, getattr(env, payload),
                                (record.topic, record.partition), record.offset)
                self.clock.observe(env.vehicle_id, env.event_time_ms, record.timestamp_ms)
            except codec.Rejected as rejected:
                refusals.append(Refusal(record, rejected.reason, rejected.detail))
            except TooLate as late:
                refusals.append(Refusal(record, "too_late", str(late)))
        self.clock.advance()
        due = self.joiner.take_due()
        if due:
            await asyncio.get_running_loop().run_in_executor(None, self._write, due)
        await asyncio.get_running_loop().run_in_executor(None, self._seal_finished_hours)
        return refusals

    # -- writing labels (runs off the event loop; the warehouse serialises its calls) ----------
    def _write(self, due: list[Entry]) -> None:
        partial = [e for e in due if not e.complete]
        keep = set(map(id, due))
        if partial:
            keep -= {id(e) for e in self._superseded(partial)}
        entries = [e for e in due if id(e) in keep]
        if not entries:
            return
        seconds = [SecondParts(e.vehicle_id, e.second_ms, e.parts.get("heartbeat"), e.parts.get("pose"),
                               e.parts.get("perception")) for e in entries]
        columns = label_seconds(seconds, self.taxonomy)
        self._mark_unsealed({int(ts - ts % HOUR_MS) for ts in columns.ts_ms})
        self.warehouse.insert_arrow(LABEL_TABLE, columns.to_arrow(self.taxonomy))
        self.rows_written += len(columns)

    def _superseded(self, partial: list[Entry]) -> list[Entry]:
        """The partial entries whose stored row was labelled from a superset of their parts."""
        vehicles = sorted({e.vehicle_id for e in partial})
        lo = min(e.second_ms for e in partial)
        hi = max(e.second_ms for e in partial)
        words = sorted({bit // 64 for bit in self._data_bits.values()})
        stored = self.warehouse.query_rows(
            f"SELECT vehicle_id, toUnixTimestamp64Milli(ts), {', '.join(f't{w}' for w in words)} "
            f"FROM {LABEL_TABLE} FINAL WHERE vehicle_id IN {{v:Array(String)}} "
            "AND ts >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
            "AND ts <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC')",
            {"v": vehicles, "lo": lo, "hi": hi})
        stored_parts: dict[tuple[str, int], set[str]] = {}
        for vehicle, ts, *word_values in stored:
            tags = {w: int(v) for w, v in zip(words, word_values, strict=True)}
            stored_parts[(vehicle, int(ts))] = {kind for kind, bit in self._data_bits.items()
                                                if not (tags[bit // 64] >> (bit % 64)) & 1}
        return [e for e in partial
                if (e.vehicle_id, e.second_ms) in stored_parts
                and not stored_parts[(e.vehicle_id, e.second_ms)] <= set(e.parts)]

    # -- the hourly bitmap index ---------------------------------------------------------------
    def _mark_unsealed(self, hours: set[int]) -> None:
        """Record that these hours are being written (readers then scan them, not their bitmaps)."""
        new = sorted(hours - self.unsealed_hours)
        if new:
            version = time.time_ns()  # a version stamp for ReplacingMergeTree, not event logic
            self.warehouse.insert_rows(INDEX_HOUR_TABLE, [unsealed_hour_row(h, version) for h in new], HOUR_COLUMNS)
            self.unsealed_hours.update(new)

    def _seal_finished_hours(self) -> None:
        watermark = self.joiner.watermark_ms
        for hour_ms in sorted(self.unsealed_hours):
            if hour_ms + HOUR_MS + self.seal_after_ms <= watermark:
                self.seal_hour(hour_ms)

    def seal_hour(self, hour_ms: int) -> int:
        """Build and store the bitmaps of one hour from the label table; returns its row count."""
        words = range(self.taxonomy.word_count)
        table = self.warehouse.query_arrow(
            f"SELECT vehicle_id, toUnixTimestamp64Milli(ts) AS ts_ms, park, "
            f"{', '.join(f't{w}' for w in words)}, {', '.join(f'k{w}' for w in words)} "
            f"FROM {LABEL_TABLE} FINAL WHERE ts >= fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC') "
            "AND ts < fromUnixTimestamp64Milli({hi:Int64}, 'UTC')",
            {"lo": hour_ms, "hi": hour_ms + HOUR_MS})
        index = build_hour_index(
            hour_ms, table.column("vehicle_id").to_pylist(), table.column("ts_ms").to_numpy(),
            np.stack([table.column(f"t{w}").to_numpy() for w in words], axis=1).astype(np.uint64),
            np.stack([table.column(f"k{w}").to_numpy() for w in words], axis=1).astype(np.uint64),
            table.column("park").to_pylist())
        store_hour_index(self.warehouse, index, version=time.time_ns())
        self.unsealed_hours.discard(hour_ms)
        return table.num_rows

    async def settled(self) -> bool:
        """Nothing is pending beyond the consumers' lag (runtime.Service)."""
        return True

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.migrate)
        await self.consumer.run(stop)

