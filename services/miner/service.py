"""miner wiring: MinerService on gRPC (with health and reflection) over the label tables.

The miner consumes no topic; it reads what label-indexer writes (dwd_label_second and the
hourly bitmap index), the cases table (case-assembler) and dwd_vehicle_second (heartbeat-ingest).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleetloop.bus import Bus
from fleetloop.config import Settings, load_yaml
from fleetloop.grpc_server import Servicer, start_server
from fleetloop.labels import load_taxonomy
from fleetloop.v1 import miner_pb2_grpc
from fleetloop.warehouse import Warehouse

from services.miner.api import MinerConfig, make_api

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
        self.api = make_api(warehouse, self.taxonomy, load_yaml(CONFIG, MinerConfig))
        self.consumers: list = []
        self.grpc_port = 0

    def migrate(self) -> None:
        """The miner owns no table: it reads label-indexer's (and tolerates their absence)."""

    async def settled(self) -> bool:
        """Nothing is pending beyond the consumers' lag (runtime.Service)."""
        return True

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
