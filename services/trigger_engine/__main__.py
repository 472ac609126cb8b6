"""`python -m services.trigger_engine`: run one trigger-engine process, exactly as
`fleetloop serve trigger-engine` does (URLs from the environment; SIGTERM stops it cleanly)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from fleetloop.bus import Bus, ensure_topics
from fleetloop.config import Settings
from fleetloop.warehouse import Warehouse

from services.trigger_engine.service import NAME, TriggerEngine


async def main(settings: Settings) -> None:
    await ensure_topics(settings.kafka_bootstrap_servers)
    bus = Bus(settings.kafka_bootstrap_servers, client_id=NAME)
    await bus.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await TriggerEngine(settings, Warehouse(settings.clickhouse_url), bus).run(stop)
    finally:
        await bus.stop()


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("FLEETLOOP_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env_settings = Settings.from_env()
    if env_settings.kafka_bootstrap_servers == "embedded":
        raise SystemExit("set KAFKA_BOOTSTRAP_SERVERS (use `fleetloop up` locally)")
    asyncio.run(main(env_settings))
