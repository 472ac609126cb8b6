"""One labelled vehicle-second (`LabelRow`) and its column layout in the label table.

The table (services/label_indexer/migrations/001_labels.sql) stores the bitsets as
`word_count` UInt64 words each: t0..t3 (tag true) and k0..k3 (tag known, true or false).
A tag is TRUE when its t bit is set, FALSE when its k bit is set and its t bit is not,
UNKNOWN otherwise. Numeric values are Float32 columns, NaN when unknown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetloop.labels.taxonomy import WORD_BITS, NumericTag, Tag, Taxonomy
from fleetloop.tables import LABEL_SECOND

LABEL_TABLE = LABEL_SECOND.name
_WORD_MASK = (1 << WORD_BITS) - 1


@dataclass(frozen=True)
class LabelRow:
    """The labels of one vehicle-second.

    ts_ms: start of the second, epoch milliseconds UTC (a multiple of 1000).
    tags: bitset of TRUE tags (bit = Tag.bit); known: bitset of evaluated tags; tags ⊆ known.
    values: numeric name -> value, already rounded to float32 (the column type); a missing
    name means unknown. taxonomy_version: the taxonomy the labeler ran with.
    """

    vehicle_id: str
    ts_ms: int
    tags: int
    known: int
    values: Mapping[str, float] = field(default_factory=dict)
    taxonomy_version: int = 1
    park: str = ""
    city: str = ""

    def __post_init__(self) -> None:
        if self.tags & ~self.known:
            raise ValueError("a TRUE tag must also be known (tags ⊆ known)")
        if self.ts_ms % 1000:
            raise ValueError(f"ts_ms {self.ts_ms} is not the start of a second")

    def tag_value(self, tag: Tag) -> bool | None:
        """True / False / None (unknown) for one tag."""
        if not (self.known >> tag.bit) & 1:
            return None
        return bool((self.tags >> tag.bit) & 1)

    def numeric_value(self, numeric: NumericTag) -> float | None:
        """The value, or None when unknown."""
        value = self.values.get(numeric.name)
        return None if value is None or math.isnan(value) else value


def label_columns(taxonomy: Taxonomy) -> tuple[str, ...]:
    """Column names of the label table, in the order `rows_to_columns` returns them."""
    words = range(taxonomy.word_count)
    return ("vehicle_id", "ts", "park", "city", "taxonomy_version",
            *(f"t{w}" for w in words), *(f"k{w}" for w in words),
            *(n.column for n in taxonomy.numeric))


def rows_to_columns(rows: Sequence[LabelRow], taxonomy: Taxonomy) -> dict[str, list[Any]]:
    """Column-oriented data for an insert into the label table.

    `ts` is epoch milliseconds, which clickhouse-connect inserts into the DateTime64(3)
    column as raw ticks: `client.insert(LABEL_TABLE, list(cols.values()),
    column_names=list(cols), column_oriented=True)`. Unknown numeric values are NaN.
    """
    columns: dict[str, list[Any]] = {name: [] for name in label_columns(taxonomy)}
    for row in rows:
        columns["vehicle_id"].append(row.vehicle_id)
        columns["ts"].append(row.ts_ms)
        columns["park"].append(row.park)
        columns["city"].append(row.city)
        columns["taxonomy_version"].append(row.taxonomy_version)
        for w in range(taxonomy.word_count):
            columns[f"t{w}"].append((row.tags >> (w * WORD_BITS)) & _WORD_MASK)
            columns[f"k{w}"].append((row.known >> (w * WORD_BITS)) & _WORD_MASK)
        for numeric in taxonomy.numeric:
            columns[numeric.column].append(row.values.get(numeric.name, math.nan))
    return columns
