"""set_flow_run_states / set_task_run_states (contract §3.4, §3.8, §4.3-§4.5).

All elements of one call are applied in one write transaction: either every state is stored or none is.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLResolveInfo

from server import db
from server.resolvers.read import ctx_of
from server.states import QUEUE_STATES, Change, set_flow_run_state, set_task_run_state, validate_state


def resolve_set_flow_run_states(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
    items = [(item["flow_run_id"], validate_state(item["state"]), item.get("version"))
             for item in input["states"]]
    with ctx.write() as conn:
        for run_id, state, version in items:
            change = Change(state, version, ctx.agent_id)
            set_flow_run_state(conn, run_id, change, ctx.scoped(db.flow_run))
    if any(state["type"] in QUEUE_STATES for _, state, _ in items):
        ctx.services.events.notify()
    return {"states": [{"id": run_id, "status": "SUCCESS", "message": None} for run_id, _, _ in items]}


def resolve_set_task_run_states(_obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]) -> dict[str, Any]:
    ctx = ctx_of(info)
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
