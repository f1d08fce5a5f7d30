"""The poll loop: ask the queue, hand each claimable run to the deployer in a task of its own.

`Launches` holds those tasks by run id (the watcher asks it which runs are still being launched, so it never
takes one for an orphan); `Poller.run` polls until the stop signal, backing off on failures and, against a
backend without long polling, while the queue is empty.
"""

from __future__ import annotations

import asyncio
import functools
import time

from loguru import logger

from agent.api.cloud import ApiError, CloudClient
from agent.api.models import FlowRun, iso_now
from agent.exits import EXIT_DOCKER
from agent.launch.admission import Admission
from agent.launch.pipeline import Deployer
from agent.ops import memory
from agent.ops.backoff import FailureBackoff, IdleBackoff
from agent.ops.health import HealthState
from agent.runtime.docker_types import DockerError, DockerUnavailable
from agent.session import Session, StartupError
from agent.settings import Settings
from agent.stop import StopSignal


class Launches:
    """The deploy tasks in flight, by flow-run id."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def ids(self) -> set[str]:
        return set(self._tasks)

    def spawn(self, run: FlowRun, deployer: Deployer) -> None:
        task = asyncio.create_task(deployer.deploy(run), name=f"launch-{run.id}")
        self._tasks[run.id] = task
        task.add_done_callback(functools.partial(self._reap, run.id))

    def _reap(self, run_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.opt(exception=exc).error("launch of flow run {id} crashed: {error!r}", id=run_id,
                                            error=exc)

    def cancel(self) -> None:
        """A second signal: abandon every launch in flight (their runs stay Submitted; recovery requeues)."""
        for task in self._tasks.values():
            task.cancel()

    async def drain(self, timeout: float) -> None:
        """Let launches in flight finish, at most `timeout` s; the rest are cancelled."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("drain timeout: abandoned {n} launch(es) in flight", n=len(pending))
            await asyncio.wait(pending, timeout=1.0)
        logger.info("drained {n} launch(es)", n=len(done))


ENGINE_RECHECK_S = 1.0  # while the engine is away, how often it is pinged before the next poll


class Poller:
    """Polls until stopped; raises `StartupError` (exit 3) after `DOCKER_OUTAGE_EXIT_S` of engine outage."""

    def __init__(self, settings: Settings, cloud: CloudClient, session: Session, admission: Admission,
                 deployer: Deployer, launches: Launches, health: HealthState, stop: StopSignal) -> None:
        self.settings, self.cloud, self.session, self.admission = settings, cloud, session, admission
        self.deployer, self.launches, self.health, self.stop = deployer, launches, health, stop

    async def run(self) -> None:
        idle, failures = IdleBackoff(), FailureBackoff()
        while not self.stop.is_set():
            started = time.monotonic()
            self.health.tick()
            try:
                if self.admission.engine.down:  # cleared by the recheck once the engine answers
                    await self.admission.recheck_engine()
                found = await self.stop.race(self.poll_once())
            except (ApiError, DockerError) as exc:
                self._failed(exc)
                delay = failures.failed()
                engine_away = isinstance(exc, DockerUnavailable)
                if engine_away:  # asked again each second (a local ping; the API waits): a restarted daemon
                    delay = min(delay, ENGINE_RECHECK_S)  # gets its requeued runs back at once
                n = failures.failures
                level = "DEBUG" if engine_away and n & (n - 1) else "WARNING"  # 1, 2, 4, 8... in a row
                logger.log(level, "poll failed ({n} in a row): {error}; next poll in {d:.1f}s", n=n,
                           error=exc, d=delay)
                await self.stop.sleep(delay)
                continue
            if failures.failures:
                logger.info("polling again after {n} failed poll(s)", n=failures.failures)
            failures.succeeded()
            self.health.poll_succeeded(time.monotonic() - started)
            if found:
                idle.reset()
            elif not self.session.long_poll or time.monotonic() - started < 1.0:
                # The backend answered at once with nothing new (plain polling, or only runs we hold).
                await self.stop.sleep(min(idle.next(), 1.0) if self.session.long_poll else idle.next())

    async def poll_once(self) -> int:
        """One queue query plus the metadata query; spawns a launch task per claimable run."""
        settings = self.settings
        wait = settings.long_poll_seconds if self.session.long_poll else None
        # while we hold enough due runs, a poll would only return them again
        await self.admission.room_to_poll(settings.long_poll_seconds or 10.0)
        ids = await self.cloud.runs_in_queue(self.session.tenant_id, settings.labels,
                                             iso_now(settings.prefetch_seconds), wait)
        fresh = [run_id for run_id in ids if run_id not in self.launches]
        self.admission.polled(fresh=bool(fresh))
        if not fresh and not self.launches:
            memory.trim_when_idle()  # idle: hand freed heap back to the OS (agent.ops.memory)
        if not fresh:
            return 0
        runs = await self.cloud.flow_runs(fresh, iso_now(-3.0))
        runs = await self.admission.admit(runs)  # MAX_CONCURRENT_RUNS: the rest stay Scheduled
        for run in runs:
            self.launches.spawn(run, self.deployer)
        logger.debug("queue: {n} id(s), {f} new, {r} claimable", n=len(ids), f=len(fresh), r=len(runs))
        return len(runs)

    def _failed(self, exc: Exception) -> None:
        """Readiness learns why; an engine outage longer than DOCKER_OUTAGE_EXIT_S ends the agent (exit 3)."""
        self.health.poll_failed(exc)
        if not isinstance(exc, DockerUnavailable):
            return
        self.admission.engine_down(exc)
        limit, outage = self.settings.docker_outage_exit_s, self.admission.engine.outage_seconds()
        if limit and outage >= limit:
            raise StartupError(
                f"the Docker daemon has been unreachable for {outage:.0f}s (limit {limit:g}s, "
                "PREFECT__CLOUD__AGENT__DOCKER_OUTAGE_EXIT_S): exiting so the restart policy takes over",
                EXIT_DOCKER,
            )
