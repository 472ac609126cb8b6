"""The one ClickHouse helper: a clickhouse-connect client for `http(s)://` servers and the
embedded `chdb://` engine, versioned migrations per owning service, batched idempotent inserts.

Idempotency is the tables' job (ReplacingMergeTree / AggregatingMergeTree keyed by the
natural key of a row), so a batch re-inserted after a crash collapses on merge or `FINAL`.
All calls of one `Warehouse` run on one worker thread: chDB is one engine per process and
clickhouse-connect clients are not shared across threads.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

# One chDB engine per process: every Warehouse on the same chdb path shares one client.
_CHDB_CLIENTS: dict[str, Any] = {}


@dataclass(frozen=True)
class Migration:
    service: str
    version: int
    name: str
    sql: str


def discover_migrations(service: str, folder: Path) -> list[Migration]:
    """Migrations of one service: files `NNN_name.sql` in `folder`, in version order."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} does not match NNN_name.sql")
        found.append(Migration(service, int(match.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions for {service}: {versions}")
    return found


def split_statements(sql: str) -> list[str]:
    """Split a migration file on `;` at line ends; comments (`-- …`) are dropped."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in re.split(r";\s*$", "\n".join(lines), flags=re.M) if s.strip()]


class Warehouse:
    """A ClickHouse database at `url` (`chdb:///path`, `http://host:8123/db`, …)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warehouse")
        self._client = self._executor.submit(self._connect).result()

    def _connect(self) -> Any:
        if self.url.startswith("chdb://"):
            if self.url not in _CHDB_CLIENTS:
                path = Path(self.url.removeprefix("chdb://"))
                path.mkdir(parents=True, exist_ok=True)
                _CHDB_CLIENTS[self.url] = clickhouse_connect.get_client(dsn=self.url)
            return _CHDB_CLIENTS[self.url]
        return clickhouse_connect.get_client(dsn=self.url)

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb://")

    # -- synchronous API (runs on the warehouse thread) ------------------------------
    def _run(self, fn, *args, **kwargs):
        return self._executor.submit(fn, *args, **kwargs).result()

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        return self._run(self._client.command, sql, parameters=parameters)

    def query_rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple]:
        return self._run(lambda: self._client.query(sql, parameters=parameters).result_rows)

    def query_dicts(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            result = self._client.query(sql, parameters=parameters)
            return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

        return self._run(run)

    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        return self._run(self._client.query_arrow, sql, parameters=parameters)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert a columnar batch; an empty batch is a no-op."""
        if data.num_rows:
            self._run(self._client.insert_arrow, table, data)

    def insert_rows(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]) -> None:
        """Insert row-wise data (small tables: cases, alerts); an empty list is a no-op."""
        if rows:
            self._run(self._client.insert, table, rows, column_names=list(column_names))

    # -- asyncio wrappers: services call these so the event loop never blocks ----------
    async def ainsert_arrow(self, table: str, data: pa.Table) -> None:
        if data.num_rows:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._client.insert_arrow, table, data)

    async def ainsert_rows(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]) -> None:
        if rows:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: self._client.insert(table, rows, column_names=list(column_names)))

    async def aquery_dicts(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(
            None, self.query_dicts, sql, parameters)

    async def acommand(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, self.command, sql, parameters)

    # -- migrations --------------------------------------------------------------------
    def migrate(self, service: str, folder: Path) -> list[int]:
        """Apply the service's pending migrations in order; returns the versions applied.

        The ledger `schema_migrations` records (service, version); a migration runs once.
        """
        self.command(
            "CREATE TABLE IF NOT EXISTS schema_migrations (service String, version UInt32, name String, "
            "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree ORDER BY (service, version)"
        )
        done = {row[0] for row in self.query_rows(
            "SELECT version FROM schema_migrations FINAL WHERE service = {s:String}", {"s": service})}
        applied = []
        for migration in discover_migrations(service, folder):
            if migration.version in done:
                continue
            for statement in split_statements(migration.sql):
                self.command(statement)
            self.insert_rows("schema_migrations", [(service, migration.version, migration.name)],
                             ["service", "version", "name"])
            log.info("applied migration %s/%s", service, migration.name)
            applied.append(migration.version)
        return applied

    def close(self) -> None:
        if not self.embedded:
            self._run(self._client.close)
        self._executor.shutdown(wait=True)
