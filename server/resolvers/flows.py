"""Tenants, projects and flow registration (contract §3.6, §4.7)."""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from server import db
from server.context import RequestContext
from server.errors import ApiError, NotFoundError
from server.resolvers.read import ctx_of

MAX_FLOW_BYTES = 50 * 1024 * 1024
SUCCESS = {"success": True, "error": None}


def _text(value: Any, what: str, limit: int = 10_000) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"{what} must be a non-empty string.")
    if len(value) > limit:
        raise ApiError(f"{what} is too long (at most {limit} characters).")
    return value


def resolve_create_tenant(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    name, slug = _text(input["name"], "name", 255), _text(input["slug"], "slug", 255)
    tenant_id = db.new_id()
    try:
        with ctx.write() as conn:
            if conn.execute(select(db.tenant.c.id).where(db.tenant.c.slug == slug)).first():
                raise ApiError("Uniqueness violation.", "UNIQUENESS_VIOLATION")
            conn.execute(db.tenant.insert().values(id=tenant_id, name=name, slug=slug, created=db.utcnow()))
    except IntegrityError as exc:
        raise ApiError("Uniqueness violation.", "UNIQUENESS_VIOLATION") from exc
    return {"id": tenant_id}


def resolve_create_project(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    tenant_id = ctx.tenant_for(input.get("tenant_id"))
    name = _text(input["name"], "Project name", 255)
    project_id = db.new_id()
    try:
        with ctx.write() as conn:
            if conn.execute(select(db.tenant.c.id).where(db.tenant.c.id == tenant_id)).first() is None:
                raise NotFoundError(f"Tenant {tenant_id} not found.")
            taken = select(db.project.c.id).where(
                db.project.c.tenant_id == tenant_id, db.project.c.name == name)
            if conn.execute(taken).first() is not None:
                raise ApiError("Uniqueness violation.", "UNIQUENESS_VIOLATION")
            conn.execute(db.project.insert().values(
                id=project_id, tenant_id=tenant_id, name=name, description=input.get("description"),
                created=db.utcnow()))
    except IntegrityError as exc:
        raise ApiError("Uniqueness violation.", "UNIQUENESS_VIOLATION") from exc
    return {"id": project_id}


def decompress_flow(text: str) -> dict[str, Any]:
    """base64(gzip(json)) as written by prefect.utilities.graphql.compress, with a size cap."""
    try:
        raw = base64.b64decode(text, validate=True)
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = inflater.decompress(raw, MAX_FLOW_BYTES)
        if inflater.unconsumed_tail:
            raise ApiError("Invalid serialized_flow: larger than 50 MB once decompressed.")
        value = json.loads(data)
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise ApiError("Invalid serialized_flow: expected base64-encoded gzipped JSON.") from exc
    return value  # type: ignore[no-any-return]


def _core_version(flow: dict[str, Any]) -> str:
    version = flow.get("__version__")
    if not isinstance(version, str) or not version:
        raise ApiError("Invalid serialized_flow: '__version__' is required.")
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    if parts and tuple(parts) < (0, 6, 1):
        raise ApiError(f"Prefect backends require core version 0.6.1 or greater (got {version[:32]}).")
    return version[:64]


def _find_group(conn: Connection, project: Any, name: str, version_group_id: str | None) -> Any:
    """The newest flow of the version group (given, or that of the same name in the same project)."""
    flow = db.flow
    stmt = select(flow).where(flow.c.tenant_id == project.tenant_id)
    if version_group_id:
        stmt = stmt.where(flow.c.version_group_id == version_group_id)
    else:
        stmt = stmt.where(flow.c.project_id == project.id, flow.c.name == name)
    return conn.execute(stmt.order_by(flow.c.version.desc()).limit(1)).first()


def _newest_unarchived(conn: Connection, flow_group_id: str) -> str | None:
    stmt = (select(db.flow.c.id)
            .where(db.flow.c.flow_group_id == flow_group_id, db.flow.c.archived.is_(False))
            .order_by(db.flow.c.version.desc()).limit(1))
    return conn.execute(stmt).scalar()


def create_flow(ctx: RequestContext, serialized: Any, args: dict[str, Any]) -> str:
    """Store one flow version; archive the group's older versions; honour the idempotency key."""
    if not isinstance(serialized, dict):
        raise ApiError("Invalid serialized_flow: expected a JSON object.")
    name = _text(serialized.get("name"), "Flow name", 1000)
    core_version = _core_version(serialized)
    key = args.get("idempotency_key")
    with ctx.write() as conn:
        project = conn.execute(select(db.project).where(
            db.project.c.id == args["project_id"], ctx.scoped(db.project))).first()
        if project is None:
            raise NotFoundError(f"Project {args['project_id']} not found.")
        newest = _find_group(conn, project, name, args.get("version_group_id"))
        if newest is not None and key:
            group_key = conn.execute(select(db.flow_group.c.idempotency_key).where(
                db.flow_group.c.id == newest.flow_group_id)).scalar()
            existing = _newest_unarchived(conn, newest.flow_group_id) if group_key == key else None
            if existing:
                return existing
        group_id = newest.flow_group_id if newest is not None else _new_group(conn, project, name)
        if newest is not None:
            version_group = newest.version_group_id
        else:
            version_group = args.get("version_group_id") or group_id
        conn.execute(update(db.flow).where(db.flow.c.flow_group_id == group_id).values(archived=True))
        conn.execute(update(db.flow_group).where(db.flow_group.c.id == group_id).values(
            schedule_active=bool(args.get("set_schedule_active", True)),
            **({"idempotency_key": key} if key else {})))
        version = (newest.version + 1) if newest is not None else 1
        flow_id = _insert_flow(
            conn, project, group_id, version_group, version, serialized, core_version, args)
        add_tasks(conn, project.tenant_id, flow_id, serialized.get("tasks") or [])
        add_edges(conn, flow_id, serialized.get("edges") or [])
    return flow_id


def _new_group(conn: Connection, project: Any, name: str) -> str:
    group_id = db.new_id()
    conn.execute(db.flow_group.insert().values(
        id=group_id, tenant_id=project.tenant_id, name=name, settings={}, created=db.utcnow()))
    return group_id


def _insert_flow(conn: Connection, project: Any, group_id: str, version_group: str, version: int,
                 serialized: dict[str, Any], core_version: str, args: dict[str, Any]) -> str:
    flow_id = db.new_id()
    conn.execute(db.flow.insert().values(
        id=flow_id, tenant_id=project.tenant_id, project_id=project.id, flow_group_id=group_id,
        version_group_id=version_group, name=serialized["name"], version=version, core_version=core_version,
        description=args.get("description"), storage=serialized.get("storage"),
        environment=serialized.get("environment"), run_config=serialized.get("run_config"),
        parameters=serialized.get("parameters") or [], serialized_flow=serialized, settings={},
        archived=False, created=db.utcnow()))
    return flow_id


def add_tasks(conn: Connection, tenant_id: str, flow_id: str, tasks: Any) -> None:
    """Tasks are keyed by slug (unique per flow) and get fresh uuids; repeats are ignored."""
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ApiError("Invalid serialized tasks: expected a list of objects.")
    known = set(conn.execute(select(db.task.c.slug).where(db.task.c.flow_id == flow_id)).scalars())
    rows = []
    for item in tasks:
        slug = item.get("slug")
        if not isinstance(slug, str) or not slug:
            raise ApiError("Invalid serialized task: 'slug' is required.")
        if slug in known:
            continue
        known.add(slug)
        cache_key = item.get("cache_key")
        rows.append({
            "id": db.new_id(), "tenant_id": tenant_id, "flow_id": flow_id, "slug": slug,
            "name": str(item.get("name") or slug), "type": str(item.get("type") or ""),
            "cache_key": cache_key if isinstance(cache_key, str) else None, "created": db.utcnow(),
        })
    if rows:
        conn.execute(db.task.insert(), rows)


def add_edges(conn: Connection, flow_id: str, edges: Any) -> None:
    """Stored for completeness (the runner does not need them); edges naming unknown slugs are skipped."""
    if not isinstance(edges, list):
        raise ApiError("Invalid serialized edges: expected a list.")
    ids = dict(conn.execute(select(db.task.c.slug, db.task.c.id).where(db.task.c.flow_id == flow_id)).all())
    rows = []
    for item in edges:
        if not isinstance(item, dict):
            raise ApiError("Invalid serialized edge: expected an object.")
        up = ids.get((item.get("upstream_task") or {}).get("slug"))
        down = ids.get((item.get("downstream_task") or {}).get("slug"))
        if up and down:
            key = item.get("key")
            rows.append({"id": db.new_id(), "flow_id": flow_id, "upstream_task_id": up,
                         "downstream_task_id": down, "key": key if isinstance(key, str) else None,
                         "mapped": bool(item.get("mapped"))})
    if rows:
        conn.execute(db.edge.insert(), rows)


def resolve_create_flow_compressed(
    _obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]
) -> dict[str, Any]:
    serialized = decompress_flow(_text(input["serialized_flow"], "serialized_flow", 200 * 1024 * 1024))
    return {"id": create_flow(ctx_of(info), serialized, input)}


def resolve_create_flow(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    return {"id": create_flow(ctx_of(info), input["serialized_flow"], input)}


def _flow_row(conn: Connection, ctx: RequestContext, flow_id: str) -> Any:
    row = conn.execute(select(db.flow).where(db.flow.c.id == flow_id, ctx.scoped(db.flow))).first()
    if row is None:
        raise NotFoundError(f"Flow {flow_id} not found.")
    return row


def resolve_register_tasks(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    with ctx.write() as conn:
        row = _flow_row(conn, ctx, input["flow_id"])
        add_tasks(conn, row.tenant_id, row.id, input["serialized_tasks"])
    return SUCCESS


def resolve_register_edges(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    with ctx.write() as conn:
        add_edges(conn, _flow_row(conn, ctx, input["flow_id"]).id, input["serialized_edges"])
    return SUCCESS


def _schedule(active: bool) -> Any:
    def resolve(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        ctx = ctx_of(info)
        with ctx.write() as conn:
            row = _flow_row(conn, ctx, input["flow_id"])
            conn.execute(update(db.flow_group).where(db.flow_group.c.id == row.flow_group_id).values(
                schedule_active=active))
        return SUCCESS

    return resolve


RESOLVERS: dict[str, Any] = {
    "Mutation.create_tenant": resolve_create_tenant,
    "Mutation.create_project": resolve_create_project,
    "Mutation.create_flow_from_compressed_string": resolve_create_flow_compressed,
    "Mutation.create_flow": resolve_create_flow,
    "Mutation.register_tasks": resolve_register_tasks,
    "Mutation.register_edges": resolve_register_edges,
    "Mutation.set_schedule_active": _schedule(True),
    "Mutation.set_schedule_inactive": _schedule(False),
}
