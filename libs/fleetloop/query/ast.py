"""The typed AST of a mining expression, and `QueryError`.

Names are already resolved against the taxonomy: a `TagAtom` carries its `Tag` (bit), a
`Compare` its `NumericTag` (column). `And` / `Or` are n-ary and flat. `str(expr)` is the
normalised expression: canonical names, `!` > `&` > `|`, only the parentheses needed.
Positions (`pos`, 0-based character offsets into the source) are kept for messages and
excluded from equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetloop.labels.taxonomy import NumericTag, Tag

COMPARISON_OPS = (">=", "<=", "!=", "==", ">", "<", "=")


class QueryError(ValueError):
    """A mining expression that cannot be parsed or type-checked.

    `position` is the 0-based character offset of the problem in `text`; `str(error)` is
    the message, the expression, and a caret under the offending character.
    """

    def __init__(self, message: str, text: str, position: int) -> None:
        self.message = message
        self.text = text
        self.position = position
        super().__init__(f"{message}\n  {text}\n  {' ' * position}^")


@dataclass(frozen=True)
class TagAtom:
    """A boolean tag: TRUE when the tag is set, FALSE when known and not set."""

    tag: Tag
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return self.tag.name


@dataclass(frozen=True)
class Compare:
    """`numeric op value`; `op` is one of > >= < <= = != (`==` is normalised to `=`).

    `value` is already rounded to float32, the column's precision, so `= 30.1` matches a
    stored 30.1.
    """

    numeric: NumericTag
    op: str
    value: float
    pos: int = field(default=0, compare=False)

    def __str__(self) -> str:
        # Shortest decimal that rounds to the same float32, e.g. 30.1 rather than 30.100000381469727.
        number = int(self.value) if self.value.is_integer() else str(np.float32(self.value))
        return f"{self.numeric.name} {self.op} {number}"


@dataclass(frozen=True)
class Not:
    operand: Expr

    def __str__(self) -> str:
        inner = str(self.operand)
        return f"!{inner}" if isinstance(self.operand, TagAtom | Not) else f"!({inner})"


@dataclass(frozen=True)
class And:
    operands: tuple[Expr, ...]

    def __str__(self) -> str:
        return " & ".join(f"({o})" if isinstance(o, Or) else str(o) for o in self.operands)


@dataclass(frozen=True)
class Or:
    operands: tuple[Expr, ...]

    def __str__(self) -> str:
        return " | ".join(str(o) for o in self.operands)


Expr = TagAtom | Compare | Not | And | Or
