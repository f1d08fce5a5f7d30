"""Flow-run and task-run mutations other than state updates (contract §3.5, §3.7-§3.10, §4.6)."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from graphql import GraphQLResolveInfo
from sqlalchemy import Connection, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from server import db
from server.batches import cascade_cancelled, chunks
from server.context import RequestContext
from server.errors import ApiError, NotFoundError
from server.limits import check_count, check_json_size, check_key, check_labels, check_name
from server.resolvers.read import ctx_of
from server.states import FINISHED_STATES, Change, scheduled_state, set_flow_run_state, write_state

SUCCESS = {"success": True, "error": None}
PENDING = {"type": "Pending", "message": "Task run created"}
_ADJECTIVES = ("amber", "brisk", "calm", "daring", "eager", "fuzzy", "gentle", "hidden", "icy", "jolly",
               "keen", "lively", "mellow", "nimble", "proud", "quiet", "rapid", "shiny", "tidy", "vivid")
_NOUNS = ("badger", "bison", "crane", "dingo", "eagle", "ferret", "gecko", "heron", "ibis", "jackal",
          "koala", "lemur", "marten", "newt", "otter", "puffin", "quail", "raven", "stoat", "tapir")


def _random_name() -> str:
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}"


class FlowArchived(ApiError):
    """The flow asked for is an archived version (the scheduler stops that flow quietly on it)."""


class ScheduleStopped(ApiError):
    """An auto-scheduled run of a flow whose schedule was turned off or whose version was archived since
    the scheduler read it: no run is made."""


def _select_flow(conn: Connection, ctx: RequestContext, args: dict[str, Any]) -> Any:
    flow = db.flow
    if args.get("flow_id"):
        stmt = select(flow).where(flow.c.id == args["flow_id"], ctx.scoped(flow), flow.c.ready.is_(True))
        row = conn.execute(stmt).first()
        if row is None:
            raise NotFoundError(f"Flow {args['flow_id']} not found.")
        if row.archived:
            raise FlowArchived(f"Flow {row.id} is archived.")
        return row
    if args.get("version_group_id"):
        row = conn.execute(select(flow).where(
            flow.c.version_group_id == args["version_group_id"], flow.c.archived.is_(False), ctx.scoped(flow),
            flow.c.ready.is_(True),
        ).order_by(flow.c.version.desc()).limit(1)).first()
        if row is None:
            raise NotFoundError(f"No unarchived flow found in version group {args['version_group_id']}.")
        return row
    raise ApiError("Either flow_id or version_group_id must be provided.")


def _labels_of(config: Any) -> list[str] | None:
    labels = config.get("labels") if isinstance(config, dict) else None
    return labels if isinstance(labels, list) else None


def pick_labels(args: dict[str, Any], group: Any, flow: Any) -> list[str]:
    """The first present of: input labels, input run_config, flow group, group run_config, flow (§4.6)."""
    candidates = (args.get("labels"), _labels_of(args.get("run_config")), group.labels,
                  _labels_of(group.run_config), _labels_of(flow.run_config), _labels_of(flow.environment))
    for labels in candidates:
        if labels is not None:
            return sorted(str(label) for label in labels)
    return []


def pick_parameters(args: dict[str, Any], group: Any, flow: Any) -> dict[str, Any]:
    declared = [p for p in (flow.parameters or []) if isinstance(p, dict) and isinstance(p.get("name"), str)]
    given = args.get("parameters")
    if given is not None and not isinstance(given, dict):
        raise ApiError("parameters must be a JSON object.")
    params = {p["name"]: p["default"] for p in declared if p.get("default")}
    params.update(group.default_parameters or {})
    params.update(given or {})
    missing = {p["name"] for p in declared if p.get("required")} - params.keys()
    if missing:
        raise ApiError(f"Required parameters were not supplied: {sorted(missing)}")
    return params


def _check_run_input(ctx: RequestContext, args: dict[str, Any]) -> str | None:
    """Checks the input; returns the idempotency key (None for none or an empty one)."""
    settings = ctx.settings
    for key in ("context", "run_config", "parameters"):
        if args.get(key) is not None and not isinstance(args[key], dict):
            raise ApiError(f"{key} must be a JSON object.", "BAD_USER_INPUT")
        check_json_size(settings, args.get(key), key)
    check_name(settings, args.get("flow_run_name") or None, "flow_run_name", required=False)
    check_labels(settings, args.get("labels"))
    return check_key(settings, args.get("idempotency_key"), "idempotency_key")


def create_flow_run(ctx: RequestContext, args: dict[str, Any], *, auto_scheduled: bool = False) -> str:
    """Insert without a state, pre-create its Pending task runs in batches, then Scheduled (version 1).

    A run without a state is invisible (reads) and not queueable, so a crash half-way shows nothing; the
    client's retry with the same idempotency key finds the run and finishes it. `auto_scheduled` marks the
    scheduler's runs (not an API input).
    """
    key = _check_run_input(ctx, args)
    with ctx.write() as conn:
        flow = _select_flow(conn, ctx, args)
        row = _existing_run(conn, flow.id, key)
        if row is None:
            try:
                with conn.begin_nested():
                    row = _insert_run(conn, flow, args, key, auto_scheduled)
            except IntegrityError:
                # Another replica inserted a run with this key after our look-up (the unique index
                # uq_flow_run_idempotency waited for its commit): that run is the one.
                row = _existing_run(conn, flow.id, key) if key else None
                if row is None:
                    raise
    if row.state is None:
        _precreate_task_runs(ctx, flow, row.id)
        _schedule_run(ctx, row, auto_scheduled)
        ctx.services.events.notify()
    return row.id  # type: ignore[no-any-return]


def _existing_run(conn: Connection, flow_id: str, key: str | None) -> Any:
    if not key:
        return None
    fr = db.flow_run
    stmt = select(fr).where(fr.c.flow_id == flow_id, fr.c.idempotency_key == key).order_by(fr.c.created)
    return conn.execute(stmt.limit(1)).first()


def _insert_run(
    conn: Connection, flow: Any, args: dict[str, Any], key: str | None, auto_scheduled: bool
) -> Any:
    group = _group_of(conn, flow.id, auto_scheduled)
    run_id = db.new_id()
    start: datetime = args.get("scheduled_start_time") or db.utcnow()
    conn.execute(db.flow_run.insert().values(
        id=run_id, tenant_id=flow.tenant_id, flow_id=flow.id,
        name=args.get("flow_run_name") or _random_name(), version=0, scheduled_start_time=start,
        parameters=pick_parameters(args, group, flow),
        context=args.get("context") or {}, labels=pick_labels(args, group, flow),
        run_config=args.get("run_config") or group.run_config or flow.run_config,
        idempotency_key=key, times_resurrected=0, auto_scheduled=auto_scheduled, created=db.utcnow()))
    return conn.execute(select(db.flow_run).where(db.flow_run.c.id == run_id)).one()


def _group_of(conn: Connection, flow_id: str, auto_scheduled: bool) -> Any:
    """The flow's group; for the scheduler's runs locked and checked: the schedule still on and the version
    not archived. Turning the schedule off or archiving writes the group row too, so either that writer
    waits for this transaction (and its removal then finds the run) or this one sees its change."""
    flow, group = db.flow, db.flow_group
    stmt = select(group).where(group.c.id == select(flow.c.flow_group_id).where(
        flow.c.id == flow_id).scalar_subquery())
    if not auto_scheduled:
        return conn.execute(stmt).one()
    row = conn.execute(stmt.with_for_update()).one()
    archived = conn.execute(select(flow.c.archived).where(flow.c.id == flow_id)).scalar()
    if archived or not row.schedule_active:
        raise ScheduleStopped(f"Flow {flow_id}: its schedule is off or the version archived.")
    return row


def _schedule_run(ctx: RequestContext, row: Any, auto_scheduled: bool = False) -> None:
    """The run's first state, once: the row is locked (PostgreSQL; SQLite's write lock covers it) so two
    requests finishing one run (its idempotency key on two replicas) cannot both write Scheduled.

    A scheduler's run whose schedule went off since its insert becomes a tombstone instead (no key, no
    state), which the next scheduler round removes."""
    fr = db.flow_run
    stopped: ScheduleStopped | None = None
    with ctx.write() as conn:
        state = conn.execute(select(fr.c.state).where(fr.c.id == row.id).with_for_update()).scalar()
        if state is None and auto_scheduled:
            try:
                _group_of(conn, row.flow_id, auto_scheduled)
            except ScheduleStopped as exc:
                stopped = exc
                conn.execute(update(fr).where(fr.c.id == row.id, fr.c.state.is_(None)).values(
                    idempotency_key=None))
        if state is None and stopped is None:  # a concurrent retry may have finished it
            change = Change(scheduled_state(row.scheduled_start_time, "Flow run scheduled."))
            write_state(conn, db.flow_run, "flow", row.id, change, db.flow_run.c.id.is_not(None))
    if stopped is not None:
        raise stopped


def _precreate_task_runs(ctx: RequestContext, flow: Any, run_id: str) -> None:
    """One Pending task run per task (map_index -1); those a crashed attempt already wrote are kept.

    Several requests may finish one run at once (retries with its idempotency key, on several replicas):
    each inserts what it found missing and skips rows another one inserted meanwhile, so every one of
    them returns a complete run.
    """
    tr = db.task_run
    with db.read_tx(ctx.engine) as conn:
        task = db.task
        tasks = conn.execute(select(task.c.id, task.c.cache_key).where(task.c.flow_id == flow.id)).all()
        existing = select(tr.c.task_id).where(tr.c.flow_run_id == run_id, tr.c.map_index == -1)
        have = set(conn.execute(existing).scalars())
    now = db.utcnow()
    rows = [_pending_task_run(flow.tenant_id, run_id, t.id, -1, t.cache_key, now)
            for t in tasks if t.id not in have]
    try:
        for batch in chunks(rows, ctx.settings.write_batch_rows):
            with ctx.write() as conn:
                conn.execute(_insert_skipping_duplicates(conn, tr), list(batch))
    except IntegrityError as exc:  # a concurrent retry of the same creation, on a database without upserts
        raise ApiError("The flow run is being created by another request; try again.", "CONFLICT") from exc


def _insert_skipping_duplicates(conn: Connection, table: Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING where the database has it (SQLite and PostgreSQL do)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return table.insert()


def _pending_task_run(
    tenant_id: str, flow_run_id: str, task_id: str, map_index: int, cache_key: str | None, now: datetime
) -> dict[str, Any]:
    """A new task run row: Pending at version 0."""
    return {
        "id": db.new_id(), "tenant_id": tenant_id, "flow_run_id": flow_run_id, "task_id": task_id,
        "map_index": map_index, "version": 0, "state": "Pending", "serialized_state": PENDING,
        "state_timestamp": now, "state_message": PENDING["message"], "cache_key": cache_key, "created": now,
    }


def resolve_create_flow_run(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    return {"id": create_flow_run(ctx_of(info), input)}


def _cancel_state(kind: str) -> dict[str, Any]:
    message = "Flow run is cancelling" if kind == "Cancelling" else "Flow run is cancelled"
    return {"type": kind, "message": message, "context": {}, "cached_inputs": {},
            "_result": {"type": "NoResultType", "__version__": "1.4.1"}, "__version__": "1.4.1"}


def resolve_cancel_flow_run(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    """Running -> Cancelling (the runner stops itself); not finished -> Cancelled; finished -> unchanged.

    The run's state is written first, in one short transaction; the cascade to its task runs follows in
    batches. A cancel of a run that is Cancelled already runs the cascade again, which finishes one that
    was interrupted and changes nothing otherwise.
    """
    ctx, run_id = ctx_of(info), input["flow_run_id"]
    with ctx.write() as conn:
        stmt = select(db.flow_run).where(db.flow_run.c.id == run_id, ctx.scoped(db.flow_run),
                                         db.flow_run.c.state.is_not(None))
        row = conn.execute(stmt).first()
        if row is None:
            raise NotFoundError(f"Flow run {run_id} not found.")
        if row.state in FINISHED_STATES or row.state == "Cancelling":
            target, state = row.state, row.serialized_state
        else:
            target = "Cancelling" if row.state == "Running" else "Cancelled"
            state = _cancel_state(target)
            set_flow_run_state(conn, run_id, Change(state), ctx.scoped(db.flow_run))
    if target == "Cancelled":
        cascade_cancelled(ctx, run_id, state if isinstance(state, dict) else _cancel_state(target))
    return {"state": target}


def _update_run(ctx: RequestContext, kind: str, run_id: str, **values: Any) -> dict[str, Any]:
    """One UPDATE of a flow or task run's row, NOT_FOUND when no row (of this tenant) has the id."""
    table = db.flow_run if kind == "flow_run" else db.task_run
    with ctx.write() as conn:
        stmt = update(table).where(table.c.id == run_id, ctx.scoped(table)).values(**values)
        if conn.execute(stmt).rowcount == 0:
            raise NotFoundError(f"{kind.replace('_', ' ').capitalize()} {run_id} not found.")
    return SUCCESS


def _rename(kind: str) -> Any:
    def resolve(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        ctx = ctx_of(info)
        name = check_name(ctx.settings, input["name"], "name")
        return _update_run(ctx, kind, input[f"{kind}_id"], name=name)

    return resolve


def _heartbeat(kind: str) -> Any:
    def resolve(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
        return _update_run(ctx_of(info), kind, input[f"{kind}_id"], heartbeat=db.utcnow())

    return resolve


def get_or_create_task_run(
    ctx: RequestContext, flow_run_id: str, task_id: str, map_index: int
) -> dict[str, Any]:
    """Mapped children (map_index >= 0) are created on demand, Pending at version 0."""
    for _ in range(3):
        try:
            with ctx.write() as conn:
                return _get_or_create(conn, ctx, flow_run_id, task_id, map_index)
        except IntegrityError:
            continue  # a concurrent creator won; read its row
    raise ApiError("Could not create the task run; try again.")


def _get_or_create(
    conn: Connection, ctx: RequestContext, flow_run_id: str, task_id: str, map_index: int
) -> Any:
    run = conn.execute(select(db.flow_run.c.flow_id, db.flow_run.c.tenant_id).where(
        db.flow_run.c.id == flow_run_id, ctx.scoped(db.flow_run))).first()
    if run is None:
        raise NotFoundError(f"Flow run {flow_run_id} not found.")
    task = conn.execute(select(db.task.c.cache_key).where(
        db.task.c.id == task_id, db.task.c.flow_id == run.flow_id)).first()
    if task is None:
        raise ApiError("Invalid task ID.")
    tr = db.task_run
    where = (tr.c.flow_run_id == flow_run_id, tr.c.task_id == task_id, tr.c.map_index == map_index)
    row = conn.execute(select(tr).where(*where)).first()
    if row is None:
        conn.execute(tr.insert().values(
            _pending_task_run(run.tenant_id, flow_run_id, task_id, map_index, task.cache_key, db.utcnow())))
        row = conn.execute(select(tr).where(*where)).one()
    return dict(row._mapping)


def resolve_get_or_create_task_run_info(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> Any:
    map_index = input.get("map_index")
    return get_or_create_task_run(ctx_of(info), input["flow_run_id"], input["task_id"],
                                  -1 if map_index is None else map_index)


def _log_row(item: dict[str, Any], tenants: dict[str, str]) -> dict[str, Any]:
    level = item.get("level")
    return {
        "id": db.new_id(), "tenant_id": tenants[item["flow_run_id"]], "flow_run_id": item["flow_run_id"],
        "task_run_id": item.get("task_run_id"), "timestamp": item.get("timestamp") or db.utcnow(),
        "name": item.get("name"), "level": (level or "INFO").upper()[:16], "message": item.get("message"),
        "info": item.get("info"), "created": db.utcnow(),
    }


def _check_logs(ctx: RequestContext, logs: list[dict[str, Any]]) -> None:
    what = "Number of log entries in one write_run_logs call"
    check_count(ctx.settings, "max_logs_per_request", what, len(logs))
    for item in logs:
        message = item.get("message")
        size = len(message.encode("utf-8", "surrogatepass")) if isinstance(message, str) else 0
        check_count(ctx.settings, "max_log_message_bytes", "Size of a log message in bytes", size)


def resolve_write_run_logs(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    """All-or-nothing: a log naming an unknown flow run rejects the batch."""
    ctx, logs = ctx_of(info), input["logs"]
    _check_logs(ctx, logs)
    run_ids = {item["flow_run_id"] for item in logs}
    with ctx.write() as conn:
        tenants = dict(conn.execute(select(db.flow_run.c.id, db.flow_run.c.tenant_id).where(
            db.flow_run.c.id.in_(run_ids), ctx.scoped(db.flow_run))).all())
        unknown = sorted(run_ids - tenants.keys())
        if unknown:
            raise NotFoundError(f"Flow run {unknown[0]} not found.")
        if logs:
            conn.execute(db.log.insert(), [_log_row(item, tenants) for item in logs])
    return SUCCESS


RESOLVERS: dict[str, Any] = {
    "Mutation.create_flow_run": resolve_create_flow_run,
    "Mutation.cancel_flow_run": resolve_cancel_flow_run,
    "Mutation.set_flow_run_name": _rename("flow_run"),
    "Mutation.set_task_run_name": _rename("task_run"),
    "Mutation.update_flow_run_heartbeat": _heartbeat("flow_run"),
    "Mutation.update_task_run_heartbeat": _heartbeat("task_run"),
    "Mutation.get_or_create_task_run_info": resolve_get_or_create_task_run_info,
    "Mutation.write_run_logs": resolve_write_run_logs,
}
