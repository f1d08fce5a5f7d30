"""Credentials for flow containers: each gets a token for its own run, never the agent's own.

Against a backend that advertises `flow_run_tokens` (our server), every launch mints a FLOW_RUN token: valid
for that run and its task runs only, dead once the run has finished (plus a short grace for the last logs).
Whoever can read the container's env (`docker inspect`, or the flow's own code) can then act for that one run,
not as the agent for the whole tenant. Minting never falls back to the agent's token: a run whose token cannot
be minted is not launched (requeued when the API is only away). Any other backend cannot mint: the container
gets the agent's token, as Prefect's own agents do, and the agent says so once at start.
"""

from __future__ import annotations

from loguru import logger

from agent.api.cloud import ApiError, CloudClient

CAPABILITY = "flow_run_tokens"
GONE_CODES = frozenset({"FLOW_RUN_FINISHED", "NOT_FOUND"})  # the run ended or vanished since its claim


class RunGone(Exception):
    """The run finished or was deleted between its claim and its launch: there is nothing to launch."""


class RunTokens:
    """`for_run(run_id)`: the token a run's container gets."""

    def __init__(self, cloud: CloudClient, *, mint: bool, agent_token: str | None) -> None:
        self.cloud, self.mint, self.agent_token = cloud, mint, agent_token
        if not mint and agent_token:
            logger.warning("this API cannot mint per-run tokens: flow containers receive the agent's own API "
                           "token (anyone who can read a container's environment can act as this agent)")

    async def for_run(self, run_id: str) -> str | None:
        """The run's own token, or the agent's when the API cannot mint; `RunGone`, or the API's error."""
        if not self.mint:
            return self.agent_token
        try:
            return await self.cloud.create_flow_run_token(run_id)
        except ApiError as exc:
            if exc.codes & GONE_CODES:
                raise RunGone(str(exc)) from exc
            raise
