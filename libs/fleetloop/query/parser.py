"""Hand-written recursive-descent parser for mining expressions.

Grammar (`!` binds tighter than `&`, which binds tighter than `|`):

    expr    := and ('|' and)*
    and     := unary ('&' unary)*
    unary   := '!' unary | primary
    primary := '(' expr ')' | NAME [CMP NUMBER]
    CMP     := '>' | '>=' | '<' | '<=' | '=' | '==' | '!='
    NAME    := letters, digits, '_' and '.'; case-insensitive; canonical name or alias
    NUMBER  := decimal or scientific literal, optional leading '-'

Names are resolved and type-checked against the taxonomy while parsing: a boolean tag
cannot be compared, a numeric value must be compared. Every error is a `QueryError` with
the 0-based position of the offending character.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np

from fleetloop.labels.taxonomy import NumericTag, Tag, Taxonomy
from fleetloop.query.ast import And, Compare, Expr, Not, Or, QueryError, TagAtom

MAX_LENGTH = 4000      # characters; a mining expression is typed by a person
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # numeric columns are Float32
MAX_DEPTH = 64         # nesting of '(' and '!'; keeps recursion far from Python's limit

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<op>>=|<=|!=|==|[&|!()<>=])
""", re.VERBOSE)


@dataclass(frozen=True)
class Token:
    kind: str   # name, number, op, end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    """Split `text` into tokens; QueryError at the first character that starts none."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise QueryError(f"unexpected character {text[pos]!r} at {pos}", text, pos)
        if match.lastgroup != "ws":
            tokens.append(Token(match.lastgroup or "", match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, taxonomy: Taxonomy) -> None:
        self.text = text
        self.taxonomy = taxonomy
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, message: str, pos: int) -> QueryError:
        return QueryError(message, self.text, pos)

    def describe(self, tok: Token) -> str:
        return "end of expression" if tok.kind == "end" else repr(tok.text)

    def expr(self) -> Expr:
        operands = [self.conjunction()]
        while self.tok.text == "|":
            self.i += 1
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else Or(_flatten(Or, operands))

    def conjunction(self) -> Expr:
        operands = [self.unary()]
        while self.tok.text == "&":
            self.i += 1
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else And(_flatten(And, operands))

    def unary(self) -> Expr:
        tok = self.tok
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"expression nested deeper than {MAX_DEPTH} at {tok.pos}", tok.pos)
        try:
            if tok.text == "!":
                self.i += 1
                return Not(self.unary())
            return self.primary()
        finally:
            self.depth -= 1

    def primary(self) -> Expr:
        tok = self.tok
        if tok.text == "(":
            self.i += 1
            inner = self.expr()
            if self.tok.text != ")":
                raise self.fail(f"expected ')' to close '(' at {tok.pos}, found {self.describe(self.tok)} "
                                f"at {self.tok.pos}", self.tok.pos)
            self.i += 1
            return inner
        if tok.kind != "name":
            raise self.fail(f"expected a tag, '!' or '(' at {tok.pos}, found {self.describe(tok)}", tok.pos)
        self.i += 1
        entry = self.resolve(tok)
        op = self.tok
        if op.kind == "op" and op.text in (">", ">=", "<", "<=", "=", "==", "!="):
            if isinstance(entry, Tag):
                raise self.fail(f"'{entry.name}' is a boolean tag and cannot be compared with '{op.text}' "
                                f"at {op.pos}; write '{entry.name}' or '!{entry.name}'", op.pos)
            self.i += 1
            return Compare(entry, "=" if op.text == "==" else op.text, self.number(op), tok.pos)
        if isinstance(entry, NumericTag):
            raise self.fail(f"'{entry.name}' is numeric at {tok.pos}; compare it with a number, "
                            f"e.g. '{entry.name} > 0'", tok.pos)
        return TagAtom(entry, tok.pos)

    def resolve(self, tok: Token) -> Tag | NumericTag:
        name = tok.text.lower()
        entry = self.taxonomy.resolve(name)
        if entry is None:
            close = difflib.get_close_matches(name, self.taxonomy.all_names, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise self.fail(f"unknown tag {tok.text!r} at {tok.pos}{hint}", tok.pos)
        return entry

    def number(self, op: Token) -> float:
        tok = self.tok
        if tok.kind != "number":
            raise self.fail(f"expected a number after '{op.text}' at {tok.pos}, found {self.describe(tok)}",
                            tok.pos)
        self.i += 1
        value = float(tok.text)
        if not abs(value) <= _FLOAT32_MAX:
            raise self.fail(f"number {tok.text} at {tok.pos} is out of range", tok.pos)
        return float(np.float32(value))


def _flatten(kind: type[And] | type[Or], operands: list[Expr]) -> tuple[Expr, ...]:
    flat: list[Expr] = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, kind) else (operand,))
    return tuple(flat)


def parse(text: str, taxonomy: Taxonomy) -> Expr:
    """Parse and type-check a mining expression into a typed AST.

    text: e.g. "rain & night & junction.signalized & tricycle & !mode.manual". Raises
    QueryError (with position and caret) on any syntax, name or type problem.
    """
    if len(text) > MAX_LENGTH:
        raise QueryError(f"expression longer than {MAX_LENGTH} characters at {MAX_LENGTH}", text[:MAX_LENGTH],
                         MAX_LENGTH - 1)
    if not text.strip():
        raise QueryError("empty expression at 0", text, 0)
    parser = _Parser(text, taxonomy)
    tree = parser.expr()
    if parser.tok.kind != "end":
        tok = parser.tok
        raise parser.fail(f"unexpected {tok.text!r} at {tok.pos}; expected '&', '|' or end", tok.pos)
    return tree
