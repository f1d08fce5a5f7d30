"""The launch pipeline of one flow run, in small steps others can extend (health, metrics, watcher, policy).

wait for start time → check Docker → claim (Submitted) → resolve image → pull policy → pull → build spec →
launch → report. A failure in resolve/pull/launch fails the run with the reason in its logs; an unreachable
Docker daemon never fails a run (it is put back in the queue); losing the claim to another agent is silent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from loguru import logger

from agent.cloud import ApiError, CloudClient, StateUpdateFailed
from agent.docker_runtime import DockerError, DockerRuntime, DockerUnavailable, ImageNotFound, LaunchResult
from agent.launcher import Identity, LaunchError, PullPolicy, build_spec, describe, pull_policy, resolve_image
from agent.launcher import should_pull as policy_says_pull
from agent.models import FlowRun, failed_state, iso_now, scheduled_state, submitted_state
from agent.settings import Settings

T = TypeVar("T")


class Call(Protocol):
    """Runs a blocking Docker call in the agent's thread pool."""

    def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]: ...


class Deployer:
    """Deploys flow runs; one instance per agent, one `deploy()` task per run."""

    def __init__(
        self,
        settings: Settings,
        cloud: CloudClient,
        runtime: DockerRuntime,
        identity: Identity,
        call: Call,
        stop: asyncio.Event,
        on_docker_down: Callable[[DockerUnavailable], None],
    ) -> None:
        self.settings, self.cloud, self.runtime, self.identity = settings, cloud, runtime, identity
        self._call, self._stop, self._on_docker_down = call, stop, on_docker_down
        self._slots = asyncio.Semaphore(settings.max_concurrent_launches)
        self.policy: PullPolicy = pull_policy(settings)

    async def deploy(self, run: FlowRun) -> None:
        """The whole pipeline for `run`; never raises (every outcome is logged or reported)."""
        if not await self.wait_until_start(run):
            return
        async with self._slots:  # runs sleeping until their start time hold no slot
            if self._stop.is_set() or not await self.docker_ready(run):
                return
            if not await self.claim(run):
                return
            await self.launch_claimed(run)

    async def wait_until_start(self, run: FlowRun) -> bool:
        """Sleep until the state's start_time (prefetched runs); False when the agent stops meanwhile."""
        start = run.start_time
        delay = (start - datetime.now(UTC)).total_seconds() if start else 0.0
        if delay > 0:
            logger.debug("flow run {id} starts in {delay:.2f}s", id=run.id, delay=delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass
        return not self._stop.is_set()

    async def docker_ready(self, run: FlowRun) -> bool:
        """Claim nothing while our own daemon is away: the run stays Scheduled for a later poll."""
        try:
            await self._call(self.runtime.ping)
        except DockerUnavailable as exc:
            logger.warning("not claiming flow run {id}: {error}", id=run.id, error=exc)
            self._on_docker_down(exc)
            return False
        return True

    async def claim(self, run: FlowRun) -> bool:
        """Set Submitted (wrapping the current state) with the version read, before anything is launched."""
        try:
            if run.is_scheduled:
                await self.cloud.set_flow_run_state(
                    run.id, submitted_state(run.serialized_state), run.version
                )
        except StateUpdateFailed as exc:
            logger.debug("flow run {id} was claimed by another agent ({error})", id=run.id, error=exc)
            return False
        except ApiError as exc:
            logger.warning("could not claim flow run {id}, will retry: {error}", id=run.id, error=exc)
            return False
        for task_run in run.task_runs:
            if not task_run.is_scheduled:
                continue
            try:
                await self.cloud.set_task_run_state(
                    task_run.id, submitted_state(task_run.serialized_state), task_run.version
                )
            except ApiError as exc:  # the flow runner re-reads task states; the launch goes on
                logger.warning("task run {id}: Submitted not recorded: {error}", id=task_run.id, error=exc)
        return True

    async def launch_claimed(self, run: FlowRun) -> None:
        try:
            image = resolve_image(run)
            await self.ensure_image(run, image)
            spec = build_spec(run, image, self.settings, self.identity)
            logger.debug("container spec for flow run {id}: {spec}", id=run.id, spec=describe(spec))
            result = await self._call(self.runtime.launch, spec)
        except DockerUnavailable as exc:
            self._on_docker_down(exc)
            await self.requeue(run, exc)
            return
        except (LaunchError, DockerError) as exc:
            await self.fail(run, str(exc))
            return
        await self.report(run, result)

    async def ensure_image(self, run: FlowRun, image: str) -> None:
        """Apply the pull policy; pulls happen here, in the run's own task, never in the poll loop."""
        present = await self._call(self.runtime.image_present, image)
        if not policy_says_pull(self.policy, image, present):
            if not present:
                raise ImageNotFound(image)
            return
        logger.info("pulling image {image} for flow run {id}", image=image, id=run.id)
        await self.cloud.write_run_log(run.id, self.identity.agent_name, f"Pulling image {image}", "INFO")

        def progress(*args: Any) -> None:
            logger.info("{progress}", progress=args[0] if args else "pulling " + image)

        await self._call(
            self.runtime.pull,
            image,
            on_progress=progress,
            progress_interval=self.settings.pull_progress_interval,
        )

    async def report(self, run: FlowRun, result: LaunchResult) -> None:
        if not result.created:
            logger.warning(
                "flow run {id}: container {cid} already existed; not starting a second one",
                id=run.id,
                cid=result.container_id[:12],
            )
            return
        logger.info(
            "flow run {id} ({flow}) submitted: container {cid}",
            id=run.id,
            flow=run.flow.name,
            cid=result.container_id[:12],
        )
        message = f"Submitted for execution: Container ID: {result.container_id}"
        try:
            await self.cloud.write_run_log(run.id, self.identity.agent_name, message, "INFO")
        except ApiError as exc:  # the container runs and reports on its own; only our log line is lost
            logger.warning("flow run {id}: run log not written: {error}", id=run.id, error=exc)

    async def fail(self, run: FlowRun, message: str) -> None:
        """ERROR run log + Failed state; version None, as a stale one is refused under locking (§4.3)."""
        logger.error("flow run {id} failed to launch: {error}", id=run.id, error=message)
        try:
            await self.cloud.write_run_log(run.id, self.identity.agent_name, message, "ERROR")
            await self.cloud.set_flow_run_state(run.id, failed_state(message), None)
        except ApiError as exc:
            logger.error("flow run {id}: could not record the failure: {error}", id=run.id, error=exc)

    async def requeue(self, run: FlowRun, exc: DockerUnavailable) -> None:
        """Docker went away after the claim: put the run back to Scheduled instead of failing it."""
        logger.warning(
            "flow run {id}: Docker unreachable after claiming; rescheduling: {error}", id=run.id, error=exc
        )
        state = scheduled_state("Rescheduled by the agent: its Docker daemon was unreachable", iso_now())
        try:
            await self.cloud.set_flow_run_state(run.id, state, None)
        except ApiError as api_exc:
            logger.error("flow run {id}: could not reschedule: {error}", id=run.id, error=api_exc)
