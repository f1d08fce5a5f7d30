"""EXTENSION `create_flow_run_token`: a token for one flow run, for the container that runs it."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLResolveInfo

from server import auth, db
from server.errors import ApiError
from server.resolvers.read import ctx_of

AUTH_NONE = ("create_flow_run_token is not available: this server runs with --auth none and checks no "
             "tokens, so a flow container needs none.")


def resolve_create_flow_run_token(
    _obj: Any, info: GraphQLResolveInfo, input: dict[str, Any]
) -> dict[str, Any]:
    """RUNNER and above, for a run of the caller's tenant that has not finished."""
    ctx = ctx_of(info)
    if ctx.settings.auth == "none":
        raise ApiError(AUTH_NONE, "AUTH_DISABLED")
    ctx.require("RUNNER", "create_flow_run_token")
    minted = auth.create_flow_run_token(ctx.engine, input["flow_run_id"], ctx.scoped(db.flow_run),
                                        ctx.settings.flow_run_token_max_lifetime_s)
    return {"token": minted.token, "expires_at": minted.expires_at}


RESOLVERS: dict[str, Any] = {
    "Mutation.create_flow_run_token": resolve_create_flow_run_token,
}
