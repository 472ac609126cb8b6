"""The one gRPC server helper: every fleetloop service serves health checking and reflection
beside its own services, so grpcurl, grpc_health_probe and Kubernetes probes work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


class PortInUse(OSError):
    """The gRPC address could not be bound: another process holds it. Restarting will not help."""


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
    port = _bind(server, address)
    await server.start()
    for name in [*names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def start_not_serving(address: str) -> grpc.aio.Server:
    """A health-only server on `address` that answers NOT_SERVING: what a supervisor keeps on a
    service's port while the service waits to be restarted, so probes see it down, not gone."""
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _bind(server, address)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    return server


def _bind(server: grpc.aio.Server, address: str) -> int:
    try:
        return server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc reports a taken port as RuntimeError("Failed to bind ...")
        raise PortInUse(f"cannot bind gRPC address {address}: {exc}") from exc
