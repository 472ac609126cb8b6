"""The `fleetloop` command line: demo, up, serve, sim and the query commands."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import typer

from fleetloop.commands.rpc import settings_from_env

app = typer.Typer(help="fleetloop: the data closed loop for an autonomous-vehicle fleet", no_args_is_help=True)


def _print_version(wanted: bool) -> None:
    """`--version`: the installed package's version, then exit."""
    if wanted:
        from importlib.metadata import version

        typer.echo(f"fleetloop {version('fleetloop')}")
        raise typer.Exit()


@app.callback()
def _main(_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                        help="print the version and exit")) -> None:
    """fleetloop: the data closed loop for an autonomous-vehicle fleet."""


def _mount_subcommands() -> None:
    """Command groups of other parts of the loop; each module holds one typer app."""
    from fleetloop.commands import mine
    from fleetloop.commands.alerts import app as alerts_app
    from fleetloop.commands.cases import app as cases_app
    from fleetloop.commands.fleet import app as fleet_app
    from fleetloop.commands.metrics import app as metrics_app
    from fleetloop.commands.replay import app as replay_app

    app.add_typer(fleet_app, name="fleet")
    app.add_typer(metrics_app, name="metrics")
    app.add_typer(cases_app, name="cases")
    app.add_typer(alerts_app, name="alerts")
    app.command("mine")(mine.mine)  # `fleetloop mine "rain & night"`: a bare expression needs a command
    app.add_typer(mine.app, name="mining")
    app.add_typer(replay_app, name="replay")


_mount_subcommands()

DEMO_START_MS = 1_780_293_600_000  # 2026-06-01T06:00:00Z: a fleet morning


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def demo(vehicles: int = typer.Option(50, help="simulated vehicles"),
         hours: float = typer.Option(1.0, help="simulated hours of fleet operation"),
         seed: int = typer.Option(7, help="simulator seed (same seed, same fleet)"),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Start the embedded stack, simulate a fleet through every service, print the reports."""
    from fleetloop.demo import run_demo

    _logging(verbose)
    settings = settings_from_env()
    data_dir = settings.data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = settings_from_env({**os.environ, "FLEETLOOP_DATA_DIR": str(data_dir)})
    asyncio.run(run_demo(settings, vehicles=vehicles, hours=hours, seed=seed))


@app.command()
def up(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run every service in this process on the embedded stack until Ctrl-C."""
    from fleetloop.embedded import EmbeddedStack
    from fleetloop.runtime import SERVICES, Host

    _logging(verbose)
    settings = settings_from_env()

    async def main() -> None:
        with EmbeddedStack.start(settings) as stack:
            host = Host(stack.settings)
            await host.start()
            endpoints = {"KAFKA_BOOTSTRAP_SERVERS": stack.settings.kafka_bootstrap_servers,
                         "REDIS_URL": stack.settings.redis_url, "CLICKHOUSE_URL": stack.settings.clickhouse_url,
                         "FLEET_GRPC": f"{settings.grpc_host}:{SERVICES['heartbeat-ingest'][1]}",
                         "CASES_GRPC": f"{settings.grpc_host}:{SERVICES['case-assembler'][1]}",
                         "MINER_GRPC": f"{settings.grpc_host}:{SERVICES['miner'][1]}",
                         "REPLAY_GRPC": f"{settings.grpc_host}:{SERVICES['replay-validator'][1]}"}
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            (settings.data_dir / "endpoints.json").write_text(json.dumps(endpoints, indent=2))
            typer.echo("fleetloop is up:")
            for name, value in endpoints.items():
                typer.echo(f"  {name}={value}")
            typer.echo("In another shell: `fleetloop sim` publishes a fleet, `fleetloop fleet summary` queries it.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            failed = await _until_stop_or_failure(stop, host.tasks)
            if failed is None and stack.owns_broker:
                await _drain(host)
            await host.stop()
            if failed is not None:
                typer.echo(f"fleetloop: service {failed.get_name()} failed: {failed.exception()}", err=True)
                raise typer.Exit(1)

    asyncio.run(main())


DRAIN_S = 120.0  # how long a graceful stop of `up` waits for the services to empty the embedded broker


async def _drain(host) -> None:
    """On a graceful stop, let the services consume what the memory-only embedded broker still holds
    (it is gone once the broker stops), up to DRAIN_S; a second Ctrl-C stops at once."""
    typer.echo(f"draining: the services consume what the embedded broker holds (up to {DRAIN_S:.0f} s; "
               "Ctrl-C again to stop now)", err=True)
    drain = asyncio.create_task(host.wait_caught_up(poll_s=0.25, settle_polls=4))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, drain.cancel)
    try:
        await asyncio.wait_for(drain, timeout=DRAIN_S)
        typer.echo("drained", err=True)
    except (TimeoutError, asyncio.CancelledError):
        typer.echo("stopping with records left in the embedded broker", err=True)


async def _until_stop_or_failure(stop: asyncio.Event, tasks: list[asyncio.Task]) -> asyncio.Task | None:
    """Wait for `stop` or for a service task to end; returns the task that ended, None on stop.

    A service task only ends early when it failed (e.g. its gRPC port is taken), and the host
    must not go on claiming to be up without it.
    """
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    ended = [task for task in tasks if task in done]
    return ended[0] if ended else None


@app.command()
def serve(service: str = typer.Argument(..., help="service name, e.g. heartbeat-ingest"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run one service in this process (cluster mode: URLs from the environment), restarted on failure."""
    from fleetloop.runtime import SERVICES, Host

    _logging(verbose)
    settings = settings_from_env()
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    if "embedded" in (settings.kafka_bootstrap_servers, settings.redis_url):
        raise typer.BadParameter("serve needs KAFKA_BOOTSTRAP_SERVERS and REDIS_URL (use `fleetloop up` locally)")

    async def main() -> None:
        host = Host(settings, [service], default_ports="FLEETLOOP_GRPC_PORT" not in os.environ, client_id=service)
        await host.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        failed = await _until_stop_or_failure(stop, host.tasks)
        await host.stop()
        if failed is not None:
            typer.echo(f"fleetloop: service {service} failed: {failed.exception()}", err=True)
            raise typer.Exit(1)

    asyncio.run(main())


@app.command()
def sim(vehicles: int = typer.Option(50), hours: float = typer.Option(1.0), seed: int = typer.Option(7),
        start_ms: int = typer.Option(DEMO_START_MS, help="simulation start, epoch ms UTC"),
        speed: float = typer.Option(0.0, help="time acceleration (60 = a minute per second); 0 = as fast as possible"),
        truth: Path = typer.Option(None, help="write the injected incidents and mileage ground truth here (JSONL)"),
        incidents_per_vehicle_hour: float = typer.Option(0.8),
        serve_uploads: bool = typer.Option(True, help="keep each vehicle's ring buffer and answer upload commands "
                                                      "until stopped (SIGTERM/Ctrl-C)")) -> None:
    """Simulate a fleet: publish heartbeats, poses, events and perception to Kafka and, like real
    vehicles, answer the case-assembler's upload commands from their ring buffers."""
    from fleetloop.bus import Bus, ensure_topics
    from fleetloop.commands.rpc import endpoint
    from fleetloop.feed import publish_seconds
    from fleetloop.sim import FleetSimulator, SimConfig
    from fleetloop.vehicle import FleetVehicles, load_vehicle_params

    bootstrap = endpoint("KAFKA_BOOTSTRAP_SERVERS", env_name="KAFKA_BOOTSTRAP_SERVERS")
    settings = settings_from_env({**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    simulator = FleetSimulator(SimConfig(vehicles=vehicles, start_ms=start_ms, duration_s=int(hours * 3600),
                                         seed=seed, incidents_per_vehicle_hour=incidents_per_vehicle_hour))

    async def main() -> None:
        await ensure_topics(bootstrap)
        bus = Bus(bootstrap, client_id="fleet-sim")
        await bus.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        seconds = simulator.seconds()
        fleet = None
        if serve_uploads:
            # The buffer holds the whole run, so a case cut late in an accelerated run still finds its window.
            params = load_vehicle_params().model_copy(update={"ring_capacity_s": hours * 3600 + 60})
            fleet = FleetVehicles(settings, bus, params)
            seconds = fleet.pass_through(seconds)
            uploads = asyncio.create_task(fleet.run(stop))
        try:
            stats = await publish_seconds(bus, seconds, speed=speed or None)
            typer.echo(f"published {stats.messages:,} messages ({stats.bytes / 1e6:.1f} MB) for {vehicles} vehicles "
                       f"x {stats.seconds:,} s in {stats.wall_s:.1f} s wall")
            if truth:
                simulator.ground_truth.write_jsonl(truth)
            if fleet is not None:
                typer.echo("answering upload commands until stopped ...")
                await uploads
                typer.echo(f"vehicles answered {fleet.stats.requests} upload requests, "
                           f"wrote {fleet.stats.bytes_written / 1e6:.1f} MB of MCAP")
        finally:
            await bus.stop()

    asyncio.run(main())


if __name__ == "__main__":
    app()
