"""Property-based tests (hypothesis) of the mining-expression parser (issue 11): any text either
parses or raises QueryError with a position inside the text, never another exception; and an
expression built from the taxonomy prints in a normal form that parses back to itself."""

from __future__ import annotations

import math

from fleetloop.labels import load_taxonomy
from fleetloop.query import parse
from fleetloop.query.ast import And, Compare, Not, Or, QueryError, TagAtom
from fleetloop.query.parser import MAX_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

TX = load_taxonomy()
BOOLEAN = sorted(t.name for t in TX.tags if not t.retired)
NUMERIC = sorted(n.name for n in TX.numeric)
ALIASES = sorted(a for t in TX.tags if not t.retired for a in t.aliases)

# Text near the grammar: names, aliases, operators, numbers and noise glued together.
pieces = st.one_of(st.sampled_from(BOOLEAN + NUMERIC + ALIASES),
                   st.sampled_from(["&", "|", "!", "(", ")", ">", ">=", "<", "<=", "=", "==", "!=", " "]),
                   st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers().map(str),
                   st.text(max_size=4))
near_grammar = st.lists(pieces, max_size=40).map(" ".join)


def check_parse_or_query_error(text: str) -> None:
    try:
        expr = parse(text, TX)
    except QueryError as exc:
        assert 0 <= exc.position <= len(text), (text, exc.position)
        assert exc.message
    else:
        assert str(expr)


@settings(max_examples=400)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_query_error_with_its_position(text):
    check_parse_or_query_error(text)


@settings(max_examples=400)
@given(near_grammar)
def test_text_near_the_grammar_parses_or_is_a_query_error(text):
    check_parse_or_query_error(text)


def test_deep_and_long_inputs_are_query_errors_not_recursion_errors():
    for text in ("(" * 5000 + BOOLEAN[0] + ")" * 5000, "!" * 5000 + BOOLEAN[0],
                 " | ".join([BOOLEAN[0]] * (MAX_LENGTH // 3))):
        check_parse_or_query_error(text)


atoms = st.one_of(
    st.sampled_from(BOOLEAN).map(lambda n: f"{n}"),
    st.tuples(st.sampled_from(NUMERIC), st.sampled_from([">", ">=", "<", "<=", "=", "!="]),
              st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 3)))
    .map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
)
expressions = st.recursive(
    atoms,
    lambda inner: st.one_of(inner.map(lambda e: f"!({e})"),
                            st.lists(inner, min_size=2, max_size=3).map(lambda es: " & ".join(f"({e})" for e in es)),
                            st.lists(inner, min_size=2, max_size=3).map(lambda es: " | ".join(f"({e})" for e in es))),
    max_leaves=12,
)


def shape(expr) -> tuple:
    """The expression's structure, positions left out."""
    if isinstance(expr, TagAtom):
        return ("tag", expr.tag.name)
    if isinstance(expr, Compare):
        return ("cmp", expr.numeric.name, expr.op, expr.value)
    if isinstance(expr, Not):
        return ("not", shape(expr.operand))
    assert isinstance(expr, And | Or)
    return (type(expr).__name__, tuple(shape(o) for o in expr.operands))


@settings(max_examples=300)
@given(expressions)
def test_the_normal_form_parses_back_to_the_same_expression(text):
    expr = parse(text, TX)
    again = parse(str(expr), TX)
    assert shape(again) == shape(expr)
    assert str(again) == str(expr)
    for node in _compares(expr):
        assert math.isfinite(node.value)


def _compares(expr):
    if isinstance(expr, Compare):
        yield expr
    elif isinstance(expr, Not):
        yield from _compares(expr.operand)
    elif isinstance(expr, And | Or):
        for operand in expr.operands:
            yield from _compares(operand)
