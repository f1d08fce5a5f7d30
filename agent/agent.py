"""`LocalAgent`: start-up, the poll loop, bounded concurrent launches, and shutdown.

Lifecycle: banner → the engine's check alongside the backend's round trips (`agent.session`) → restart
recovery and watching (`agent.supervise.watcher`) → poll (`agent.launch.poller`) until SIGTERM/SIGINT. The
first signal stops polling, ends runs still waiting for their start time (nothing was claimed for them) and
lets launches in flight finish within `drain_timeout`; a second signal abandons them, still writes the
buffered run logs (within a few seconds) and exits 1. Containers already started keep running: they report
to the backend on their own, and the next start adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from loguru import logger

from agent.api.cloud import CloudClient
from agent.banner import DOCUMENTATION, print_banner
from agent.exits import EXIT_CONFIG, EXIT_FORCED, EXIT_OK, EXIT_STARTUP
from agent.launch.admission import Admission
from agent.launch.pipeline import Deployer
from agent.launch.poller import Launches, Poller
from agent.ops import memory
from agent.ops.health import HealthServer, HealthState
from agent.ops.logs import configure_logging
from agent.ops.metrics import METRICS
from agent.runtime.docker import DockerError, DockerRuntime
from agent.runtime.engine import DockerEngine
from agent.runtime.engines import open_runtime
from agent.runtime.port import ContainerRuntime
from agent.session import Session, StartupError, open_session
from agent.settings import Settings, load_settings, settings_secrets
from agent.stop import Stopped, StopSignal
from agent.supervise.watcher import Watcher

FORCED_FLUSH_S = 5.0  # after a second signal: how long the buffered run logs may still take
FORCED_EXIT_GRACE_S = 2.0  # then this long for the rest of the shutdown before the process exits anyway
ENGINE_THREADS_EXTRA = 6  # beyond the launch slots: the watcher's reads and its (at most 4) concurrent stops

__all__ = ["EXIT_FORCED", "LocalAgent", "StartupError"]


class LocalAgent:
    """Polls a Prefect 1.x API and runs each flow run as a sibling container.

    `LocalAgent(settings=None, **overrides).start()` blocks until SIGTERM/SIGINT. Without `settings`, they
    are loaded from flags-equivalent `overrides`, env, secret files and Prefect's config.toml. `runtime`: a
    `DockerRuntime` already connecting (the CLI's), or any `ContainerRuntime` (tests use a fake one).
    """

    def __init__(self, settings: Settings | None = None, *,
                 runtime: ContainerRuntime | DockerRuntime | None = None, **overrides: Any) -> None:
        if settings is None:
            settings = load_settings(**overrides)
        elif overrides:
            settings = type(settings)(**{**settings.model_dump(), **overrides})
        self.settings = settings
        METRICS.set_name(settings.name)
        self.stop = StopSignal()
        self.forced = False  # a second signal arrived
        if runtime is None or isinstance(runtime, DockerRuntime):
            docker = runtime or open_runtime(settings)
            runtime = DockerEngine(docker, settings.max_concurrent_launches + ENGINE_THREADS_EXTRA)
        self.runtime: ContainerRuntime = runtime
        self.admission = Admission(settings, runtime)
        self.health = HealthState.for_settings(settings, self.admission.engine)  # /api/health, /ready
        self.cloud = CloudClient(settings.api, settings.token, settings.request_timeout)
        self.launches = Launches()
        self._deadline: asyncio.TimerHandle | None = None  # armed by a second signal

    # ------------------------------------------------------------------ entry points
    def start(self, configure_logs: bool = True) -> None:
        """Run until stopped; raises `StartupError` when the agent cannot start (the CLI maps exit codes)."""
        if configure_logs:
            configure_logging(self.settings.level, secrets=settings_secrets(self.settings))
        try:
            asyncio.run(self.run())
        finally:
            self._abandon_stuck_threads()

    def _abandon_stuck_threads(self) -> None:
        """A blocked engine call cannot be cancelled; the process must not hang on it at exit."""
        busy = getattr(self.runtime, "busy_threads", 0)
        if not busy:
            return
        logger.warning("abandoning {n} Docker call(s) still in progress", n=busy)
        exc = sys.exc_info()[1]
        os._exit(EXIT_OK if exc is None else getattr(exc, "exit_code", EXIT_STARTUP))

    async def run(self) -> None:
        """The agent's coroutine: start-up, poll loop, drain. Installs SIGTERM/SIGINT handlers."""
        memory.limit_arenas()  # before the engine's threads start
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._announce()
        health_server = await self._start_health_server()
        try:
            await self.cloud.connect()
            session = await self.stop.race(open_session(self.settings, self.cloud, self.runtime, self.stop))
            await self._serve(session)
        except Stopped:
            pass
        finally:
            self.health.phase = "stopping"
            await self.cloud.close()
            await self.runtime.close()
            if health_server is not None:
                await health_server.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if self._deadline is not None:
                self._deadline.cancel()  # the shutdown finished in time
            logger.info("Agent stopped")
        if self.forced:
            raise StartupError("stopped by a second signal: launches in flight were abandoned", EXIT_FORCED)

    def _announce(self) -> None:
        print_banner()
        logger.info("Starting LocalAgent")
        logger.info("Agent documentation can be found at {docs}", docs=DOCUMENTATION)
        if self.settings.allowed_host_paths and not self.settings.host_root:
            logger.warning("ALLOWED_HOST_PATHS is set but HOST_ROOT is empty (the agent runs in a "
                           "container): symlinks in bind paths cannot be resolved. Mount the host's / "
                           "read-only (-v /:/host:ro) and set PREFECT__CLOUD__AGENT__HOST_ROOT=/host "
                           "(docs/run-options.md)")

    async def _serve(self, session: Session) -> None:
        """Everything that needs the session, built once and in order; drained and closed on the way out."""
        settings, cloud, runtime = self.settings, self.cloud, self.runtime
        watcher = Watcher(settings, cloud, runtime, session, self.admission, busy=self.launches.ids)
        deployer = Deployer(settings, cloud, runtime, session, self.admission, self.stop,
                            on_launched=watcher.watch)
        poller = Poller(settings, cloud, session, self.admission, deployer, self.launches, self.health,
                        self.stop)
        try:
            await self._note_daemon()
            await self.stop.race(watcher.start())  # restart recovery first: adopt what the last run left
            self.health.running()
            logger.info("Waiting for flow runs...")
            await poller.run()
        finally:
            self.health.phase = "stopping"
            await self.launches.drain(self.settings.drain_timeout)
            # buffered run logs are written before the client closes, under a deadline after a second signal
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(deployer.close(), FORCED_FLUSH_S if self.forced else None)
            await watcher.stop()  # flow containers keep running; the next start adopts them

    async def _note_daemon(self) -> None:
        """Live-restore, for the log and `local-agent check`: without it a daemon restart stops every flow."""
        try:
            facts = await self.runtime.daemon_facts()
        except DockerError as exc:
            logger.debug("daemon facts not read: {error}", error=exc)
            return
        self.health.live_restore = facts.live_restore
        self.health.engine = facts.engine
        if facts.live_restore is False:
            logger.info("The Docker daemon runs without live-restore: restarting it stops every flow "
                        "container (their runs are resubmitted, up to INFRA_RETRIES={n} times; "
                        "docs/operations.md)",
                        n=self.settings.infra_retries)
        if facts.started_at is None:
            logger.warning("The Docker daemon's start time is unknown (no default bridge network): flows it "
                           "stops when it restarts are reported as failed, not resubmitted")

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

    @staticmethod
    def _exit_now() -> None:
        logger.complete()
        logger.error("shutdown did not finish after the second signal: exiting now")
        os._exit(EXIT_FORCED)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            logger.warning("second {sig}: abandoning {n} launch(es) in flight, writing run logs, exiting",
                           sig=sig.name, n=len(self.launches))
            self.forced = True
            self.launches.cancel()
            # whatever still hangs after the run-log flush's deadline (a stuck close) cannot keep us alive
            self._deadline = asyncio.get_running_loop().call_later(FORCED_FLUSH_S + FORCED_EXIT_GRACE_S,
                                                                   self._exit_now)
            return
        logger.info("{sig} received: no new flow runs; waiting up to {t:g}s for {n} launch(es) in flight",
                    sig=sig.name, t=self.settings.drain_timeout, n=len(self.launches))
        self.stop.set()
