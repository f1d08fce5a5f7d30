"""set_flow_run_states / set_task_run_states (contract §3.4, §3.8, §4.3-§4.5).

All elements of one call are applied in one write transaction: either every state is stored or none is.
Our extension `set_flow_run_states_input.partial` (capability "partial_states") applies each element alone
and reports each outcome instead (batched claims). A stored Cancelled state is then cascaded to the run's
unfinished task runs in batches, after that transaction (`server.batches`).
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLResolveInfo

from server import db
from server.batches import cascade_cancelled
from server.context import RequestContext
from server.errors import ApiError
from server.limits import check_count
from server.resolvers.read import ctx_of
from server.states import QUEUE_STATES, Change, set_flow_run_state, set_task_run_state, validate_state


def _check_batch(ctx: RequestContext, elements: list[dict[str, Any]]) -> None:
    check_count(ctx.settings, "max_states_per_request", "Number of states in one request", len(elements))


def _cascade(ctx: RequestContext, stored: list[tuple[str, dict[str, Any]]]) -> None:
    for run_id, state in stored:
        if state["type"] == "Cancelled":
            cascade_cancelled(ctx, run_id, state)


def resolve_set_flow_run_states(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    _check_batch(ctx, input["states"])
    if input.get("partial"):
        return _set_flow_run_states_partially(ctx, input["states"])
    items = [(item["flow_run_id"], validate_state(item["state"]), item.get("version"))
             for item in input["states"]]
    with ctx.write() as conn:
        for run_id, state, version in items:
            change = Change(state, version, ctx.agent_id)
            set_flow_run_state(conn, run_id, change, ctx.scoped(db.flow_run))
    _cascade(ctx, [(run_id, state) for run_id, state, _ in items])
    if any(state["type"] in QUEUE_STATES for _, state, _ in items):
        ctx.services.events.notify()
    return {"states": [{"id": run_id, "status": "SUCCESS", "message": None} for run_id, _, _ in items]}


def _set_flow_run_states_partially(ctx: RequestContext, elements: list[dict[str, Any]]) -> dict[str, Any]:
    """EXTENSION `partial: true`: each element in its own savepoint, its outcome reported, never raised.

    An agent claims every run due at once in one request; one run lost to another agent (or deleted) must
    not cost it the others. Still one write transaction, so the batch costs one commit.
    """
    outcomes: list[dict[str, Any]] = []
    stored: list[tuple[str, dict[str, Any]]] = []
    with ctx.write() as conn:
        for item in elements:
            run_id = item["flow_run_id"]
            try:
                with conn.begin_nested():
                    state = validate_state(item["state"])
                    set_flow_run_state(conn, run_id, Change(state, item.get("version"), ctx.agent_id),
                                       ctx.scoped(db.flow_run))
            except ApiError as exc:
                outcomes.append({"id": run_id, "status": exc.code, "message": exc.message})
                continue
            stored.append((run_id, state))
            outcomes.append({"id": run_id, "status": "SUCCESS", "message": None})
    _cascade(ctx, stored)
    if any(state["type"] in QUEUE_STATES for _, state in stored):
        ctx.services.events.notify()
    return {"states": outcomes}


def resolve_set_task_run_states(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    _check_batch(ctx, input["states"])
    items = [(item["task_run_id"], validate_state(item["state"]), item.get("version"))
             for item in input["states"]]
    with ctx.write() as conn:
        for run_id, state, version in items:
            set_task_run_state(conn, run_id, Change(state, version), ctx.scoped(db.task_run))
    if any(state["type"] in QUEUE_STATES for _, state, _ in items):
        ctx.services.events.notify()
    return {"states": [{"id": run_id, "status": "SUCCESS", "message": None} for run_id, _, _ in items]}


RESOLVERS: dict[str, Any] = {
    "Mutation.set_flow_run_states": resolve_set_flow_run_states,
    "Mutation.set_task_run_states": resolve_set_task_run_states,
}
