"""Configuration: environment variables with embedded defaults, read once at the edge.

Logic never reads the environment; `Settings.from_env()` is called by the CLI and by
service entry points, and the resulting object is passed in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

EMBEDDED = "embedded"


@dataclass(frozen=True)
class Settings:
    """Where the parts of the loop live, plus service-wide knobs.

    `kafka_bootstrap_servers`, `redis_url` = "embedded" start local children; the default
    `clickhouse_url` is an embedded chDB database under `data_dir`.
    """

    kafka_bootstrap_servers: str = EMBEDDED
    clickhouse_url: str = ""
    redis_url: str = EMBEDDED
    data_dir: Path = Path(".fleetloop")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    consumer_batch_max: int = 5000
    consumer_poll_ms: int = 200
    monitor_clock: str = "event"
    object_store_url: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("FLEETLOOP_DATA_DIR", ".fleetloop"))
        return cls(
            kafka_bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", EMBEDDED),
            clickhouse_url=env.get("CLICKHOUSE_URL", f"chdb://{(data_dir / 'warehouse').resolve()}"),
            redis_url=env.get("REDIS_URL", EMBEDDED),
            data_dir=data_dir,
            grpc_host=env.get("FLEETLOOP_GRPC_HOST", "127.0.0.1"),
            grpc_port=int(env.get("FLEETLOOP_GRPC_PORT", "50051")),
            consumer_batch_max=int(env.get("FLEETLOOP_CONSUMER_BATCH_MAX", "5000")),
            consumer_poll_ms=int(env.get("FLEETLOOP_CONSUMER_POLL_MS", "200")),
            # "event": monitors follow data time (simulation, replay); "live": wall clock moves them through silence.
            monitor_clock=env.get("FLEETLOOP_MONITOR_CLOCK", "event"),
            object_store_url=env.get("FLEETLOOP_OBJECT_STORE_URL", (data_dir / "objects").resolve().as_uri()),
        )

    def with_urls(self, *, kafka: str | None = None, clickhouse: str | None = None,
                  redis: str | None = None) -> Settings:
        """A copy with resolved URLs (the embedded launcher fills in real addresses)."""
        return replace(
            self,
            kafka_bootstrap_servers=kafka or self.kafka_bootstrap_servers,
            clickhouse_url=clickhouse or self.clickhouse_url,
            redis_url=redis or self.redis_url,
        )
