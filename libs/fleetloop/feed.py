"""Publishing simulated (or replayed) fleet seconds to Kafka, as fast as possible or paced to
a time acceleration. The pacing is the only place wall time meets event time: messages keep
their event times whatever the pace."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleetloop.bus import Bus
from fleetloop.config import Settings
from fleetloop.v1 import common_pb2


class FleetSecond(Protocol):
    t_ms: int
    messages: list[tuple[str, common_pb2.Envelope]]


@dataclass
class FeedStats:
    seconds: int = 0
    messages: int = 0
    bytes: int = 0
    wall_s: float = 0.0


async def publish_seconds(bus: Bus, seconds: Iterable[FleetSecond], speed: float | None = None,
                          flush_every: int = 10) -> FeedStats:
    """Send each second's messages keyed by vehicle id.

    `speed` = None sends as fast as the broker takes them; `speed` = 60 plays one simulated
    minute per wall second. Sends are pipelined and acknowledged every `flush_every` seconds.
    """
    stats = FeedStats()
    started = time.monotonic()
    first_ms: int | None = None
    pending: list[tuple[str, bytes, bytes]] = []
    for second in seconds:
        if first_ms is None:
            first_ms = second.t_ms
        for topic, envelope in second.messages:
            value = envelope.SerializeToString()
            pending.append((topic, envelope.vehicle_id.encode(), value))
            stats.bytes += len(value)
        stats.seconds += 1
        if stats.seconds % flush_every == 0:
            stats.messages += await bus.send_many(pending)
            pending = []
            if speed:
                ahead_s = (second.t_ms - first_ms) / 1000.0 / speed - (time.monotonic() - started)
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s)
    stats.messages += await bus.send_many(pending)
    stats.wall_s = time.monotonic() - started
    return stats


def spawn_sim(settings: Settings, vehicles: int, hours: float, seed: int, truth: Path) -> subprocess.Popen:
    """The simulated fleet (`fleetloop sim`) as a child process, so it drives the broker from the second core."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "FLEETLOOP_DATA_DIR": str(settings.data_dir), "FLEETLOOP_OBJECT_STORE_URL": settings.object_store_url}
    return subprocess.Popen(
        [sys.executable, "-m", "fleetloop.cli", "sim", "--vehicles", str(vehicles), "--hours", str(hours),
         "--seed", str(seed), "--truth", str(truth)], env=env)
