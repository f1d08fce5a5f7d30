"""`Session`: what start-up learns once and every later step needs, built by `open_session`.

Start-up is: the engine answers (and tells its host id) alongside the backend's round trips (tenant, then
registration, hello and capabilities together). Everything after it receives the finished `Session`, so no
collaborator starts half-built and none reads a value that may not be there yet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from loguru import logger

from agent.api.cloud import ApiError, AuthenticationError, CloudClient, TransientApiError
from agent.exits import EXIT_DOCKER, EXIT_STARTUP
from agent.launch.claims import CAPABILITY as PARTIAL_STATES
from agent.launch.plan import Identity, flow_api_url
from agent.launch.run_tokens import CAPABILITY as RUN_TOKENS
from agent.ops.backoff import FailureBackoff
from agent.ops.redact import mask_urls
from agent.runtime.docker_types import DockerError, DockerUnavailable
from agent.runtime.port import ContainerRuntime
from agent.settings import Settings
from agent.startup import alongside
from agent.stop import StopSignal

TOKEN_HINT = "this backend requires a token; pass -t/--token or set PREFECT__CLOUD__AGENT__API_TOKEN"
LONG_POLL = "long_poll"


class StartupError(Exception):
    """The agent cannot start or must stop; `exit_code`: 1 backend/auth refusal, 2 `HEALTH_ADDRESS` cannot
    be bound, 3 Docker unreachable (at start, or for `DOCKER_OUTAGE_EXIT_S` while running)."""

    def __init__(self, message: str, exit_code: int = EXIT_STARTUP) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Session:
    """The backend's and the engine's answers at start-up."""

    identity: Identity  # agent name, labels, tenant, the API URL flow containers use, networks, host id
    agent_id: str
    capabilities: frozenset[str]

    @property
    def tenant_id(self) -> str:
        return self.identity.tenant_id

    @property
    def host_id(self) -> str:
        return self.identity.host_id

    @property
    def long_poll(self) -> bool:
        """Our server's `get_runs_in_queue(wait_seconds)`; any other backend is polled."""
        return LONG_POLL in self.capabilities

    @property
    def run_tokens(self) -> bool:
        """Our server's per-run FLOW_RUN tokens for flow containers (`agent.launch.run_tokens`)."""
        return RUN_TOKENS in self.capabilities

    @property
    def partial_states(self) -> bool:
        """Our server's batched claims with per-run outcomes (`agent.launch.claims`)."""
        return PARTIAL_STATES in self.capabilities


async def open_session(settings: Settings, cloud: CloudClient, runtime: ContainerRuntime,
                       stop: StopSignal) -> Session:
    """Engine check alongside the backend's round trips; `StartupError` when the agent cannot start."""
    host_id, (tenant_id, agent_id, capabilities) = await alongside(
        _check_engine(runtime), _connect_backend(settings, cloud, stop))
    identity = Identity(
        agent_name=settings.name,
        labels=list(settings.labels),
        tenant_id=tenant_id,
        flow_api_url=flow_api_url(settings.api, settings.flow_api_url),
        networks=list(settings.network),  # the first joined at create, the others before start
        host_id=host_id,
    )
    session = Session(identity, agent_id, frozenset(capabilities))
    logger.info("Agent {name!r} registered (id {id}), labels {labels}, {mode}", name=settings.name,
                id=agent_id, labels=settings.labels, mode="long polling" if session.long_poll else "polling")
    return session


async def _check_engine(runtime: ContainerRuntime) -> str:
    try:
        await runtime.ping()
    except DockerUnavailable as exc:
        raise StartupError(str(exc), EXIT_DOCKER) from exc
    logger.debug("Docker daemon at {address} answered", address=runtime.address)
    try:
        return await runtime.host_id()
    except DockerError as exc:  # the engine answers but cannot serve (a swarm node that is no manager)
        raise StartupError(str(exc), EXIT_DOCKER) from exc


async def _connect_backend(settings: Settings, cloud: CloudClient,
                           stop: StopSignal) -> tuple[str, str, set[str]]:
    """Tenant, registration, hello, capabilities; transient failures are retried until a stop."""
    failures = FailureBackoff(cap=10.0)
    while True:
        try:
            tenant_id = await _tenant_id(settings, cloud)
            agent_id, capabilities = await _register(settings, cloud, tenant_id)
            break
        except TransientApiError as exc:
            delay = failures.failed()
            logger.warning("cannot reach the API at {url} ({error}); retrying in {d:.1f}s",
                           url=mask_urls(settings.api), error=exc, d=delay)
            await stop.sleep(delay)
    cloud.set_agent_id(agent_id)
    logger.info("Agent successfully connected to Prefect Cloud at {url}", url=mask_urls(settings.api))
    return tenant_id, agent_id, capabilities


async def _register(settings: Settings, cloud: CloudClient, tenant_id: str) -> tuple[str, set[str]]:
    """Registration, hello and capabilities: independent once the tenant is known."""
    agent_id, _, capabilities = await asyncio.gather(
        cloud.register_agent(settings.name, settings.labels, tenant_id), cloud.hello(), cloud.capabilities())
    return agent_id, capabilities


async def _tenant_id(settings: Settings, cloud: CloudClient) -> str:
    """Cloud mode: the token's tenant (RUNNER scope only); server mode: the first tenant (§3.1)."""
    try:
        if not settings.api_token:
            return await cloud.first_tenant_id()
        tenant_id, scope = await cloud.auth_info()
    except AuthenticationError as exc:
        if not settings.api_token:
            raise StartupError(TOKEN_HINT) from exc
        raise StartupError(f"the backend rejected the agent's token: {exc}") from exc
    except TransientApiError:
        raise
    except ApiError as exc:
        raise StartupError(f"the backend refused the agent: {exc}") from exc
    if scope and scope.upper() != "RUNNER":
        raise StartupError(f"the agent's token has scope {scope}; an agent needs a RUNNER token")
    if not tenant_id:
        raise StartupError("the backend reports no tenant for the agent's token")
    cloud.set_tenant_id(str(tenant_id))
    return str(tenant_id)
