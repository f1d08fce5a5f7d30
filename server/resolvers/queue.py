"""register_agent and get_runs_in_queue, including our long-poll extension (`wait_seconds`).

A long poll waits in its worker thread on `QueueEvents` (woken at once by in-process changes) and re-reads the
database at least every `long_poll_recheck_s` (other server processes may write) and exactly when the next
future run becomes due. The effective `before` slides with the time waited, so a run becoming due while the
agent waits is returned at once.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import select, update

from server import db
from server.context import RequestContext
from server.errors import ApiError, NotFoundError
from server.limits import check_labels, check_name
from server.queue import next_due, queued_run_ids
from server.resolvers.read import ctx_of


def _tenant(ctx: RequestContext, requested: str | None) -> str:
    tenant_id = ctx.tenant_for(requested)
    if tenant_id is None:
        with ctx.read() as conn:
            tenant_id = conn.execute(select(db.tenant.c.id).order_by(db.tenant.c.created).limit(1)).scalar()
    if tenant_id is None:
        raise ApiError("Invalid tenant ID")
    return tenant_id


def resolve_register_agent(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    """De-duplicated on (tenant, name, type, core version, sorted labels) like Prefect Server."""
    ctx = ctx_of(info)
    tenant_id = _tenant(ctx, input.get("tenant_id"))
    check_labels(ctx.settings, input.get("labels"))
    check_name(ctx.settings, input.get("name"), "Agent name", required=False)
    labels = sorted(input.get("labels") or [])
    ag = db.agent
    with ctx.write() as conn:
        if conn.execute(select(db.tenant.c.id).where(db.tenant.c.id == tenant_id)).first() is None:
            raise NotFoundError(f"Tenant {tenant_id} not found.")
        rows = conn.execute(select(ag.c.id, ag.c.labels).where(
            ag.c.tenant_id == tenant_id, ag.c.name.is_not_distinct_from(input.get("name")),
            ag.c.type == input["type"], ag.c.core_version.is_not_distinct_from(ctx.core_version))).all()
        for row in rows:
            if sorted(row.labels or []) == labels:
                return {"id": row.id}
        agent_id = db.new_id()
        conn.execute(ag.insert().values(
            id=agent_id, tenant_id=tenant_id, name=input.get("name"), type=input["type"],
            core_version=ctx.core_version, labels=labels, agent_config_id=input.get("agent_config_id"),
            last_queried=db.utcnow(), created=db.utcnow()))
    return {"id": agent_id}


def _touch_agent(ctx: RequestContext) -> None:
    if ctx.agent_id:
        with ctx.write() as conn:
            stmt = update(db.agent).where(db.agent.c.id == ctx.agent_id)
            conn.execute(stmt.values(last_queried=db.utcnow()))


def resolve_get_runs_in_queue(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    settings, events = ctx.settings, ctx.services.events
    tenant_id = _tenant(ctx, input["tenant_id"])
    before = input.get("before") or db.utcnow()
    labels = input.get("labels") or []
    wait = min(max(input.get("wait_seconds") or 0.0, 0.0), settings.long_poll_max_s)
    _touch_agent(ctx)
    started = time.monotonic()
    while True:
        seen = events.generation
        elapsed = time.monotonic() - started
        horizon = before + timedelta(seconds=elapsed)
        with db.read_tx(ctx.engine) as conn:
            ids = queued_run_ids(conn, tenant_id, labels, horizon, settings.queue_limit)
            due = None if ids or elapsed >= wait else next_due(conn, tenant_id, horizon)
        if ids or elapsed >= wait or events.closed:
            return {"flow_run_ids": ids}
        timeout = min(settings.long_poll_recheck_s, wait - elapsed)
        if due is not None:
            timeout = min(timeout, max((due - horizon).total_seconds(), 0.0) + 0.001)
        events.wait(seen, timeout)


RESOLVERS: dict[str, Any] = {
    "Mutation.register_agent": resolve_register_agent,
    "Mutation.get_runs_in_queue": resolve_get_runs_in_queue,
}
