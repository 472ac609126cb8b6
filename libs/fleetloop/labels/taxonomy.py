"""The label taxonomy: tag names, their stable bit positions, numeric values and thresholds.

`load_taxonomy()` reads the packaged `taxonomy.yaml` (or a given file) at the edge through the one
loader (`fleetloop.config`); `parse_taxonomy(mapping)` is the pure validation behind it: the entries'
shapes by their models, the file's cross-entry rules (unique names and bits, ...) here. See the YAML header for the
versioning rule (per-row `known` bitset; tags newer than a row are unknown for it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from fleetloop.config import ConfigError, ConfigModel, safe_load, validate

DEFAULT_PATH = Path(__file__).with_name("taxonomy.yaml")
WORD_BITS = 64

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
_COLUMN = re.compile(r"^v_[a-z0-9_]+$")


class TaxonomyError(ConfigError):
    """The taxonomy file breaks one of its rules (duplicate bit, bad name, …)."""


class Tag(ConfigModel):
    """One boolean tag: `bit` is its position in the row bitset (word `bit // 64`)."""

    name: str
    bit: int
    family: str
    since: int
    aliases: tuple[str, ...] = ()
    standard: str = ""
    retired: bool = False

    @property
    def word(self) -> int:
        return self.bit // WORD_BITS

    @property
    def mask(self) -> int:
        """The tag's bit within its 64-bit word."""
        return 1 << (self.bit % WORD_BITS)


class NumericTag(ConfigModel):
    """One numeric value per second, stored in Float32 column `column` (NaN = unknown)."""

    name: str
    column: str
    family: str
    since: int
    unit: str
    standard: str = ""


@dataclass(frozen=True)
class Taxonomy:
    """A validated taxonomy. Look tags up with `resolve(name)` (canonical names or aliases)."""

    version: int
    word_count: int
    tags: tuple[Tag, ...]
    numeric: tuple[NumericTag, ...]
    thresholds: Mapping[str, float]
    _by_name: dict[str, Tag | NumericTag] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: dict[str, Tag | NumericTag] = {}
        for entry in (*self.tags, *self.numeric):
            names[entry.name] = entry
        for tag in self.tags:
            for alias in tag.aliases:
                names[alias] = tag
        object.__setattr__(self, "_by_name", names)

    def resolve(self, name: str) -> Tag | NumericTag | None:
        """The tag or numeric value called `name` (canonical or alias), else None."""
        return self._by_name.get(name)

    def tag(self, name: str) -> Tag:
        """The boolean tag `name`; KeyError if there is none."""
        found = self.resolve(name)
        if not isinstance(found, Tag):
            raise KeyError(name)
        return found

    @property
    def all_names(self) -> tuple[str, ...]:
        """Every name the query language accepts, canonical names first."""
        return tuple(self._by_name)

    @property
    def active_tags(self) -> tuple[Tag, ...]:
        return tuple(t for t in self.tags if not t.retired)

    def bitset(self, names: list[str] | tuple[str, ...] | set[str]) -> int:
        """The integer bitset with the given tags set."""
        value = 0
        for name in names:
            value |= 1 << self.tag(name).bit
        return value


class TaxonomyFile(ConfigModel):
    """taxonomy.yaml as written."""

    version: int = Field(ge=1)
    word_count: int = Field(ge=1)
    thresholds: dict[str, float] = Field(default_factory=dict)
    tags: tuple[Tag, ...]
    numeric: tuple[NumericTag, ...] = ()


def parse_taxonomy(data: Mapping[str, Any], *, source: str = "taxonomy") -> Taxonomy:
    """Validate a taxonomy mapping (the YAML's content) and build a `Taxonomy`.

    Raises ConfigError naming the key path of a malformed entry, and TaxonomyError on duplicate
    names/bits/columns, bits beyond `word_count` words, `since` later than `version`, or names the
    query language could not spell.
    """
    file = validate(data, TaxonomyFile, source=source)
    version, word_count, tags, numeric = file.version, file.word_count, file.tags, file.numeric
    thresholds = dict(file.thresholds)

    seen: set[str] = set()
    for name in [t.name for t in tags] + [a for t in tags for a in t.aliases] + [n.name for n in numeric]:
        if not _NAME.match(name):
            raise TaxonomyError(f"tag name {name!r} is not lower-case dotted words")
        if name in seen:
            raise TaxonomyError(f"name {name!r} is used twice")
        seen.add(name)
    bits = [t.bit for t in tags]
    if len(set(bits)) != len(bits):
        raise TaxonomyError("a bit position is used by two tags (bits are never reused)")
    if any(b < 0 or b >= word_count * WORD_BITS for b in bits):
        raise TaxonomyError(f"bits must lie in [0, {word_count * WORD_BITS}); add a word by migration")
    columns = [n.column for n in numeric]
    if len(set(columns)) != len(columns) or not all(_COLUMN.match(c) for c in columns):
        raise TaxonomyError("numeric columns must be unique and named v_<lower_snake>")
    if any(e.since < 1 or e.since > version for e in (*tags, *numeric)):
        raise TaxonomyError(f"every `since` must lie in [1, version={version}]")
    return Taxonomy(version=version, word_count=word_count, tags=tags, numeric=numeric,
                    thresholds=thresholds)


def load_taxonomy(path: Path | str | None = None) -> Taxonomy:
    """Read and validate the taxonomy YAML at `path` (default: the packaged taxonomy.yaml)."""
    path = Path(path or DEFAULT_PATH)
    return parse_taxonomy(safe_load(path.read_text(encoding="utf-8"), source=str(path)), source=str(path))
