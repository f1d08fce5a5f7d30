"""`LocalAgent`: start-up, the poll loop, bounded concurrent launches, and shutdown.

Lifecycle: banner → Docker ping → tenant / token scope → register_agent → hello → capabilities → poll until
SIGTERM/SIGINT. The first signal stops polling, cancels runs still waiting for their start time (nothing was
claimed for them) and lets launches in flight finish within `drain_timeout`; a second signal exits at once.
Containers already started keep running: they report to the backend on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from loguru import logger

from agent import memory, startup
from agent.backoff import FailureBackoff, IdleBackoff
from agent.banner import DOCUMENTATION, print_banner
from agent.claims import CAPABILITY as CLAIMS_CAPABILITY
from agent.cloud import ApiError, AuthenticationError, CloudClient, TransientApiError
from agent.docker_runtime import DockerError, DockerRuntime, DockerUnavailable
from agent.health import HealthServer, HealthState
from agent.launcher import Identity, flow_api_url
from agent.logs import configure_logging, settings_secrets
from agent.metrics import METRICS
from agent.models import FlowRun, iso_now
from agent.pipeline import Deployer
from agent.reconcile import host_id
from agent.redact import mask_urls
from agent.settings import Settings, load_settings
from agent.watcher import Watcher

T = TypeVar("T")
EXIT_OK, EXIT_STARTUP, EXIT_CONFIG, EXIT_DOCKER = 0, 1, 2, 3
EXIT_FORCED = 1  # a second signal during the drain: exit at once, launches in flight abandoned
TOKEN_HINT = "this backend requires a token; pass -t/--token or set PREFECT__CLOUD__AGENT__API_TOKEN"


class StartupError(Exception):
    """The agent cannot start or must stop; `exit_code`: 1 backend/auth refusal, 2 `HEALTH_ADDRESS` cannot
    be bound, 3 Docker unreachable (at start, or for `DOCKER_OUTAGE_EXIT_S` while running)."""

    def __init__(self, message: str, exit_code: int = EXIT_STARTUP) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Stopped(Exception):
    """The stop event fired while waiting."""


class LocalAgent:
    """Polls a Prefect 1.x API and runs each flow run as a sibling Docker container.

    `LocalAgent(settings=None, **overrides).start()` blocks until SIGTERM/SIGINT. Without `settings`, they
    are loaded from flags-equivalent `overrides`, env, secret files and Prefect's config.toml.
    """

    def __init__(self, settings: Settings | None = None, *, runtime: DockerRuntime | None = None,
                 **overrides: Any) -> None:
        if settings is None:
            settings = load_settings(**overrides)
        elif overrides:
            settings = type(settings)(**{**settings.model_dump(), **overrides})
        self.settings = settings
        self._stop = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._long_poll = False
        self.health = HealthState.for_settings(settings)  # read by /api/health, /ready (agent.health)
        self.watcher: Watcher | None = None
        self._agent_id = ""
        self._host_id = ""  # this Docker host's id, recorded in every claim (agent.reconcile)
        self._docker_checked = asyncio.Event()  # start-up: ping + host id done (it runs beside the backend's)
        METRICS.set_name(settings.name)
        self._busy_threads = 0
        self._busy_lock = threading.Lock()
        # + the watcher's reads and its (at most 4) concurrent stops of cancelled runs' containers
        self._pool = ThreadPoolExecutor(settings.max_concurrent_launches + 6, thread_name_prefix="docker")
        # `runtime`: the CLI's, already connecting while this module was imported (agent.startup.warm_docker)
        self.runtime = runtime or DockerRuntime(base_url=settings.base_url, timeout=settings.docker_timeout)
        self.cloud: CloudClient | None = None
        self.identity: Identity | None = None
        self._deployer: Deployer | None = None

    # ------------------------------------------------------------------ entry points

    def start(self, configure_logs: bool = True) -> None:
        """Run until stopped; raises `StartupError` when the agent cannot start (the CLI maps exit codes)."""
        if configure_logs:
            configure_logging(self.settings.level, secrets=settings_secrets(self.settings))
        try:
            asyncio.run(self.run())
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._abandon_stuck_threads()

    def _abandon_stuck_threads(self) -> None:
        """A blocked docker call cannot be cancelled; the process must not hang on it at exit."""
        if not self._busy_threads:
            return
        logger.warning("abandoning {n} Docker call(s) still in progress", n=self._busy_threads)
        exc = sys.exc_info()[1]
        os._exit(EXIT_OK if exc is None else getattr(exc, "exit_code", EXIT_STARTUP))

    async def run(self) -> None:
        """The agent's coroutine: start-up, poll loop, drain. Installs SIGTERM/SIGINT handlers."""
        memory.limit_arenas()  # before the Docker threads start (agent.memory)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        print_banner()
        logger.info("Starting LocalAgent")
        logger.info("Agent documentation can be found at {docs}", docs=DOCUMENTATION)
        if self.settings.allowed_host_paths and not self.settings.host_root:
            logger.warning("ALLOWED_HOST_PATHS is set but HOST_ROOT is empty (the agent runs in a "
                           "container): symlinks in bind paths cannot be resolved. Mount the host's / "
                           "read-only (-v /:/host:ro) and set PREFECT__CLOUD__AGENT__HOST_ROOT=/host "
                           "(docs/run-options.md)")
        self.cloud = CloudClient(self.settings.api, self.settings.token, self.settings.request_timeout)
        health_server = await self._start_health_server()
        try:
            await self.cloud.connect()  # Docker is pinged alongside the backend round trips (agent.startup)
            await self._interruptible(startup.alongside(self._check_docker(), self._connect_backend()))
            await self._interruptible(self._start_watcher())
            self.health.running()
            logger.info("Waiting for flow runs...")
            await self._poll_until_stopped()
        except _Stopped:
            pass
        finally:
            self.health.phase = "stopping"
            await self._drain()
            if self._deployer is not None:
                await self._deployer.close()  # buffered run logs are written before the client closes
            if self.watcher is not None:
                await self.watcher.stop()  # flow containers keep running; the next start adopts them
            await self.cloud.close()
            await self._call(self.runtime.close)
            if health_server is not None:
                await health_server.stop()
            logger.info("Agent stopped")

    async def _start_health_server(self) -> HealthServer | None:
        if not self.settings.health_address:
            return None
        server = HealthServer(self.health, self.settings.health_address)
        try:
            await server.start()
        except OSError as exc:
            raise StartupError(f"cannot serve health checks on {self.settings.health_address}: {exc}",
                               EXIT_CONFIG) from exc
        return server

    async def _start_watcher(self) -> None:
        """Watch launched containers (exits, cancellation, cleanup), after recovering what a last run left."""
        assert self.cloud is not None and self._deployer is not None
        self.watcher = Watcher(
            self.settings, self.cloud, self.runtime, self._call, agent_name=self.settings.name,
            agent_id=self._agent_id, on_docker_down=self._docker_down, busy=lambda: set(self._inflight),
            host_id=self._host_id)
        self._deployer.on_launched = self.watcher.watch
        await self.watcher.start()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            logger.warning("second {sig}: exiting now", sig=sig.name)
            os._exit(EXIT_FORCED)
        logger.info(
            "{sig} received: no new flow runs; waiting up to {t:g}s for {n} launch(es) in flight",
            sig=sig.name,
            t=self.settings.drain_timeout,
            n=len(self._inflight),
        )
        self._stop.set()

    # ------------------------------------------------------------------ start-up

    async def _check_docker(self) -> None:
        try:
            await self._call(self.runtime.ping)
        except DockerUnavailable as exc:
            raise StartupError(str(exc), EXIT_DOCKER) from exc
        self._host_id = await self._call(host_id, self.runtime)
        self._docker_checked.set()
        logger.debug("Docker daemon at {address} answered", address=self.runtime.address)

    async def _connect_backend(self) -> None:
        """Tenant, registration, hello, capabilities; transient failures are retried until a signal."""
        assert self.cloud is not None
        failures = FailureBackoff(cap=10.0)
        while True:
            try:
                tenant_id = await self._tenant_id()
                agent_id, _, capabilities = await asyncio.gather(  # independent once the tenant is known
                    self.cloud.register_agent(self.settings.name, self.settings.labels, tenant_id),
                    self.cloud.hello(), self.cloud.capabilities())
                break
            except TransientApiError as exc:
                delay = failures.failed()
                logger.warning(
                    "cannot reach the API at {url} ({error}); retrying in {d:.1f}s",
                    url=mask_urls(self.settings.api),
                    error=exc,
                    d=delay,
                )
                await self._sleep(delay)
        self.cloud.set_agent_id(agent_id)
        self._agent_id = agent_id
        logger.info("Agent successfully connected to Prefect Cloud at {url}",
                    url=mask_urls(self.settings.api))
        self._long_poll = "long_poll" in capabilities
        logger.info(
            "Agent {name!r} registered (id {id}), labels {labels}, {mode}",
            name=self.settings.name,
            id=agent_id,
            labels=self.settings.labels,
            mode="long polling" if self._long_poll else "polling",
        )
        await self._docker_checked.wait()  # launches need the Docker host's id (the check runs alongside)
        self._prepare_launches(tenant_id)
        assert self._deployer is not None
        self._deployer.claims.partial = CLAIMS_CAPABILITY in capabilities  # batched claims (agent.claims)

    def _prepare_launches(self, tenant_id: str) -> None:
        self.identity = Identity(
            agent_name=self.settings.name,
            labels=list(self.settings.labels),
            tenant_id=tenant_id,
            flow_api_url=flow_api_url(self.settings.api, self.settings.flow_api_url),
            networks=list(self.settings.network),  # the first joined at create, the others before start
            host_id=self._host_id,
        )
        assert self.cloud is not None
        self._deployer = Deployer(
            self.settings, self.cloud, self.runtime, self.identity, self._call, self._stop, self._docker_down
        )

    async def _tenant_id(self) -> str:
        """Cloud mode: the token's tenant (RUNNER scope only); server mode: the first tenant (§3.1)."""
        assert self.cloud is not None
        try:
            if not self.settings.api_token:
                return await self.cloud.first_tenant_id()
            tenant_id, scope = await self.cloud.auth_info()
        except AuthenticationError as exc:
            if not self.settings.api_token:
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
        self.cloud.set_tenant_id(str(tenant_id))
        return str(tenant_id)

    # ------------------------------------------------------------------ poll loop

    async def _poll_until_stopped(self) -> None:
        idle, failures = IdleBackoff(), FailureBackoff()
        while not self._stop.is_set():
            started = time.monotonic()
            self.health.tick()
            try:
                if self.health.docker_down_since is not None:  # set by _docker_down, cleared by the recheck
                    await self._recheck_docker()
                found = await self._interruptible(self._poll_once())
            except (ApiError, DockerError) as exc:
                self._poll_failed(exc)
                delay = failures.failed()
                logger.warning(
                    "poll failed ({n} in a row): {error}; next poll in {d:.1f}s",
                    n=failures.failures,
                    error=exc,
                    d=delay,
                )
                await self._sleep(delay)
                continue
            if failures.failures:
                logger.info("polling again after {n} failed poll(s)", n=failures.failures)
            failures.succeeded()
            self.health.poll_succeeded(time.monotonic() - started)
            if found:
                idle.reset()
            elif not self._long_poll or time.monotonic() - started < 1.0:
                # The backend answered at once with nothing new (plain polling, or only runs we hold).
                await self._sleep(min(idle.next(), 1.0) if self._long_poll else idle.next())

    async def _poll_once(self) -> int:
        """One queue query plus the metadata query; spawns a launch task per claimable run."""
        assert self.cloud is not None and self.identity is not None
        wait = self.settings.long_poll_seconds if self._long_poll else None
        assert self._deployer is not None  # while we hold enough due runs, a poll would return them again
        await self._deployer.gate.room_to_poll(self.settings.long_poll_seconds or 10.0)
        ids = await self.cloud.runs_in_queue(
            self.identity.tenant_id, self.settings.labels, iso_now(self.settings.prefetch_seconds), wait
        )
        fresh = [run_id for run_id in ids if run_id not in self._inflight]
        self._deployer.gate.fresh_last_poll = bool(fresh)
        if not fresh and not self._inflight:
            memory.trim_when_idle()  # idle: hand freed heap back to the OS (agent.memory)
        if not fresh:
            return 0
        runs = await self.cloud.flow_runs(fresh, iso_now(-3.0))
        runs = await self._deployer.capacity.admit(runs)  # MAX_CONCURRENT_RUNS: the rest stay Scheduled
        for run in runs:
            self._spawn(run)
        logger.debug("queue: {n} id(s), {f} new, {r} claimable", n=len(ids), f=len(fresh), r=len(runs))
        return len(runs)

    def _spawn(self, run: FlowRun) -> None:
        assert self._deployer is not None
        task = asyncio.create_task(self._deployer.deploy(run), name=f"launch-{run.id}")
        self._inflight[run.id] = task
        task.add_done_callback(functools.partial(self._reap, run.id))

    def _reap(self, run_id: str, task: asyncio.Task[None]) -> None:
        self._inflight.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.opt(exception=exc).error(
                "launch of flow run {id} crashed: {error!r}", id=run_id, error=exc
            )

    def _docker_down(self, exc: DockerUnavailable) -> None:
        if self.health.docker_down_since is None:
            logger.error("{error}", error=exc)
        self.health.docker_down(exc)

    def _poll_failed(self, exc: Exception) -> None:
        """Readiness learns why; a Docker outage longer than DOCKER_OUTAGE_EXIT_S ends the agent (exit 3)."""
        self.health.poll_failed(exc)
        if not isinstance(exc, DockerUnavailable):
            return
        self._docker_down(exc)
        limit, outage = self.settings.docker_outage_exit_s, self.health.docker_outage_seconds()
        if limit and outage >= limit:
            raise StartupError(
                f"the Docker daemon has been unreachable for {outage:.0f}s (limit {limit:g}s, "
                "PREFECT__CLOUD__AGENT__DOCKER_OUTAGE_EXIT_S): exiting so the restart policy takes over",
                EXIT_DOCKER,
            )

    async def _recheck_docker(self) -> None:
        await self._call(self.runtime.ping)
        self.health.docker_up()
        logger.info("Docker daemon at {address} is reachable again", address=self.runtime.address)

    # ------------------------------------------------------------------ helpers

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """A blocking docker call in our pool (bounded, and abandonable at exit)."""
        with self._busy_lock:
            self._busy_threads += 1
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(self._thread_done)  # counts the thread, not our (cancellable) await
        return await asyncio.wrap_future(future)

    def _thread_done(self, _future: Future[Any]) -> None:
        METRICS.docker_call_done(_future)
        with self._busy_lock:
            self._busy_threads -= 1

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _interruptible(self, coro: Awaitable[T]) -> T:
        """Await `coro` unless the stop event fires first (then cancel it and raise `_Stopped`)."""
        if self._stop.is_set():
            raise _Stopped
        work = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            raise _Stopped
        return work.result()

    async def _drain(self) -> None:
        tasks = list(self._inflight.values())
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("drain timeout: abandoned {n} launch(es) in flight", n=len(pending))
            await asyncio.wait(pending, timeout=1.0)
        logger.info("drained {n} launch(es)", n=len(done))
