"""The table registry matches the owners' migrations; the hour-index stored format round-trips."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from fleetloop import tables
from fleetloop.query.index import (
    HOUR_COLUMNS,
    build_hour_index,
    read_hour_index,
    read_hour_rows,
    store_hour_index,
    unsealed_hour_row,
)

from tests.support import REPO_ROOT

ROOT = REPO_ROOT
CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*?)\)\s*ENGINE", re.S)


def migration_columns(owner: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for sql in sorted((ROOT / "services" / owner / "migrations").glob("*.sql")):
        text = "\n".join(line.split("--")[0] for line in sql.read_text().splitlines())
        for name, body in CREATE.findall(text):
            out[name] = {m.group(1) for m in re.finditer(r"(?:^|,)\s*(\w+)\s+[A-Z]", body)}
    return out


@pytest.mark.parametrize("table", tables.REGISTRY, ids=lambda t: t.name)
def test_declared_columns_exist_in_owner_migration(table: tables.Table) -> None:
    created = migration_columns(table.owner)
    assert table.name in created, f"{table.owner} migrations do not create {table.name}"
    missing = set(table.columns) - created[table.name]
    assert not missing, f"{table.name}: {sorted(missing)} not in {table.owner} migrations"


def test_registry_names_unique() -> None:
    names = [t.name for t in tables.REGISTRY]
    assert len(names) == len(set(names))


def test_hour_columns_match_migration() -> None:
    assert tuple(HOUR_COLUMNS) == tables.INDEX_HOUR.columns


class FakeWarehouse:
    """Keeps what the writer inserts and answers the reader's two queries from it."""

    def __init__(self) -> None:
        self.bitmaps: list[dict] = []
        self.hours: list[tuple] = []

    def insert_arrow(self, name, table) -> None:
        assert name == tables.INDEX_BITMAP.name
        self.bitmaps.extend(table.to_pylist())

    def insert_rows(self, name, rows, columns) -> None:
        assert name == tables.INDEX_HOUR.name and list(columns) == HOUR_COLUMNS
        self.hours.extend(rows)

    def query_rows(self, sql, params):
        if tables.INDEX_BITMAP.name in sql:
            return [(r["key"], base64.b64encode(r["bitmap"]).decode()) for r in self.bitmaps
                    if int(r["hour"].timestamp()) * 1000 == params["h"] and r["version"] == params["v"]]
        assert tables.INDEX_HOUR.name in sql
        latest: dict[int, tuple] = {}
        for row in sorted(self.hours, key=lambda r: r[1]):
            latest[row[0]] = row
        return [(h * 1000, v, s, vs) for h, v, s, vs, _ in sorted(latest.values())
                if params["lo"] <= h * 1000 < params["hi"]]


def test_hour_index_round_trip() -> None:
    hour = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
    rng = np.random.default_rng(3)
    n = 500
    vehicles = rng.choice(["v-b", "v-a", "v-c"], n)
    seconds = rng.choice(3600, n, replace=False)
    ts = hour + 1000 * seconds
    t = rng.integers(0, 2**63, (n, 2), dtype=np.uint64)
    k = t | rng.integers(0, 2**63, (n, 2), dtype=np.uint64)
    parks = rng.choice(["north", "south"], n)
    index = build_hour_index(hour, list(vehicles), ts, t, k, list(parks))

    warehouse = FakeWarehouse()
    warehouse.insert_rows(tables.INDEX_HOUR.name, [unsealed_hour_row(hour, 1)], HOUR_COLUMNS)
    assert read_hour_rows(warehouse, hour, hour + 3_600_000) == [(hour, 1, False, [])]
    store_hour_index(warehouse, index, version=2)
    [(h, version, sealed, names)] = read_hour_rows(warehouse, hour, hour + 3_600_000)
    assert (h, version, sealed, tuple(names)) == (hour, 2, True, index.vehicles)

    back = read_hour_index(warehouse, h, version, names)
    assert back.hour_ms == hour and back.vehicles == index.vehicles and back.rows == n
    assert set(back.bitmaps) == set(index.bitmaps)
    assert all(back.bitmaps[key] == bm for key, bm in index.bitmaps.items())
