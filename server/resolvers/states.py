"""set_flow_run_states / set_task_run_states (contract §3.4, §3.8, §4.3-§4.5).

All elements of one call are applied in one write transaction: either every state is stored or none is.
Our extension `set_flow_run_states_input.partial` (capability "partial_states") applies each element alone
and reports each outcome instead (batched claims). A stored Cancelled state is then cascaded to the run's
unfinished task runs in batches, after that transaction (`server.batches`).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, TypeVar

from graphql import GraphQLResolveInfo

from server import db
from server.batches import cascade_cancelled
from server.context import RequestContext
from server.errors import ApiError
from server.limits import check_count
from server.resolvers.read import ctx_of
from server.states import QUEUE_STATES, Change, set_flow_run_state, set_task_run_state, validate_state

T = TypeVar("T")


def in_lock_order(items: list[T], key: Callable[[T], str]) -> list[T]:
    """The elements in the order of their run ids (stable for repeats of one run).

    Each element's UPDATE locks its run's row until the transaction ends (PostgreSQL); two requests that
    lock the same runs in different orders would deadlock, and one of them would fail. In one global order
    they only wait for each other.
    """
    return sorted(items, key=key)


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
        for run_id, state, version in in_lock_order(items, key=itemgetter(0)):
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
    stored: list[tuple[str, dict[str, Any]]] = []
    outcome_of: dict[int, dict[str, Any]] = {}
    with ctx.write() as conn:
        for index, item in in_lock_order(list(enumerate(elements)), key=lambda pair: pair[1]["flow_run_id"]):
            run_id = item["flow_run_id"]
            try:
                with conn.begin_nested():
                    state = validate_state(item["state"])
                    set_flow_run_state(conn, run_id, Change(state, item.get("version"), ctx.agent_id),
                                       ctx.scoped(db.flow_run))
            except ApiError as exc:
                outcome_of[index] = {"id": run_id, "status": exc.code, "message": exc.message}
                continue
            stored.append((run_id, state))
            outcome_of[index] = {"id": run_id, "status": "SUCCESS", "message": None}
    outcomes = [outcome_of[index] for index in range(len(elements))]
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
        for run_id, state, version in in_lock_order(items, key=itemgetter(0)):
            set_task_run_state(conn, run_id, Change(state, version), ctx.scoped(db.task_run))
    if any(state["type"] in QUEUE_STATES for _, state, _ in items):
        ctx.services.events.notify()
    return {"states": [{"id": run_id, "status": "SUCCESS", "message": None} for run_id, _, _ in items]}


RESOLVERS: dict[str, Any] = {
    "Mutation.set_flow_run_states": resolve_set_flow_run_states,
    "Mutation.set_task_run_states": resolve_set_task_run_states,
}
