"""The one gRPC server helper: every fleetloop service serves health checking and reflection
beside its own services, so grpcurl, grpc_health_probe and Kubernetes probes work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


@dataclass(frozen=True)
class Servicer:
    """One gRPC service to mount: its generated `add_…_to_server`, the instance, its full name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    instance: Any
    full_name: str


async def start_server(servicers: Sequence[Servicer], address: str) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on `address` (port 0 picks a free one); returns it and its port."""
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for servicer in servicers:
        servicer.add_to_server(servicer.instance, server)
    names = [s.full_name for s in servicers]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    await server.start()
    for name in [*names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
