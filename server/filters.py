"""Hasura-style `where` / `order_by` arguments -> SQLAlchemy expressions.

The arguments arrive already coerced by graphql-core (so `_and: {...}` is a one-element list and timestamps
are datetimes). Relationship keys become EXISTS sub-queries on an alias of the target table, which is Hasura's
semantics for array relationships (`flow_run.task_runs`) and works the same for object ones (`flow.project`).
Sibling keys are AND-ed; an empty `_or` is true, as in Hasura.

`_like` / `_ilike` mean the same on every backend (SQLite's LIKE ignores ASCII case and has no escape
character, PostgreSQL's is case-sensitive and escapes with a backslash): `_like` is case-sensitive, `_ilike`
is not, `%` and `_` are the only wildcards and every other character, a backslash too, matches itself. On
SQLite `_like` is a GLOB of the translated pattern; on PostgreSQL `ESCAPE ''` switches the escape off.
`labels: {_contains: [...]}` (Hasura's jsonb containment, for a list of strings) is `@>` on PostgreSQL and
`json_each` on SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    FromClause,
    String,
    Table,
    and_,
    bindparam,
    exists,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.visitors import InternalTraversal

from server import db
from server.errors import ApiError


@dataclass(frozen=True)
class Relation:
    target: str
    local: str
    remote: str


@dataclass(frozen=True)
class Spec:
    table: Table
    relations: Mapping[str, Relation] = field(default_factory=dict)


SPECS: dict[str, Spec] = {
    "tenant": Spec(db.tenant),
    "project": Spec(db.project),
    "flow": Spec(
        db.flow,
        {"project": Relation("project", "project_id", "id"), "tasks": Relation("task", "id", "flow_id")},
    ),
    "task": Spec(db.task, {"flow": Relation("flow", "flow_id", "id")}),
    "flow_run": Spec(
        db.flow_run,
        {"flow": Relation("flow", "flow_id", "id"), "task_runs": Relation("task_run", "id", "flow_run_id")},
    ),
    "flow_run_state": Spec(db.flow_run_state),
    "agent": Spec(db.agent),
    "task_run": Spec(
        db.task_run,
        {"flow_run": Relation("flow_run", "flow_run_id", "id"), "task": Relation("task", "task_id", "id")},
    ),
    "agent_config": Spec(db.agent_config),
    "log": Spec(db.log),
}

_GLOB_SPECIAL = {"*": "[*]", "?": "[?]", "[": "[[]"}


def like_to_glob(pattern: str) -> str:
    """A LIKE pattern without escapes as the GLOB pattern that matches the same strings, case-sensitively."""
    out = []
    for char in pattern:
        if char == "%":
            out.append("*")
        elif char == "_":
            out.append("?")
        else:
            out.append(_GLOB_SPECIAL.get(char, char))
    return "".join(out)


class Like(ColumnElement[bool]):
    """`column LIKE pattern` (or ILIKE with `insensitive`), compiled per dialect below."""

    type = Boolean()
    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("pattern", InternalTraversal.dp_clauseelement),
        ("glob", InternalTraversal.dp_clauseelement),
        ("insensitive", InternalTraversal.dp_boolean),
    ]

    def __init__(self, column: Any, pattern: str, *, insensitive: bool = False) -> None:
        self.column = column
        self.pattern = bindparam(None, pattern, type_=String(), unique=True)
        self.glob = bindparam(None, like_to_glob(pattern), type_=String(), unique=True)
        self.insensitive = insensitive


@compiles(Like)
def _compile_default(element: Like, compiler: SQLCompiler, **kw: Any) -> str:
    operator = "ILIKE" if element.insensitive else "LIKE"
    column, pattern = compiler.process(element.column, **kw), compiler.process(element.pattern, **kw)
    return f"({column} {operator} {pattern} ESCAPE '')"


@compiles(Like, "sqlite")
def _compile_sqlite(element: Like, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    if element.insensitive:  # SQLite's LIKE: ASCII case folded, no escape character
        return f"({column} LIKE {compiler.process(element.pattern, **kw)})"
    return f"({column} GLOB {compiler.process(element.glob, **kw)})"


class Contains(ColumnElement[bool]):
    """`column` (a JSON array) holds every one of `values` (strings), compiled per dialect below."""

    type = Boolean()
    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("wanted", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: Any, values: Any) -> None:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ApiError("_contains takes a list of strings (labels).", "BAD_USER_INPUT")
        self.column = column
        self.wanted = bindparam(None, json.dumps(values), type_=String(), unique=True)


@compiles(Contains)
def _compile_contains(element: Contains, compiler: SQLCompiler, **kw: Any) -> str:
    column, wanted = compiler.process(element.column, **kw), compiler.process(element.wanted, **kw)
    return f"({column} @> CAST({wanted} AS JSONB))"


@compiles(Contains, "sqlite")
def _compile_contains_sqlite(element: Contains, compiler: SQLCompiler, **kw: Any) -> str:
    column, wanted = compiler.process(element.column, **kw), compiler.process(element.wanted, **kw)
    return (f"(NOT EXISTS (SELECT 1 FROM json_each({wanted}) AS w WHERE NOT EXISTS "
            f"(SELECT 1 FROM json_each({column}) AS h WHERE h.value = w.value)))")


_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "_eq": lambda c, v: c == v,
    "_neq": lambda c, v: c != v,
    "_gt": lambda c, v: c > v,
    "_gte": lambda c, v: c >= v,
    "_lt": lambda c, v: c < v,
    "_lte": lambda c, v: c <= v,
    "_in": lambda c, v: c.in_(v),
    "_nin": lambda c, v: c.not_in(v),
    "_like": lambda c, v: Like(c, v),
    "_ilike": lambda c, v: Like(c, v, insensitive=True),
    "_is_null": lambda c, v: c.is_(None) if v else c.is_not(None),
    "_contains": lambda c, v: Contains(c, v),
}


def where_clause(kind: str, source: FromClause, where: Mapping[str, Any] | None) -> ColumnElement[bool]:
    """The SQL condition for one `<kind>_bool_exp` evaluated against `source` (the table or an alias)."""
    if not where:
        return true()
    spec = SPECS[kind]
    clauses: list[ColumnElement[bool]] = []
    for key, value in where.items():
        if value is None:
            continue
        if key == "_and":
            clauses.append(and_(true(), *(where_clause(kind, source, w) for w in value)))
        elif key == "_or":
            clauses.append(or_(*(where_clause(kind, source, w) for w in value)) if value else true())
        elif key == "_not":
            clauses.append(not_(where_clause(kind, source, value)))
        elif key in spec.relations:
            clauses.append(_relation_exists(spec.relations[key], source, value))
        else:
            clauses.append(_compare(source.c[key], value))
    return and_(true(), *clauses)


def _relation_exists(rel: Relation, source: FromClause, where: Mapping[str, Any]) -> ColumnElement[bool]:
    target = SPECS[rel.target].table.alias()
    condition = target.c[rel.remote] == source.c[rel.local]
    return exists(select(1).select_from(target).where(condition, where_clause(rel.target, target, where)))


def _compare(column: Any, comparison: Mapping[str, Any]) -> ColumnElement[bool]:
    clauses = [_OPERATORS[op](column, value) for op, value in comparison.items() if value is not None]
    return and_(true(), *clauses)


def order_clauses(source: FromClause, order_by: list[Mapping[str, str]] | None) -> list[UnaryExpression[Any]]:
    """`order_by: [{col: desc_nulls_last}]` -> ORDER BY terms with explicit NULL placement (the same on
    every backend). A NOT NULL column gets none: each backend's own placement then matches its indexes
    (an explicit one that differs keeps SQLite from reading an index in order)."""
    terms: list[UnaryExpression[Any]] = []
    for item in order_by or []:
        for key, direction in item.items():
            if direction is None:
                continue
            column = source.c[key]
            descending = direction.startswith("desc")
            term = column.desc() if descending else column.asc()
            if not getattr(column, "nullable", True):
                terms.append(term)
                continue
            # Unless asked: PostgreSQL's (Hasura's) default, NULLs count as largest (SQLite: smallest).
            if direction.endswith("nulls_first") or (descending and not direction.endswith("nulls_last")):
                term = term.nulls_first()
            else:
                term = term.nulls_last()
            terms.append(term)
    return terms
