"""Mining expressions: parse to a typed AST, compile to parameterised ClickHouse SQL,
or evaluate by brute force over in-memory label rows."""

from fleetloop.query.ast import And, Compare, Expr, Not, Or, QueryError, TagAtom
from fleetloop.query.compiler import CompiledQuery, Explanation, MineRequest, compile_query, explain
from fleetloop.query.evaluate import Clip, build_clips, evaluate_request, evaluate_rows, truth
from fleetloop.query.parser import parse

__all__ = [
    "And", "Clip", "Compare", "CompiledQuery", "Explanation", "Expr", "MineRequest", "Not", "Or",
    "QueryError", "TagAtom", "build_clips", "compile_query", "evaluate_request", "evaluate_rows",
    "explain", "parse", "truth",
]
