"""Tenants, projects and flow registration (contract §3.6, §4.7)."""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import Connection, func, select, update
from sqlalchemy.exc import IntegrityError

from server import auto_runs, db, scheduler_wake
from server.batches import insert_in_batches
from server.context import RequestContext
from server.errors import ApiError, NotFoundError
from server.limits import check_count, check_key, check_name
from server.resolvers.read import ctx_of
from server.schedules import check_schedule

MAX_FLOW_BYTES = 50 * 1024 * 1024
SUCCESS = {"success": True, "error": None}


def _text(value: Any, what: str, limit: int = 10_000) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"{what} must be a non-empty string.")
    if len(value) > limit:
        raise ApiError(f"{what} is too long (at most {limit} characters).")
    return value


def resolve_create_project(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    tenant_id = ctx.tenant_for(input.get("tenant_id"))
    name = str(check_name(ctx.settings, input["name"], "Project name"))
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
    """The newest flow of the version group (given, or that of the same name in the same project).

    Rows still being written count too: a concurrent first registration of the same name then joins the
    same flow group, and a retry after a crash reuses the group its interrupted attempt created.
    """
    flow = db.flow
    stmt = select(flow).where(flow.c.tenant_id == project.tenant_id)
    if version_group_id:
        stmt = stmt.where(flow.c.version_group_id == version_group_id)
    else:
        stmt = stmt.where(flow.c.project_id == project.id, flow.c.name == name)
    return conn.execute(stmt.order_by(flow.c.version.desc()).limit(1)).first()


def _newest_unarchived(conn: Connection, flow_group_id: str) -> str | None:
    stmt = (select(db.flow.c.id)
            .where(db.flow.c.flow_group_id == flow_group_id, db.flow.c.archived.is_(False),
                   db.flow.c.ready.is_(True))
            .order_by(db.flow.c.version.desc()).limit(1))
    return conn.execute(stmt).scalar()


def create_flow(ctx: RequestContext, serialized: Any, args: dict[str, Any]) -> str:
    """Store one flow version; archive the group's older versions; honour the idempotency key.

    Written in stages so no transaction holds the write lock for long: the flow row (not ready, so
    invisible), its tasks and edges in batches, then one short transaction that publishes it. A crash
    before that leaves an invisible row that nothing reads.
    """
    if not isinstance(serialized, dict):
        raise ApiError("Invalid serialized_flow: expected a JSON object.", "BAD_USER_INPUT")
    settings = ctx.settings
    name = check_name(settings, serialized.get("name"), "Flow name")
    core_version = _core_version(serialized)
    _check_schedule(serialized, bool(args.get("set_schedule_active", True)))
    key = check_key(settings, args.get("idempotency_key"), "idempotency_key")
    tasks = task_rows(ctx, serialized.get("tasks") or [], set())  # over the limit: refused before any write
    edges = _edges_of(ctx, serialized.get("edges") or [])
    with ctx.write() as conn:
        project = conn.execute(select(db.project).where(
            db.project.c.id == args["project_id"], ctx.scoped(db.project))).first()
        if project is None:
            raise NotFoundError(f"Project {args['project_id']} not found.")
        newest = _find_group(conn, project, str(name), args.get("version_group_id"))
        if newest is not None and key:
            group_key = conn.execute(select(db.flow_group.c.idempotency_key).where(
                db.flow_group.c.id == newest.flow_group_id)).scalar()
            existing = _newest_unarchived(conn, newest.flow_group_id) if group_key == key else None
            if existing:
                return existing
        group_id = newest.flow_group_id if newest is not None else _new_group(conn, project, str(name))
        version_group = (newest.version_group_id if newest is not None
                         else args.get("version_group_id") or group_id)
        flow_id = _insert_flow(conn, project, group_id, version_group, serialized, core_version, args)
    _store_tasks_and_edges(ctx, project.tenant_id, flow_id, tasks, edges)
    _publish(ctx, flow_id, group_id, args, key)
    # The archived versions' unclaimed runs go; this version's schedule takes over at the next round.
    auto_runs.remove_unclaimed(ctx.engine, ctx.settings.write_batch_rows, group_id, archived_only=True)
    if args.get("set_schedule_active", True):
        scheduler_wake.wake(ctx.services.instance_id)
    return flow_id


def _check_schedule(serialized: dict[str, Any], activate: bool) -> None:
    """A schedule the scheduler could not honour is refused now, not silently never run; required
    parameters are checked only when the schedule is turned on, as Prefect Server does."""
    schedule = serialized.get("schedule")
    if check_schedule(schedule) is None or not activate:
        return
    _check_required(serialized.get("parameters"), schedule, {})


def _check_required(parameters: Any, schedule: Any, group_defaults: Any) -> None:
    """Every required parameter must get a value from each clock (or the flow group's defaults)."""
    params = parameters if isinstance(parameters, list) else []
    required = {p.get("name") for p in params if isinstance(p, dict) and p.get("required")}
    required -= set(group_defaults if isinstance(group_defaults, dict) else {})
    clocks = schedule.get("clocks") if isinstance(schedule, dict) else None
    for clock in clocks if isinstance(clocks, list) else []:
        defaults = clock.get("parameter_defaults") if isinstance(clock, dict) else None
        missing = required - set(defaults if isinstance(defaults, dict) else {})
        if missing:
            raise ApiError(
                f"Can not schedule a flow that has required parameters: {sorted(map(str, missing))} have no "
                "value in the parameter_defaults of every clock of its schedule.", "BAD_USER_INPUT")


def _publish(ctx: RequestContext, flow_id: str, group_id: str, args: dict[str, Any], key: str | None) -> None:
    """The newest version number, the older versions archived and the flow visible: all at once.

    Only published versions are archived: a concurrent registration of the same group still being written
    publishes later as the newest version (and archives this one then), never as an archived flow.
    """
    flow = db.flow
    with ctx.write() as conn:
        newest = conn.execute(select(func.max(flow.c.version)).where(
            flow.c.flow_group_id == group_id, flow.c.ready.is_(True))).scalar()
        conn.execute(update(flow).where(flow.c.flow_group_id == group_id, flow.c.id != flow_id,
                                        flow.c.ready.is_(True)).values(archived=True))
        mine = (flow.c.id == flow_id) & flow.c.ready.is_(False) & flow.c.archived.is_(False)
        published = conn.execute(update(flow).where(mine).values(
            version=(newest or 0) + 1, ready=True, archived=False))
        if published.rowcount != 1:  # being removed as an abandoned registration (see server.abandoned)
            raise ApiError("The flow registration took too long and was discarded; register it again.",
                           "CONFLICT")
        conn.execute(update(db.flow_group).where(db.flow_group.c.id == group_id).values(
            schedule_active=bool(args.get("set_schedule_active", True)),
            **({"idempotency_key": key} if key else {})))


def _new_group(conn: Connection, project: Any, name: str) -> str:
    group_id = db.new_id()
    conn.execute(db.flow_group.insert().values(
        id=group_id, tenant_id=project.tenant_id, name=name, settings={}, created=db.utcnow()))
    return group_id


def _insert_flow(conn: Connection, project: Any, group_id: str, version_group: str,
                 serialized: dict[str, Any], core_version: str, args: dict[str, Any]) -> str:
    flow_id = db.new_id()
    conn.execute(db.flow.insert().values(
        id=flow_id, tenant_id=project.tenant_id, project_id=project.id, flow_group_id=group_id,
        version_group_id=version_group, name=serialized["name"], version=0, core_version=core_version,
        description=args.get("description"), storage=serialized.get("storage"),
        environment=serialized.get("environment"), run_config=serialized.get("run_config"),
        parameters=serialized.get("parameters") or [], serialized_flow=serialized,
        schedule=serialized.get("schedule") or None, settings={},
        archived=False, ready=False, created=db.utcnow()))
    return flow_id


def task_rows(ctx: RequestContext, tasks: Any, known: set[str]) -> list[dict[str, Any]]:
    """New task rows (fresh uuids, keyed by slug, repeats ignored), within `max_tasks_per_flow`."""
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ApiError("Invalid serialized tasks: expected a list of objects.", "BAD_USER_INPUT")
    if len(tasks) > ctx.settings.max_tasks_per_flow:  # refused before a single slug is even read
        check_count(ctx.settings, "max_tasks_per_flow", "Number of tasks in the flow", len(tasks))
    slugs = set(known)
    rows = []
    for item in tasks:
        slug = item.get("slug")
        if not isinstance(slug, str) or not slug:
            raise ApiError("Invalid serialized task: 'slug' is required.", "BAD_USER_INPUT")
        if slug in slugs:
            continue
        slugs.add(slug)
        cache_key = item.get("cache_key")
        rows.append({
            "slug": slug, "name": str(item.get("name") or slug), "type": str(item.get("type") or ""),
            "cache_key": cache_key if isinstance(cache_key, str) else None,
        })
    check_count(ctx.settings, "max_tasks_per_flow", "Number of tasks in the flow", len(slugs))
    return rows


def _edges_of(ctx: RequestContext, edges: Any) -> list[dict[str, Any]]:
    if not isinstance(edges, list) or not all(isinstance(e, dict) for e in edges):
        raise ApiError("Invalid serialized edges: expected a list of objects.", "BAD_USER_INPUT")
    check_count(ctx.settings, "max_edges_per_flow", "Number of edges in the flow", len(edges))
    return edges


def _store_tasks_and_edges(ctx: RequestContext, tenant_id: str, flow_id: str,
                           tasks: list[dict[str, Any]], edges: list[dict[str, Any]]) -> None:
    now = db.utcnow()
    rows = [{**t, "id": db.new_id(), "tenant_id": tenant_id, "flow_id": flow_id, "created": now}
            for t in tasks]
    insert_in_batches(ctx, db.task, rows)
    ids = {row["slug"]: row["id"] for row in rows}
    insert_in_batches(ctx, db.edge, edge_rows(flow_id, ids, edges))


def _task_ids(conn: Connection, flow_id: str) -> dict[str, str]:
    return dict(conn.execute(select(db.task.c.slug, db.task.c.id).where(db.task.c.flow_id == flow_id)).all())


def edge_rows(flow_id: str, ids: dict[str, str], edges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored for completeness (the runner does not need them); edges naming unknown slugs are skipped."""
    rows = []
    for item in edges:
        up = ids.get(str((item.get("upstream_task") or {}).get("slug")))
        down = ids.get(str((item.get("downstream_task") or {}).get("slug")))
        if up and down:
            key = item.get("key")
            rows.append({"id": db.new_id(), "flow_id": flow_id, "upstream_task_id": up,
                         "downstream_task_id": down, "key": key if isinstance(key, str) else None,
                         "mapped": bool(item.get("mapped"))})
    return rows


def resolve_create_flow_compressed(
    _obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]
) -> dict[str, Any]:
    serialized = decompress_flow(_text(input["serialized_flow"], "serialized_flow", 200 * 1024 * 1024))
    return {"id": create_flow(ctx_of(info), serialized, input)}


def resolve_create_flow(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    return {"id": create_flow(ctx_of(info), input["serialized_flow"], input)}


def _flow_row(conn: Connection, ctx: RequestContext, flow_id: str) -> Any:
    row = conn.execute(select(db.flow).where(
        db.flow.c.id == flow_id, ctx.scoped(db.flow), db.flow.c.ready.is_(True))).first()
    if row is None:
        raise NotFoundError(f"Flow {flow_id} not found.")
    return row


def _flow_tasks(ctx: RequestContext, flow_id: str) -> tuple[Any, dict[str, str]]:
    with db.read_tx(ctx.engine) as conn:
        row = _flow_row(conn, ctx, flow_id)
        return row, _task_ids(conn, row.id)


def resolve_register_tasks(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    row, ids = _flow_tasks(ctx, input["flow_id"])
    tasks = task_rows(ctx, input["serialized_tasks"], set(ids))
    try:
        _store_tasks_and_edges(ctx, row.tenant_id, row.id, tasks, [])
    except IntegrityError as exc:  # the same slug registered concurrently
        raise ApiError("Tasks of this flow are being registered by another request; try again.",
                       "CONFLICT") from exc
    return SUCCESS


def resolve_register_edges(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    row, ids = _flow_tasks(ctx, input["flow_id"])
    insert_in_batches(ctx, db.edge, edge_rows(row.id, ids, _edges_of(ctx, input["serialized_edges"])))
    return SUCCESS


def _schedule(active: bool) -> Any:
    """On: the scheduler creates the runs at its next round (woken now). Off: the flow group's future
    auto-scheduled runs that no agent claimed are deleted, like Prefect Server."""
    def resolve(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        ctx = ctx_of(info)
        with ctx.write() as conn:
            row = _flow_row(conn, ctx, input["flow_id"])
            if active:
                defaults = conn.execute(select(db.flow_group.c.default_parameters).where(
                    db.flow_group.c.id == row.flow_group_id)).scalar()
                _check_required(row.parameters, row.schedule, defaults)
            conn.execute(update(db.flow_group).where(db.flow_group.c.id == row.flow_group_id).values(
                schedule_active=active))
        if active:
            scheduler_wake.wake(ctx.services.instance_id)
        else:
            auto_runs.remove_unclaimed(ctx.engine, ctx.settings.write_batch_rows, row.flow_group_id)
        return SUCCESS

    return resolve


RESOLVERS: dict[str, Any] = {
    "Mutation.create_project": resolve_create_project,
    "Mutation.create_flow_from_compressed_string": resolve_create_flow_compressed,
    "Mutation.create_flow": resolve_create_flow,
    "Mutation.register_tasks": resolve_register_tasks,
    "Mutation.register_edges": resolve_register_edges,
    "Mutation.set_schedule_active": _schedule(True),
    "Mutation.set_schedule_inactive": _schedule(False),
}
