"""Hasura-style read fields (tenant, project, flow, flow_run, task_run, log, ...) and nested relationships.

Top-level resolvers return plain dicts (one per row); relationship fields load lazily through the request's
shared read snapshot, so a query sees one consistent database state.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import ColumnElement, select, true

from server import __version__, db
from server.context import RequestContext
from server.errors import ApiError, NotFoundError
from server.filters import SPECS, order_clauses, where_clause
from server.limits import list_limit

Row = dict[str, Any]


def ctx_of(info: GraphQLResolveInfo) -> RequestContext:
    return info.context  # type: ignore[no-any-return]


def list_rows(
    ctx: RequestContext,
    kind: str,
    where: dict[str, Any] | None = None,
    order_by: list[dict[str, str]] | None = None,
    limit: int | None = None,
    offset: int | None = None,
    extra: ColumnElement[bool] | None = None,
    nested: bool = False,
) -> list[Row]:
    """Rows of one table, tenant-scoped, filtered, ordered (then by creation, for a stable order, unless the
    order already ends in the unique id: a redundant tail keeps an index from serving the ORDER BY).

    Every list is bounded (`list_limit`), and so is the sum of all lists of one request
    (`max_rows_per_request`); rows a multi-transaction write has not finished are hidden.
    """
    if offset is not None and offset < 0:
        raise ApiError("limit and offset must not be negative.", "BAD_USER_INPUT")
    table = SPECS[kind].table
    stmt = select(table).where(ctx.scoped(table), where_clause(kind, table, where), visible(kind))
    if extra is not None:
        stmt = stmt.where(extra)
    stmt = stmt.order_by(*order_clauses(table, order_by))
    if not any(item.get("id") for item in order_by or []):
        stmt = stmt.order_by(*(c for c in (table.c.get("created"), table.c.id) if c is not None))
    left = ctx.settings.max_rows_per_request - ctx.rows_read
    stmt = stmt.limit(min(list_limit(ctx.settings, limit, nested=nested), left + 1))  # +1: over the budget
    if offset:
        stmt = stmt.offset(offset)
    with ctx.read() as conn:
        rows = [dict(row._mapping) for row in conn.execute(stmt)]
    ctx.count_rows(len(rows))
    return rows


def visible(kind: str) -> ColumnElement[bool]:
    """A flow is visible once all its tasks are stored, a flow run once its task runs and Scheduled are."""
    if kind == "flow":
        return db.flow.c.ready.is_(True)
    if kind == "flow_run":
        return db.flow_run.c.state.is_not(None)
    return true()


def get_row(ctx: RequestContext, kind: str, row_id: str | None) -> Row | None:
    if row_id is None:
        return None
    table = SPECS[kind].table
    with ctx.read() as conn:
        stmt = select(table).where(table.c.id == row_id, ctx.scoped(table), visible(kind))
        row = conn.execute(stmt).first()
    return None if row is None else dict(row._mapping)


def _lister(kind: str) -> Any:
    def resolve(_obj: Any, info: GraphQLResolveInfo, **args: Any) -> list[Row]:
        return list_rows(ctx_of(info), kind, **args)

    return resolve


def _by_pk(kind: str) -> Any:
    def resolve(_obj: Any, info: GraphQLResolveInfo, id: str) -> Row | None:
        return get_row(ctx_of(info), kind, id)

    return resolve


def _parent(kind: str, key: str) -> Any:
    def resolve(obj: Row, info: GraphQLResolveInfo) -> Row | None:
        return get_row(ctx_of(info), kind, obj.get(key))

    return resolve


def resolve_task_runs(obj: Row, info: GraphQLResolveInfo, **args: Any) -> list[Row]:
    extra = db.task_run.c.flow_run_id == obj["id"]
    args.setdefault("order_by", [{"map_index": "asc"}])
    return list_rows(ctx_of(info), "task_run", extra=extra, nested=True, **args)


def resolve_tasks(obj: Row, info: GraphQLResolveInfo, where: dict[str, Any] | None = None) -> list[Row]:
    return list_rows(ctx_of(info), "task", where=where, extra=db.task.c.flow_id == obj["id"], nested=True)


def resolve_states(obj: Row, info: GraphQLResolveInfo, **args: Any) -> list[Row]:
    """The run's state history (oldest first unless asked); FLOW_RUN tokens see none (`run_scope`)."""
    extra = db.flow_run_state.c.flow_run_id == obj["id"]
    args.setdefault("order_by", [{"timestamp": "asc"}, {"version": "asc"}])
    return list_rows(ctx_of(info), "flow_run_state", extra=extra, nested=True, **args)


def resolve_flow_runs(obj: Row, info: GraphQLResolveInfo, **args: Any) -> list[Row]:
    """Prefect Server's `flow.flow_runs`: bounded like a root list (a flow may have 100,000 runs)."""
    extra = db.flow_run.c.flow_id == obj["id"]
    return list_rows(ctx_of(info), "flow_run", extra=extra, **args)


def resolve_schedule_active(obj: Row, info: GraphQLResolveInfo) -> bool | None:
    group = db.flow_group
    ctx = ctx_of(info)
    with ctx.read() as conn:
        active = conn.execute(select(group.c.schedule_active).where(
            group.c.id == obj.get("flow_group_id"), ctx.scoped(group))).scalar()
    return None if active is None else bool(active)


def resolve_hello(_obj: Any, _info: GraphQLResolveInfo) -> str:
    return "👋"


def resolve_api(_obj: Any, info: GraphQLResolveInfo) -> Row:
    """`flow_run_tokens` only with `--auth token`: without auth there is nothing such a token would limit."""
    capabilities = ["long_poll", "partial_states"]
    if ctx_of(info).settings.auth == "token":
        capabilities.append("flow_run_tokens")
    return {
        "backend": "SERVER", "mode": "normal", "version": __version__, "core_version": "1.4.1",
        "release_timestamp": None, "capabilities": capabilities, "auth_mode": ctx_of(info).settings.auth,
    }


def resolve_auth_info(_obj: Any, info: GraphQLResolveInfo) -> Row:
    ctx = ctx_of(info)
    if ctx.tenant_id is not None:
        return {"tenant_id": ctx.tenant_id, "api_token_scope": ctx.scope}
    first = list_rows(ctx, "tenant", limit=1)
    return {"tenant_id": first[0]["id"] if first else None, "api_token_scope": None}


def resolve_get_task_run_info(_obj: Any, info: GraphQLResolveInfo, task_run_id: str) -> Row:
    row = get_row(ctx_of(info), "task_run", task_run_id)
    if row is None:
        raise NotFoundError(f"Task run {task_run_id} not found.")
    return row


def resolve_settings(obj: Row, _info: GraphQLResolveInfo, path: str | None = None) -> Any:
    """`null` here silently disables flow-run heartbeats in the 1.4.1 runner, so never return it."""
    return obj.get("settings") or {}


RESOLVERS: dict[str, Any] = {
    "Query.hello": resolve_hello,
    "Query.api": resolve_api,
    "Query.auth_info": resolve_auth_info,
    "Query.get_task_run_info": resolve_get_task_run_info,
    **{f"Query.{kind}": _lister(kind) for kind in (
        "project", "flow", "flow_run", "task_run", "agent_config", "log", "agent")},  # tenant: tenants.py
    **{f"Query.{kind}_by_pk": _by_pk(kind) for kind in ("flow", "flow_run", "task_run")},
    "flow_run.flow": _parent("flow", "flow_id"),
    "flow_run.task_runs": resolve_task_runs,
    "flow_run.states": resolve_states,
    "flow_run.agent": _parent("agent", "agent_id"),
    "flow.flow_runs": resolve_flow_runs,
    "flow.is_schedule_active": resolve_schedule_active,
    "task_run.flow_run": _parent("flow_run", "flow_run_id"),
    "task_run.task": _parent("task", "task_id"),
    "flow.project": _parent("project", "project_id"),
    "flow.tasks": resolve_tasks,
    "flow.settings": resolve_settings,
    "agent_config.settings": resolve_settings,
}
