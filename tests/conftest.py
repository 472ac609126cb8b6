"""Shared fixtures: the real embedded parts (Tansu broker, redis-server, chDB) for integration
tests. One chDB engine per process, so the warehouse is session-wide and tests clean it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fleetloop.bus import Bus
from fleetloop.config import Settings
from fleetloop.embedded import start_broker, start_redis
from fleetloop.warehouse import Warehouse


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    path = tmp_path_factory.mktemp("chdb") / "warehouse"
    return Warehouse(f"chdb://{path}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(timeout=5)


@pytest.fixture
def broker():
    """A fresh broker per test: topics and groups never leak between tests."""
    proc, bootstrap = start_broker()
    yield bootstrap
    proc.kill()  # memory storage: nothing to flush, and open client connections must not delay teardown
    proc.wait(timeout=10)


@pytest.fixture
async def redis_client(redis_url):
    from fleetloop.state import connect

    client = connect(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def settings(broker: str, redis_url: str, warehouse: Warehouse, tmp_path: Path) -> Settings:
    return Settings(kafka_bootstrap_servers=broker, redis_url=redis_url, clickhouse_url=warehouse.url,
                    data_dir=tmp_path, grpc_port=0, consumer_batch_max=2000, consumer_poll_ms=100,
                    object_store_url=(tmp_path / "objects").as_uri())


def truncate_owned_tables(warehouse: Warehouse, prefixes: tuple[str, ...]) -> None:
    """Empty the tables whose names start with `prefixes` (views are left alone)."""
    for (name,) in warehouse.query_rows(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"):
        if name.startswith(prefixes):
            warehouse.command(f"TRUNCATE TABLE {name}")


async def wait_until(predicate, timeout_s: float = 60.0, poll_s: float = 0.1) -> None:
    """Poll an async predicate; a safety net against hangs, not a performance assertion."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(poll_s)


class Running:
    """An in-process service, `service_class(settings, warehouse, bus)` on its own producer (`bus`),
    from entering the block to leaving it; entering returns the service."""

    def __init__(self, service_class, settings: Settings, warehouse: Warehouse | None,
                 timeout_s: float = 60.0) -> None:
        self.service_class, self.settings, self.warehouse = service_class, settings, warehouse
        self.timeout_s = timeout_s  # of `caught_up`
        self.bus = Bus(settings.kafka_bootstrap_servers)

    async def __aenter__(self):
        await self.bus.start()
        self.service = self.service_class(self.settings, self.warehouse, self.bus)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(self.stop))
        return self.service

    def alive(self) -> None:
        """Raise the service's error if it ended, so a wait fails with it instead of timing out."""
        if self.task.done():
            self.task.result()

    async def caught_up(self) -> None:
        """Wait until the service's consumer has handled everything on its partitions (lag 0)."""
        async def done() -> bool:
            self.alive()
            return await self.service.consumer.lag() == 0
        await wait_until(done, timeout_s=self.timeout_s)

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await self.task
        await self.bus.stop()


def letter_bytes(letter) -> tuple[str, bytes, bytes]:
    """(source topic, key, SHA-256 of the original) of a DeadLetter, whether it carries the bytes or
    left them to its topic's keeper; a letter that carries them must match its own digest."""
    import hashlib

    if not letter.original_kept_by:
        assert hashlib.sha256(letter.original).digest() == letter.original_sha256, letter.reason
        assert len(letter.original) == letter.original_size, letter.reason
    else:
        assert letter.original == b"" and letter.original_kept_by != letter.service, letter.reason
    return letter.source_topic, letter.key, letter.original_sha256


def sent_bytes(topic: str, key: bytes, value: bytes) -> tuple[str, bytes, bytes]:
    """What `letter_bytes` gives for the letter of a record sent as (topic, key, value)."""
    import hashlib

    return topic, key, hashlib.sha256(value).digest()


async def assert_letters_point_at_their_records(bootstrap: str, letters) -> None:
    """Each DeadLetter's source topic/partition/offset holds exactly its `key` and its `original`
    bytes (or, for a letter that left them to the topic's keeper, bytes of its size and SHA-256)."""
    import hashlib

    from aiokafka import AIOKafkaConsumer, TopicPartition

    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        for letter in letters:
            tp = TopicPartition(letter.source_topic, letter.source_partition)
            reader.assign([tp])
            reader.seek(tp, letter.source_offset)
            records = (await reader.getmany(tp, timeout_ms=5000, max_records=1)).get(tp, [])
            assert [(r.offset, r.key or b"") for r in records] == [(letter.source_offset, letter.key)], letter.reason
            value = records[0].value or b""
            assert (hashlib.sha256(value).digest(), len(value)) == (letter.original_sha256, letter.original_size)
            if not letter.original_kept_by:
                assert value == letter.original, letter.reason
    finally:
        await reader.stop()
