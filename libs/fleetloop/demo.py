"""`make demo`: the embedded stack, a simulated fleet through every service, and the reports."""

from __future__ import annotations

import asyncio
import time

import typer

from fleetloop import tables
from fleetloop.config import Settings
from fleetloop.embedded import EmbeddedStack
from fleetloop.report import (
    alerts_report,
    cases_report,
    fleet_report,
    metrics_table,
    miner_report,
    solutions_report,
)
from fleetloop.runtime import Host
from fleetloop.v1 import metrics_pb2

DEMO_QUERY = "agent.pedestrian & junction.signalized & !mode.manual"


async def run_demo(settings: Settings, vehicles: int, hours: float, seed: int) -> None:
    from fleetloop.feed import spawn_sim
    from fleetloop.sim import GroundTruth

    started = time.monotonic()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedStack.start(settings) as stack:
        typer.echo(f"embedded stack: Kafka (Tansu) {stack.settings.kafka_bootstrap_servers}, "
                   f"Redis {stack.settings.redis_url}, ClickHouse {stack.settings.clickhouse_url}")
        host = Host(stack.settings, grpc=False)
        await host.start()
        typer.echo(f"services: {', '.join(host.names)}")
        truth_path = settings.data_dir / "ground_truth.jsonl"
        typer.echo(f"simulating {vehicles} vehicles x {hours:g} h (seed {seed}) ...")
        sim = spawn_sim(stack.settings, vehicles, hours, seed, truth_path)
        while not truth_path.exists():  # written once everything is published
            if sim.poll() is not None:
                await host.stop()
                raise typer.Exit(sim.returncode or 1)
            await asyncio.sleep(0.5)
        await host.wait_caught_up()
        sim.terminate()  # the vehicles stop answering upload commands
        sim.wait(timeout=30)
        ingest = host.services["heartbeat-ingest"]
        await ingest.rollup()
        warehouse = host.warehouse
        typer.echo("\n== Fleet report (ClickHouse ADS) ==")
        typer.echo(fleet_report(warehouse))
        truth = GroundTruth.read_jsonl(truth_path)
        truth_km = sum(r.distance_m for r in truth.mileage) / 1000
        seen_km = warehouse.query_rows(f"SELECT sum(distance_m) / 1000 FROM {tables.FLEET_DAY}")[0][0]
        typer.echo(f"\nkm in ClickHouse {seen_km:,.2f} vs simulator ground truth {truth_km:,.2f}")
        alerts = await ingest.alerts.newest(10_000)
        typer.echo(f"\n== Alerts ({len(alerts)} incidents; fleet.alerts.v1, lifecycle in Redis) ==")
        typer.echo(alerts_report(alerts))
        typer.echo("\n== MPS / MPD / MPI (triggers from trigger-engine, mileage from heartbeat-ingest) ==")
        for group_by in ("", "park", "road_type"):
            response = await ingest.metrics_api.metrics(metrics_pb2.GetMetricsRequest(group_by=group_by))
            typer.echo(("\n" if group_by else "") + metrics_table(response, group_by))
        if "case-assembler" in host.services:
            typer.echo("\n== Cases (case-assembler) ==")
            online_s = sum(u.online_s for u in await host.services["case-assembler"].state.all_usage())
            typer.echo(cases_report(warehouse, online_s))
        if "miner" in host.services:
            typer.echo("\n== Mining the per-second labels (label-indexer, miner) ==")
            typer.echo(miner_report(host.services["miner"], DEMO_QUERY))
        if "replay-validator" in host.services:
            typer.echo("\n== Replay (replay-validator: replay-marked cases searched again, baseline vs solution) ==")
            typer.echo(solutions_report(warehouse))
        dead = sum(c.refused for s in host.services.values() for c in s.consumers)
        typer.echo(f"messages dead-lettered: {dead}")
        await host.stop()
    typer.echo(f"\ndemo finished in {time.monotonic() - started:.0f} s")
