"""miner wiring: MinerService on gRPC (with health and reflection) over the label tables.

The miner consumes no topic; it reads what label-indexer writes (dwd_label_second and the
hourly bitmap index), the cases table (case-assembler) and dwd_vehicle_second (heartbeat-ingest).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import yaml
from fleetloop.bus import Bus
from fleetloop.config import Settings
from fleetloop.grpc_server import Servicer, start_server
from fleetloop.labels import load_taxonomy
from fleetloop.v1 import miner_pb2_grpc
from fleetloop.warehouse import Warehouse

from services.miner.api import make_api

NAME = "miner"
CONFIG = Path(__file__).with_name("miner.yaml")


class MinerService:
    """The service: no consumer (`consumers` is empty); `api` is the servicer."""

    name = NAME

    def __init__(self, settings: Settings, warehouse: Warehouse, bus: Bus) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.bus = bus
        self.taxonomy = load_taxonomy()
        self.api = make_api(warehouse, self.taxonomy, yaml.safe_load(CONFIG.read_text()))
        self.consumers: list = []
        self.grpc_port = 0

    def migrate(self) -> None:
        """The miner owns no table: it reads label-indexer's (and tolerates their absence)."""

    async def run(self, stop: asyncio.Event, serve_grpc: bool = True) -> None:
        if not serve_grpc:
            await stop.wait()
            return
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        server, self.grpc_port = await start_server(
            [Servicer(miner_pb2_grpc.add_MinerServiceServicer_to_server, self.api, "fleetloop.v1.MinerService")],
            address)
        try:
            await stop.wait()
        finally:
            await server.stop(grace=1)

    def report(self, expression: str) -> str:
        """What `make demo` prints: the clips of one mining query and the problem scenes."""
        from fleetloop.query import MineRequest
        from fleetloop.report import table
        from fleetloop.v1 import miner_pb2

        result = self.api.miner.mine(MineRequest(expression, limit=10_000))
        clips = sorted(result.clips, key=lambda c: c.end_ms - c.start_ms, reverse=True)
        lines = [f"mine {expression!r}: {len(result.clips)} clips, "
                 f"{sum(c.matched_seconds for c in result.clips):,} matching seconds ({result.plan})",
                 table(["vehicle", "start (UTC)", "s", "cases"], [
                     [c.vehicle_id, time.strftime("%H:%M:%S", time.gmtime(c.start_ms / 1000)),
                      (c.end_ms - c.start_ms) // 1000, ",".join(x[:8] for x in c.case_ids)] for c in clips[:8]])]
        clusters = self.api.clusters(miner_pb2.ClustersRequest())
        lines.append(f"\nproblem scenes: {clusters.problems} problems from {clusters.source}, "
                     f"{len(clusters.scenes)} clusters (silhouette {clusters.silhouette:.2f})")
        lines.append(table(["scene", "size", "dominant trigger", "similar seconds in the fleet", "mining expression"], [
            [s.name, s.size, s.dominant_trigger, f"{s.similar_seconds:,}", s.expression] for s in clusters.scenes]))
        return "\n".join(lines)
