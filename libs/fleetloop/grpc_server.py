"""The one gRPC server helper: every fleetloop service serves health checking and reflection
beside its own services, so grpcurl, grpc_health_probe and Kubernetes probes work.

Health follows the service's consumers (`watch`): NOT_SERVING while any of them is stalled on a
dependency (Redis, ClickHouse, the broker; `BatchConsumer.stalled`), SERVING again once it resumes.
"""

from __future__ import annotations

import asyncio
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


HEALTH_POLL_S = 0.5


async def start_server(servicers: Sequence[Servicer], address: str,
                       watch: Sequence[Any] = ()) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on `address` (port 0 picks a free one); returns it and its port.

    `watch`: objects with a `stalled` attribute (the service's consumers) that health follows."""
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
    if watch:
        follower = asyncio.create_task(_follow(health_servicer, [*names, ""], watch), name=f"health {address}")
        stop = server.stop

        async def stop_and_unfollow(grace: float | None) -> None:
            follower.cancel()
            await stop(grace)

        server.stop = stop_and_unfollow
    return server, port


async def _follow(health_servicer: Any, names: Sequence[str], watch: Sequence[Any]) -> None:
    serving = True
    while True:
        await asyncio.sleep(HEALTH_POLL_S)
        now = not any(getattr(w, "stalled", None) for w in watch)
        if now != serving:
            serving = now
            status = health_pb2.HealthCheckResponse.SERVING if now else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in names:
                await health_servicer.set(name, status)


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
