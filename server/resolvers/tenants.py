"""Tenant visibility and creation: a caller sees only its own tenant, and only ADMIN creates tenants."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import select

from server import auth, db
from server.context import RequestContext
from server.errors import ApiError
from server.limits import check_name
from server.resolvers.read import Row, ctx_of, list_rows


def own_tenant_id(ctx: RequestContext) -> str | None:
    """The token's tenant; with --auth none the default (first) tenant, which Prefect clients use."""
    if ctx.tenant_id is not None:
        return ctx.tenant_id
    with ctx.read() as conn:
        first = select(db.tenant.c.id).order_by(db.tenant.c.created, db.tenant.c.id).limit(1)
        return conn.execute(first).scalar()


def resolve_tenant(_obj: Any, info: GraphQLResolveInfo, **args: Any) -> list[Row]:
    """Never lists other tenants: their names and slugs are theirs."""
    ctx = ctx_of(info)
    tenant_id = own_tenant_id(ctx)
    if tenant_id is None:
        return []
    return list_rows(ctx, "tenant", extra=db.tenant.c.id == tenant_id, **args)


def resolve_create_tenant(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    """A new tenant is outside every existing one, so no tenant's USER token may make one: ADMIN only."""
    ctx = ctx_of(info)
    ctx.require("ADMIN", "create_tenant")
    name = str(check_name(ctx.settings, input["name"], "Tenant name"))
    slug = str(check_name(ctx.settings, input["slug"], "Tenant slug"))
    try:
        return {"id": auth.create_tenant(ctx.engine, name, slug)}
    except auth.TenantExists as exc:
        raise ApiError("Uniqueness violation.", "UNIQUENESS_VIOLATION") from exc


RESOLVERS: dict[str, Any] = {
    "Query.tenant": resolve_tenant,
    "Mutation.create_tenant": resolve_create_tenant,
}
