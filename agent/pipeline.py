"""The launch pipeline of one flow run, in small steps others can extend (health, metrics, watcher, policy).

wait for start time → check Docker → claim (Submitted) → resolve image → pull policy → pull → build spec →
launch → report. A failure in resolve/pull/launch fails the run with the reason in its logs; an unreachable
Docker daemon never fails a run (it is put back in the queue); losing the claim to another agent is silent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from loguru import logger

from agent import registry_auth
from agent.capacity import Capacity
from agent.claims import ClaimBatcher, ClaimWithdrawn, LaunchGate
from agent.cloud import ApiError, CloudClient, StateUpdateFailed
from agent.docker_runtime import (
    ContainerSpec,
    DockerError,
    DockerRuntime,
    DockerUnavailable,
    ImageNotFound,
    ImagePullError,
    LaunchResult,
)
from agent.heartbeats import run_heartbeats
from agent.launcher import (
    LABEL_AGENT,
    ContainerPlan,
    Identity,
    LaunchError,
    PullPolicy,
    describe,
    plan_container,
    pull_policy,
    resolve_image,
)
from agent.launcher import should_pull as policy_says_pull
from agent.metrics import METRICS
from agent.models import FlowRun, failed_state, iso_now, scheduled_state, submitted_state
from agent.policy import Policy, PolicyDenied
from agent.prelaunch import PREPARE_LEAD_S, DockerProbe, ImagePresence
from agent.run_logs import RunLogBuffer
from agent.settings import Settings

T = TypeVar("T")


class Call(Protocol):
    """Runs a blocking Docker call in the agent's thread pool."""

    def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]: ...


class Deployer:
    """Deploys flow runs; one instance per agent, one `deploy()` task per run."""

    on_launched: Callable[[FlowRun, LaunchResult], None] | None = None

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
        # agent.claims: claim-ahead window + launch slots; batched claims; agent.run_logs; agent.prelaunch
        self.gate = LaunchGate(settings.max_concurrent_launches)
        self.claims = ClaimBatcher(cloud, partial=False, hold=self.gate.hold_claims, stop=stop)  # agent.py
        self.gate.on_ready_drop = self.claims.poke
        self.run_logs = RunLogBuffer(cloud)
        self.probe, self.images = DockerProbe(runtime, call), ImagePresence(runtime, call)
        self.policy: PullPolicy = pull_policy(settings)
        self.run_policy = Policy.from_settings(settings)
        self.capacity = Capacity(settings.max_concurrent_runs, self._count_running)

    async def deploy(self, run: FlowRun) -> None:
        """The whole pipeline for `run`; never raises (every outcome is logged or reported)."""
        if not await self.wait_until_start(run):
            return
        async with self.gate.ticket() as ticket:  # runs sleeping until their start time hold no place
            if self._stop.is_set() or not await self.docker_ready(run):
                return
            if not await self.capacity.acquire(run.id):  # at MAX_CONCURRENT_RUNS: stays Scheduled
                return
            try:
                if not await self.claim(run):
                    return
                async with ticket.launching(), run_heartbeats(self.cloud, run.id,
                                                              self.settings.heartbeat_interval):
                    await self.launch_claimed(run)
            finally:
                await self.capacity.release(run.id)

    async def close(self) -> None:
        """After the drain: no claim left waiting, every buffered run log written."""
        await self.claims.close()
        await self.run_logs.close()

    async def wait_until_start(self, run: FlowRun) -> bool:
        """Sleep until the state's start_time (prefetched runs); False when the agent stops meanwhile."""
        start = run.start_time
        delay = (start - datetime.now(UTC)).total_seconds() if start else 0.0
        if delay > 0:
            logger.debug("flow run {id} starts in {delay:.2f}s", id=run.id, delay=delay)
            until = asyncio.get_running_loop().time() + delay
            if delay > PREPARE_LEAD_S and not await self._sleep(delay - PREPARE_LEAD_S):
                return False
            await self.prepare(run)  # Docker facts before the due time; the claim waits for it
            await self._sleep(until - asyncio.get_running_loop().time())
        return not self._stop.is_set()

    async def _sleep(self, seconds: float) -> bool:
        """False when the agent stops meanwhile."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)
        return not self._stop.is_set()

    async def prepare(self, run: FlowRun) -> None:
        """Warm what the launch at the due time asks Docker (ping, image presence); failures wait for it."""
        try:
            image = resolve_image(run)
            await self.probe.ping()
            await self.images.present(image)
        except (LaunchError, DockerError) as exc:
            logger.debug("flow run {id}: not prepared ahead: {error}", id=run.id, error=exc)

    async def docker_ready(self, run: FlowRun) -> bool:
        """Claim nothing while our own daemon is away: the run stays Scheduled for a later poll."""
        try:
            await self.probe.ping()
        except DockerUnavailable as exc:
            logger.warning("not claiming flow run {id}: {error}", id=run.id, error=exc)
            self._on_docker_down(exc)
            return False
        return True

    async def claim(self, run: FlowRun) -> bool:
        """Set Submitted (wrapping the current state) with the version read, before anything is launched."""
        try:
            if run.is_scheduled:
                state = submitted_state(run.serialized_state, agent_host=self.identity.host_id)
                await self.claims.set_state(run.id, state, run.version)
        except StateUpdateFailed as exc:
            logger.debug("flow run {id} was claimed by another agent ({error})", id=run.id, error=exc)
            return False
        except ClaimWithdrawn:  # the agent began to stop while the claim waited: nothing new is claimed
            return False
        except ApiError as exc:
            logger.warning("could not claim flow run {id}, will retry: {error}", id=run.id, error=exc)
            return False
        METRICS.runs_claimed.inc()
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
            plan = await self.plan(run, image)
            await self.ensure_image(run, image)
            await self.ensure_volumes(plan)
            spec = plan.spec
            logger.opt(lazy=True).debug("container spec for flow run {id}: {spec}", id=lambda: run.id,
                                        spec=lambda: describe(spec))  # built only when DEBUG is on
            # A claimed run's old exited container (a reschedule or retry of the run) makes way for this one.
            result = await self.launch_container(run, image, spec)
        except DockerUnavailable as exc:
            self._on_docker_down(exc)
            await self.requeue(run, exc)
            return
        except (LaunchError, PolicyDenied, DockerError) as exc:
            METRICS.launch_failed(exc)
            await self.fail(run, str(exc))
            return
        await self.report(run, result)

    async def launch_container(self, run: FlowRun, image: str, spec: ContainerSpec) -> LaunchResult:
        """Create + start; an image gone since it was seen (agent.prelaunch) gets the pull policy again."""
        try:
            return await self._call(self.runtime.launch, spec, replace_exited=True)
        except ImageNotFound:
            self.images.forget(image)
            await self.ensure_image(run, image)
            return await self._call(self.runtime.launch, spec, replace_exited=True)

    async def ensure_image(self, run: FlowRun, image: str) -> None:
        """Apply the pull policy; pulls happen here, in the run's own task, never in the poll loop."""
        present = await self.images.present(image)
        if not policy_says_pull(self.policy, image, present):
            if not present:
                raise ImageNotFound(image)
            return
        logger.info("pulling image {image} for flow run {id}", image=image, id=run.id)
        self.run_logs.add(run.id, self.identity.agent_name, f"Pulling image {image}", "INFO")

        def progress(*args: Any) -> None:
            logger.info("{progress}", progress=args[0] if args else "pulling " + image)

        with METRICS.pull_seconds.time():
            await self.pull(run, image, progress)

    async def pull(self, run: FlowRun, image: str, progress: Callable[..., None]) -> None:
        """Pull with the registry's credentials; one retry with fresh ones when the registry refuses them."""
        for attempt in (1, 2):
            auth = registry_auth.credentials_for(image, self._registry_credentials())
            logger.info("pulling {image}: credentials from {source}", image=image, source=auth.source)
            try:
                await self._call(self.runtime.pull, image, on_progress=progress, auth_config=auth.auth_config,
                                 progress_interval=self.settings.pull_progress_interval)
                return
            except ImagePullError as exc:
                if attempt == 2 or not registry_auth.is_auth_error(exc):
                    raise
                logger.warning("flow run {id}: {error}; retrying once with fresh credentials",
                               id=run.id, error=exc)

    def _registry_credentials(self) -> str | None:
        secret = self.settings.registry_credentials
        return secret.get_secret_value() if secret else None

    async def plan(self, run: FlowRun, image: str) -> ContainerPlan:
        """The policy's image allow-list (at every launch, pull or not), then the container plan."""
        self.run_policy.check_image(image)
        plan = plan_container(run, image, self.settings, self.identity, self.run_policy)
        for notice in plan.notices:
            logger.warning("flow run {id}: {notice}", id=run.id, notice=notice)
            self.run_logs.add(run.id, self.identity.agent_name, notice, "WARNING")
        return plan

    async def ensure_volumes(self, plan: ContainerPlan) -> None:
        labels = {**self.settings.container_labels, LABEL_AGENT: self.identity.agent_name}
        for name in plan.named_volumes:
            if await self._call(self.runtime.ensure_volume, name, labels):
                logger.info("created volume {name} for flow containers", name=name)

    async def _count_running(self) -> int:
        return await self._call(self.runtime.count, {LABEL_AGENT: self.settings.name})

    async def report(self, run: FlowRun, result: LaunchResult) -> None:
        if self.on_launched is not None:  # the watcher (agent.watcher) follows the container from here
            self.on_launched(run, result)
        if not result.created:
            logger.warning(
                "flow run {id}: container {cid} already existed; not starting a second one",
                id=run.id,
                cid=result.container_id[:12],
            )
            return
        METRICS.runs_launched.inc()
        logger.info(
            "flow run {id} ({flow}) submitted: container {cid}",
            id=run.id,
            flow=run.flow.name,
            cid=result.container_id[:12],
        )
        message = f"Submitted for execution: Container ID: {result.container_id}"
        self.run_logs.add(run.id, self.identity.agent_name, message, "INFO")  # batched (agent.run_logs)

    async def fail(self, run: FlowRun, message: str) -> None:
        """ERROR run log + Failed state; version None, as a stale one is refused under locking (§4.3)."""
        logger.error("flow run {id} failed to launch: {error}", id=run.id, error=message)
        try:
            await self.run_logs.flush()  # what the run logged before comes first
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
            return
        METRICS.runs_requeued.labels(reason="docker_unavailable").inc()  # only once it is back in the queue
