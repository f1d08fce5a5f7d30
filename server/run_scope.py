"""What a FLOW_RUN token may do: the one place that decides, so a new resolver cannot forget it.

A flow container holds a token for its own run only. Two layers enforce that:

* `check_root_field` runs before every root field of Query and Mutation (`server.schema` wraps them all,
  including ones added later): a field not in `ROOT_FIELDS` is FORBIDDEN, and a field that names runs in
  its arguments (ids, input elements) must name only this run and its task runs. The refusal reads the
  same whether the other run exists or not, so it leaks nothing.
* `row_condition` is AND-ed into `RequestContext.scoped()`, which every read and write of run data already
  applies for tenants: list queries (`flow_run(where: {})`, `task_run`, `log`, ...) and nested fields see
  only this run, its task runs and logs, its flow, that flow's tasks and project; every other table is
  empty for such a token.

The allowed fields are what `prefect execute flow-run` (Prefect 1.4.1 CloudFlowRunner/CloudTaskRunner)
sends, plus the harmless start-up reads (`hello`, `api`, `auth_info`, `tenant`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, FromClause, false, func, select, true

from server import db
from server.errors import ForbiddenError

if TYPE_CHECKING:
    from server.context import RequestContext

Args = Mapping[str, Any]
Check = Callable[["RequestContext", Args], None]
ID_CHUNK = 500  # ids per membership query (SQLite's bound-parameter limit stays far away)


def row_condition(source: FromClause, flow_run_id: str) -> ColumnElement[bool]:
    """The rows of `source` (a table or an alias of one) that belong to the flow run."""
    name = getattr(getattr(source, "element", source), "name", None)
    run_flow = select(db.flow_run.c.flow_id).where(db.flow_run.c.id == flow_run_id).scalar_subquery()
    if name == "flow_run":
        return source.c.id == flow_run_id
    if name in ("task_run", "log"):
        return source.c.flow_run_id == flow_run_id
    if name == "flow":
        return source.c.id == run_flow
    if name == "task":
        return source.c.flow_id == run_flow
    if name == "project":
        return source.c.id == select(db.flow.c.project_id).where(db.flow.c.id == run_flow).scalar_subquery()
    if name == "tenant":  # the `tenant` query already lists only the token's own tenant
        return true()
    return false()


def refusal(flow_run_id: str, detail: str) -> ForbiddenError:
    return ForbiddenError(f"FORBIDDEN: this API token is for flow run {flow_run_id} only; {detail}.")


def check_root_field(ctx: RequestContext, field: str, args: Args) -> None:
    """Raise FORBIDDEN unless a FLOW_RUN token may use this root field with these arguments."""
    if ctx.flow_run_id is None:
        return
    check = ROOT_FIELDS.get(field)
    if check is None:
        raise refusal(ctx.flow_run_id, f"{field} is not allowed with it")
    check(ctx, args)


def _any(_ctx: RequestContext, _args: Args) -> None:
    """No run named in the arguments; the rows returned are limited by `row_condition`."""


def _own_run(ctx: RequestContext, run_ids: Iterable[Any]) -> None:
    for run_id in run_ids:
        if run_id != ctx.flow_run_id:
            raise refusal(str(ctx.flow_run_id), f"flow run {run_id} is outside it")


def _own_task_runs(ctx: RequestContext, task_run_ids: Iterable[Any]) -> None:
    """Each id must be a task run of this flow run; an unknown id is refused like another run's."""
    wanted = sorted({str(i) for i in task_run_ids if i is not None})
    tr = db.task_run
    for start in range(0, len(wanted), ID_CHUNK):
        chunk = wanted[start:start + ID_CHUNK]
        with ctx.read() as conn:
            found = set(conn.execute(select(tr.c.id).where(
                tr.c.id.in_(chunk), tr.c.flow_run_id == ctx.flow_run_id)).scalars())
        outside = [i for i in chunk if i not in found]
        if outside:
            raise refusal(str(ctx.flow_run_id), f"task run {outside[0]} is outside it")


def _own_flow(ctx: RequestContext, flow_id: Any) -> None:
    with ctx.read() as conn:
        mine = conn.execute(select(func.count()).select_from(db.flow_run).where(
            db.flow_run.c.id == ctx.flow_run_id, db.flow_run.c.flow_id == flow_id)).scalar_one()
    if not mine:
        raise refusal(str(ctx.flow_run_id), f"flow {flow_id} is outside it")


def _states(key: str) -> Callable[[Args], list[Any]]:
    return lambda args: [item.get(key) for item in args["input"]["states"]]


def _input(key: str) -> Callable[[Args], list[Any]]:
    return lambda args: [args["input"][key]]


def _runs(ids: Callable[[Args], list[Any]]) -> Check:
    return lambda ctx, args: _own_run(ctx, ids(args))


def _task_runs(ids: Callable[[Args], list[Any]]) -> Check:
    return lambda ctx, args: _own_task_runs(ctx, ids(args))


def _logs(ctx: RequestContext, args: Args) -> None:
    logs = args["input"]["logs"]
    _own_run(ctx, {item["flow_run_id"] for item in logs})
    _own_task_runs(ctx, (item.get("task_run_id") for item in logs))


ROOT_FIELDS: dict[str, Check] = {
    # start-up reads of the client, and lists whose rows `row_condition` limits to the run
    **{name: _any for name in ("hello", "api", "auth_info", "tenant", "project", "flow", "flow_run",
                               "task_run", "log")},
    "flow_run_by_pk": _runs(lambda args: [args["id"]]),
    "flow_by_pk": lambda ctx, args: _own_flow(ctx, args["id"]),
    "task_run_by_pk": _task_runs(lambda args: [args["id"]]),
    "get_task_run_info": _task_runs(lambda args: [args["task_run_id"]]),
    # what CloudFlowRunner / CloudTaskRunner write
    "set_flow_run_states": _runs(_states("flow_run_id")),
    "set_task_run_states": _task_runs(_states("task_run_id")),
    "get_or_create_task_run_info": _runs(_input("flow_run_id")),
    "update_flow_run_heartbeat": _runs(_input("flow_run_id")),
    "update_task_run_heartbeat": _task_runs(_input("task_run_id")),
    "set_task_run_name": _task_runs(_input("task_run_id")),
    "write_run_logs": _logs,
}
