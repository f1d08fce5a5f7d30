"""Hasura-style `where` / `order_by` arguments -> SQLAlchemy expressions.

The arguments arrive already coerced by graphql-core (so `_and: {...}` is a one-element list and timestamps
are datetimes). Relationship keys become EXISTS sub-queries on an alias of the target table, which is Hasura's
semantics for array relationships (`flow_run.task_runs`) and works the same for object ones (`flow.project`).
Sibling keys are AND-ed; an empty `_or` is true, as in Hasura.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Table, and_, exists, not_, or_, select, true
from sqlalchemy.sql.elements import UnaryExpression

from server import db


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
    "task_run": Spec(
        db.task_run,
        {"flow_run": Relation("flow_run", "flow_run_id", "id"), "task": Relation("task", "task_id", "id")},
    ),
    "agent_config": Spec(db.agent_config),
    "log": Spec(db.log),
}

_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "_eq": lambda c, v: c == v,
    "_neq": lambda c, v: c != v,
    "_gt": lambda c, v: c > v,
    "_gte": lambda c, v: c >= v,
    "_lt": lambda c, v: c < v,
    "_lte": lambda c, v: c <= v,
    "_in": lambda c, v: c.in_(v),
    "_nin": lambda c, v: c.not_in(v),
    "_like": lambda c, v: c.like(v),
    "_ilike": lambda c, v: c.ilike(v),
    "_is_null": lambda c, v: c.is_(None) if v else c.is_not(None),
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
    """`order_by: [{col: desc_nulls_last}]` -> ORDER BY terms; the id is appended for a stable order."""
    terms: list[UnaryExpression[Any]] = []
    for item in order_by or []:
        for key, direction in item.items():
            if direction is None:
                continue
            column = source.c[key]
            term = column.desc() if direction.startswith("desc") else column.asc()
            if direction.endswith("nulls_first"):
                term = term.nulls_first()
            elif direction.endswith("nulls_last"):
                term = term.nulls_last()
            terms.append(term)
    return terms
