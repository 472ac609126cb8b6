"""The mining index: per-hour roaring bitmaps of every tag, and expression evaluation over them.

One `HourIndex` covers one UTC hour of the whole fleet. Row id = vehicle_no * 3600 +
second_of_hour, where vehicle_no is the vehicle's position in the hour's sorted vehicle list, so
one vehicle's seconds are a contiguous id block and ids sort like (vehicle_id, ts). Bitmaps:

    t<bit>   seconds where the tag is TRUE         k<bit>   seconds where the tag is known
    p:<park> seconds whose row names that park     all      every second that has a row

Evaluation uses the compiler's three-valued rules on sets instead of SQL: TRUE(tag) = t,
FALSE(tag) = k - t, TRUE(!e) = FALSE(e), TRUE(a & b) = TRUE(a) ∩ TRUE(b), FALSE(a & b) =
FALSE(a) ∪ FALSE(b), and dually for `|`. Numeric comparisons have no bitmaps: an expression
with one is answered by the SQL scan (`indexable` says which).

Why bitmaps (docs/MINING.md has the figures): a conjunction of a few tags over 100 M
vehicle-seconds touches a few MB of compressed bitmaps instead of scanning 800 MB per bitset
word; counts are cardinalities and never materialise the seconds.
"""

from __future__ import annotations

import array
import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyroaring import BitMap

from fleetloop import tables
from fleetloop.labels.taxonomy import WORD_BITS
from fleetloop.query.ast import And, Compare, Expr, Not, TagAtom

HOUR_MS = 3_600_000
SECONDS_PER_HOUR = 3600
ALL = "all"


def bitmap_of(ids: np.ndarray) -> BitMap:
    """A run-optimised BitMap of uint32 ids (the array.array path is ~10x faster than numpy)."""
    bitmap = BitMap(array.array("I", np.ascontiguousarray(ids, np.uint32).tobytes()))
    bitmap.run_optimize()
    return bitmap


def ids_of(bitmap: BitMap) -> np.ndarray:
    """The sorted ids of a bitmap as a uint32 array."""
    return np.frombuffer(bitmap.to_array(), np.uint32)


@dataclass
class HourIndex:
    """The bitmaps of one hour. `hour_ms`: start of the hour, epoch ms UTC; `vehicles` sorted."""

    hour_ms: int
    vehicles: tuple[str, ...]
    bitmaps: dict[str, BitMap]

    def bitmap(self, key: str) -> BitMap:
        """The bitmap under `key`; an absent key is the empty set (e.g. a tag never known)."""
        return self.bitmaps.get(key) or BitMap()

    @property
    def rows(self) -> int:
        return len(self.bitmap(ALL))

    def serialize(self) -> dict[str, bytes]:
        """Portable roaring bytes per key (what the index table stores)."""
        return {key: bm.serialize() for key, bm in self.bitmaps.items()}

    @classmethod
    def deserialize(cls, hour_ms: int, vehicles: Sequence[str], blobs: Mapping[str, bytes]) -> HourIndex:
        return cls(hour_ms, tuple(vehicles), {key: BitMap.deserialize(blob) for key, blob in blobs.items()})

    def seconds_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vehicle_no, ts_ms) of row ids."""
        ids = ids.astype(np.int64)
        return ids // SECONDS_PER_HOUR, self.hour_ms + 1000 * (ids % SECONDS_PER_HOUR)


def build_hour_index(hour_ms: int, vehicle_ids: Sequence[str], ts_ms: np.ndarray, t: np.ndarray, k: np.ndarray,
                     parks: Sequence[str]) -> HourIndex:
    """Bitmaps of one hour's label rows.

    vehicle_ids, parks: (n,) per row; ts_ms: (n,) epoch ms inside [hour_ms, hour_ms + 1 h);
    t, k: (n, word_count) uint64 bitset words. One row per (vehicle, second) (FINAL rows).
    """
    ts_ms = np.asarray(ts_ms, np.int64)
    if ts_ms.size and (ts_ms.min() < hour_ms or ts_ms.max() >= hour_ms + HOUR_MS):
        raise ValueError("rows outside the hour")
    vehicles, vehicle_no = np.unique(np.asarray(vehicle_ids, dtype=object), return_inverse=True)
    ids = (vehicle_no.astype(np.int64) * SECONDS_PER_HOUR + (ts_ms - hour_ms) // 1000).astype(np.uint32)
    order = np.argsort(ids, kind="stable")
    ids, t, k = ids[order], t[order], k[order]
    park_arr = np.asarray(parks, dtype=object)[order]
    bitmaps = {ALL: bitmap_of(ids)}
    for prefix, words in (("t", t), ("k", k)):
        for w in range(words.shape[1]):
            column = words[:, w]
            present = int(np.bitwise_or.reduce(column)) if column.size else 0
            for b in range(WORD_BITS):
                if (present >> b) & 1:
                    hit = (column >> np.uint64(b)) & np.uint64(1) == 1
                    bitmaps[f"{prefix}{w * WORD_BITS + b}"] = bitmap_of(ids[hit])
    for park in np.unique(park_arr) if park_arr.size else ():
        bitmaps[f"p:{park}"] = bitmap_of(ids[park_arr == park])
    return HourIndex(hour_ms, tuple(str(v) for v in vehicles), bitmaps)


# -- the stored format (tables.INDEX_HOUR / tables.INDEX_BITMAP, label_indexer/migrations/002) ---------
# The label-indexer writes it with `store_hour_index`/`unsealed_hour_row`, the miner reads it with
# `read_hour_rows`/`read_hour_index`.
HOUR_COLUMNS = ["hour", "version", "sealed", "vehicles", "rows"]


def unsealed_hour_row(hour_ms: int, version: int) -> tuple:
    """The directory row that marks an hour as being written (answered by scanning)."""
    return (hour_ms // 1000, version, 0, [], 0)


def store_hour_index(warehouse, index: HourIndex, version: int) -> None:
    """Write an HourIndex: its bitmaps first, then the sealed directory row that publishes them."""
    blobs = index.serialize()
    hour_s = index.hour_ms // 1000
    warehouse.insert_arrow(tables.INDEX_BITMAP.name, pa.table({
        "hour": pa.array([hour_s] * len(blobs), pa.timestamp("s", tz="UTC")),
        "key": pa.array(list(blobs), pa.string()),
        "version": pa.array([version] * len(blobs), pa.uint64()),
        "bitmap": pa.array(list(blobs.values()), pa.binary()),
    }))
    warehouse.insert_rows(tables.INDEX_HOUR.name, [(hour_s, version, 1, list(index.vehicles), index.rows)],
                          HOUR_COLUMNS)


def read_hour_rows(warehouse, lo_ms: int, hi_ms: int) -> list[tuple[int, int, bool, list[str]]]:
    """(hour_ms, version, sealed, vehicles) of the latest directory row per hour in [lo_ms, hi_ms)."""
    rows = warehouse.query_rows(
        f"SELECT toUnixTimestamp(hour) * 1000, version, sealed, vehicles FROM {tables.INDEX_HOUR.name} FINAL "
        "WHERE hour >= toDateTime(intDiv({lo:Int64}, 1000), 'UTC') "
        "AND hour < toDateTime(intDiv({hi:Int64}, 1000), 'UTC') ORDER BY hour", {"lo": lo_ms, "hi": hi_ms})
    return [(int(h), int(v), bool(s), list(vs)) for h, v, s, vs in rows]


def read_hour_index(warehouse, hour_ms: int, version: int, vehicles: Sequence[str]) -> HourIndex:
    """The HourIndex stored for (hour, sealed version)."""
    blobs = warehouse.query_rows(
        f"SELECT key, base64Encode(bitmap) FROM {tables.INDEX_BITMAP.name} FINAL "
        "WHERE hour = toDateTime(intDiv({h:Int64}, 1000), 'UTC') AND version = {v:UInt64}",
        {"h": hour_ms, "v": version})
    return HourIndex.deserialize(hour_ms, vehicles, {k: base64.b64decode(b) for k, b in blobs})


def indexable(expr: Expr) -> bool:
    """True when the expression uses only boolean tags (no numeric comparison)."""
    if isinstance(expr, TagAtom):
        return True
    if isinstance(expr, Compare):
        return False
    if isinstance(expr, Not):
        return indexable(expr.operand)
    return all(indexable(o) for o in expr.operands)


def evaluate(expr: Expr, index: HourIndex, want_true: bool = True) -> BitMap:
    """Row ids of the hour where `expr` is TRUE (or FALSE with want_true=False); unknown never matches."""
    if isinstance(expr, TagAtom):
        t = index.bitmap(f"t{expr.tag.bit}")
        return t if want_true else index.bitmap(f"k{expr.tag.bit}") - t
    if isinstance(expr, Not):
        return evaluate(expr.operand, index, not want_true)
    if isinstance(expr, Compare):
        raise ValueError(f"numeric comparison {expr} has no bitmap; use the SQL scan")
    parts = [evaluate(o, index, want_true) for o in expr.operands]
    if isinstance(expr, And) == want_true:
        return BitMap.intersection(*parts)
    return BitMap.union(*parts)


def scope(index: HourIndex, start_ms: int | None, end_ms: int | None, vehicle_ids: Iterable[str],
          parks: Iterable[str]) -> BitMap | None:
    """The ids a request may match in this hour, or None when it does not restrict the hour."""
    constraints: list[BitMap] = []
    lo = 0 if start_ms is None else max(0, -(-(start_ms - index.hour_ms) // 1000))
    hi = SECONDS_PER_HOUR if end_ms is None else min(SECONDS_PER_HOUR, -(-(end_ms - index.hour_ms) // 1000))
    wanted = set(vehicle_ids)
    if lo > 0 or hi < SECONDS_PER_HOUR or wanted:
        allowed = BitMap()
        if lo < hi:
            for no, vehicle in enumerate(index.vehicles):
                if not wanted or vehicle in wanted:
                    allowed.add_range(no * SECONDS_PER_HOUR + lo, no * SECONDS_PER_HOUR + hi)
        constraints.append(allowed)
    park_list = list(parks)
    if park_list:
        constraints.append(BitMap.union(BitMap(), *(index.bitmap(f"p:{p}") for p in park_list)))
    if not constraints:
        return None
    return BitMap.intersection(*constraints) if len(constraints) > 1 else constraints[0]
