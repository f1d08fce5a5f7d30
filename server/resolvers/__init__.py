"""GraphQL resolvers, one module per area; `RESOLVERS` maps "Type.field" to a resolver function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.resolvers import flows, queue, read, runs, states, tenants, tokens

RESOLVERS: dict[str, Callable[..., Any]] = {
    **read.RESOLVERS, **flows.RESOLVERS, **runs.RESOLVERS, **states.RESOLVERS, **queue.RESOLVERS,
    **tenants.RESOLVERS, **tokens.RESOLVERS,
}

# Operations a RUNNER token may not perform (contract: USER also registers flows, creates and cancels runs).
# create_tenant needs ADMIN (checked in tenants.py).
USER_ONLY = frozenset({
    "Mutation.create_project", "Mutation.create_flow_from_compressed_string",
    "Mutation.create_flow", "Mutation.register_tasks", "Mutation.register_edges",
    "Mutation.set_schedule_active", "Mutation.set_schedule_inactive", "Mutation.create_flow_run",
    "Mutation.cancel_flow_run",
})
