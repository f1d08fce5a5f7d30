"""The launch pipeline of one flow run: `Deployer.deploy`, one task per run.

wait for start time → admission (engine up, a concurrency slot) → claim (Submitted) → resolve image →
policy and plan → pull policy → pull → launch → report to the watcher. A failure in resolve/pull/launch
fails the run with the reason in its logs; an unreachable engine never fails a run (it is put back in the
queue); losing the claim to another agent is silent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from agent.api.cloud import ApiError, CloudClient, StateUpdateFailed, TransientApiError
from agent.api.models import FlowRun, attempts_of, failed_state, iso_now, scheduled_state, submitted_state
from agent.launch.admission import Admission
from agent.launch.claims import ClaimBatcher, ClaimWithdrawn
from agent.launch.heartbeats import run_heartbeats
from agent.launch.plan import (
    LABEL_AGENT,
    ContainerPlan,
    LaunchError,
    PullPolicy,
    describe,
    load_container_options,
    plan_container,
    pull_policy,
    resolve_image,
)
from agent.launch.plan import should_pull as policy_says_pull
from agent.launch.prelaunch import PREPARE_LEAD_S, ImagePresence
from agent.launch.run_logs import RunLogBuffer
from agent.launch.run_tokens import RunGone, RunTokens
from agent.ops.metrics import METRICS
from agent.policy.rules import Policy, PolicyDenied
from agent.runtime import registry_auth
from agent.runtime.docker_types import (
    ContainerSpec,
    DockerError,
    DockerUnavailable,
    ImageNotFound,
    ImagePullError,
    LaunchResult,
)
from agent.runtime.port import ContainerRuntime
from agent.session import Session
from agent.settings import Settings
from agent.stop import StopSignal

TRANSIENT_ATTEMPTS = 3  # launches tried in place after a transient engine error before the run is requeued
TRANSIENT_BACKOFF_S = 0.5  # before the second attempt; doubled before each later one


def _engine_fault(exc: Exception) -> bool:
    """A transient engine error at create or start: not the run's fault. A pull keeps its own verdict (a
    registry that stalls or fails is reported on the run), and so does everything the run asked for."""
    return isinstance(exc, DockerError) and exc.transient and not isinstance(exc, ImagePullError)


class Deployer:
    """Deploys flow runs; one instance per session, one `deploy()` task per run."""

    def __init__(self, settings: Settings, cloud: CloudClient, runtime: ContainerRuntime, session: Session,
                 admission: Admission, stop: StopSignal,
                 on_launched: Callable[[FlowRun, LaunchResult], None]) -> None:
        self.settings, self.cloud, self.runtime, self.admission = settings, cloud, runtime, admission
        self.identity, self.stop, self.on_launched = session.identity, stop, on_launched
        self.claims = ClaimBatcher(cloud, partial=session.partial_states, hold=admission.hold_claims,
                                   stop=stop, room=admission.claim_room)
        self.run_logs = RunLogBuffer(cloud)
        self.images = ImagePresence(runtime)
        self.pull_policy: PullPolicy = pull_policy(settings)
        self.run_policy = Policy.from_settings(settings)
        self.run_tokens = RunTokens(cloud, mint=session.run_tokens, agent_token=settings.token)
        self._recorded: dict[str, str] = {}  # run id -> the container its launch in flight recorded

    async def deploy(self, run: FlowRun) -> None:
        """The whole pipeline for `run`; never raises (every outcome is logged or reported)."""
        if not await self.wait_until_start(run):
            return
        async with self.admission.ticket() as ticket:  # runs sleeping until their start time hold no place
            if self.stop.is_set() or not await self.admission.may_claim(run.id):
                return  # engine away or at MAX_CONCURRENT_RUNS: the run stays Scheduled
            try:
                if not await self.claim(run):
                    return
                async with ticket.launching(), run_heartbeats(self.cloud, run.id,
                                                              self.settings.heartbeat_interval):
                    await self.launch_claimed(run)
            finally:
                self._recorded.pop(run.id, None)
                await self.admission.release(run.id)

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
            if delay > PREPARE_LEAD_S and not await self.stop.sleep(delay - PREPARE_LEAD_S):
                return False
            await self.prepare(run)  # Docker facts before the due time; the claim waits for it
            await self.stop.sleep(until - asyncio.get_running_loop().time())
        return not self.stop.is_set()

    async def prepare(self, run: FlowRun) -> None:
        """Warm what the launch at the due time asks Docker (ping, image presence); failures wait for it."""
        load_container_options()
        try:
            image = resolve_image(run)
            await self.admission.ping()
            await self.images.present(image)
        except (LaunchError, DockerError) as exc:
            logger.debug("flow run {id}: not prepared ahead: {error}", id=run.id, error=exc)

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
        """Launch, then report. What the run did wrong fails it; what the engine did wrong never does: an
        unreachable engine puts the run back in the queue at once, a transient engine error (a 5xx, a
        sandbox race at create or start) is retried in place, then the run goes back to the queue."""
        try:
            token = await self.run_tokens.for_run(run.id)
        except (RunGone, ApiError) as exc:
            await self._not_launched(run, exc)
            return
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                result = await self._launch_once(run, token)
            except DockerUnavailable as exc:
                self.admission.engine_down(exc)
                await self.requeue(run, f"its Docker daemon was unreachable ({exc.reason})",
                                   "docker_unavailable")
                return
            except (LaunchError, PolicyDenied, DockerError) as exc:
                if not _engine_fault(exc):
                    METRICS.launch_failed(exc)
                    await self.fail(run, str(exc))
                    return
                if attempt == TRANSIENT_ATTEMPTS or not await self._retry_later(run, exc, attempt):
                    await self.requeue(run, f"the Docker engine failed transiently {attempt} time(s), "
                                            f"last: {exc}", "transient_error")
                    return
                continue
            await self.report(run, result)
            return

    async def _not_launched(self, run: FlowRun, exc: Exception) -> None:
        """No token for the run's container: gone runs are dropped, the API's absence requeues, a refusal
        fails the run (with the agent's own token it would be launched with more power than it may have)."""
        if isinstance(exc, RunGone):
            logger.info("flow run {id} ended before its launch; not launched: {error}", id=run.id, error=exc)
        elif isinstance(exc, TransientApiError):
            await self.requeue(run, f"no token for its container could be minted ({exc})", "api_unavailable")
        else:
            await self.fail(run, f"The API refused a token for this run's container: {exc}")

    async def _retry_later(self, run: FlowRun, exc: Exception, attempt: int) -> bool:
        """Back off before the next attempt; False when the agent stops meanwhile."""
        delay = TRANSIENT_BACKOFF_S * 2 ** (attempt - 1)
        logger.warning("flow run {id}: transient engine error, attempt {n} of {total}; retrying in "
                       "{d:g}s: {error}", id=run.id, n=attempt, total=TRANSIENT_ATTEMPTS, d=delay, error=exc)
        return await self.stop.sleep(delay)

    async def _launch_once(self, run: FlowRun, token: str | None) -> LaunchResult:
        image = resolve_image(run)
        plan = await self.plan(run, image, token)
        await self.ensure_image(run, image)
        await self.ensure_volumes(plan)
        spec = plan.spec
        logger.opt(lazy=True).debug("container spec for flow run {id}: {spec}", id=lambda: run.id,
                                    spec=lambda: describe(spec))  # built only when DEBUG is on
        # A claimed run's old exited container (a reschedule or retry of the run) makes way for this one.
        return await self.launch_container(run, image, spec)

    async def launch_container(self, run: FlowRun, image: str, spec: ContainerSpec) -> LaunchResult:
        """Create + start; an image gone since it was seen (`ImagePresence`) gets the pull policy again."""

        async def record(container_id: str) -> None:
            """The launch's record, written before the container starts: no kill of the agent loses it.
            A flush sends every line waiting, so the launches of a burst share their requests."""
            before = self._recorded.get(run.id)
            message = (f"Submitted for execution: Container ID: {container_id}" if before is None else
                       f"Resubmitted for execution after an engine error (container {before[:12]} did not "
                       f"start): Container ID: {container_id}")
            self._recorded[run.id] = container_id
            self.run_logs.add(run.id, self.identity.agent_name, message, "INFO")
            await self.run_logs.flush()

        try:
            return await self.runtime.launch(spec, replace_exited=True, before_start=record)
        except ImageNotFound:
            self.images.forget(image)
            await self.ensure_image(run, image)
            return await self.runtime.launch(spec, replace_exited=True, before_start=record)

    async def ensure_image(self, run: FlowRun, image: str) -> None:
        """Apply the pull policy; pulls happen here, in the run's own task, never in the poll loop."""
        present = await self.images.present(image)
        if not policy_says_pull(self.pull_policy, image, present):
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
                await self.runtime.pull(image, on_progress=progress, auth_config=auth.auth_config,
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

    async def plan(self, run: FlowRun, image: str, token: str | None) -> ContainerPlan:
        """The policy's image allow-list (at every launch, pull or not), then the container plan."""
        self.run_policy.check_image(image)
        plan = plan_container(run, image, self.settings, self.identity, self.run_policy, token)
        for notice in plan.notices:
            logger.warning("flow run {id}: {notice}", id=run.id, notice=notice)
            self.run_logs.add(run.id, self.identity.agent_name, notice, "WARNING")
        return plan

    async def ensure_volumes(self, plan: ContainerPlan) -> None:
        labels = {**self.settings.container_labels, LABEL_AGENT: self.identity.agent_name}
        for name in plan.named_volumes:
            if await self.runtime.ensure_volume(name, labels):
                logger.info("created volume {name} for flow containers", name=name)

    async def report(self, run: FlowRun, result: LaunchResult) -> None:
        self.on_launched(run, result)  # the watcher follows the container from here
        if not result.started:
            logger.warning("flow run {id}: container {cid} was already started; not starting a second one",
                           id=run.id, cid=result.container_id[:12])
            return
        METRICS.runs_launched.inc()
        logger.info("flow run {id} ({flow}) submitted: container {cid}", id=run.id, flow=run.flow.name,
                    cid=result.container_id[:12])

    async def fail(self, run: FlowRun, message: str) -> None:
        """ERROR run log + Failed state; version None, as a stale one is refused under locking (§4.3)."""
        logger.error("flow run {id} failed to launch: {error}", id=run.id, error=message)
        try:
            await self.run_logs.flush()  # what the run logged before comes first
            await self.cloud.write_run_log(run.id, self.identity.agent_name, message, "ERROR")
            await self.cloud.set_flow_run_state(run.id, failed_state(message), None)
        except ApiError as exc:
            logger.error("flow run {id}: could not record the failure: {error}", id=run.id, error=exc)

    async def requeue(self, run: FlowRun, why: str, reason: str) -> None:
        """The engine failed the launch, not the run: back to Scheduled, with a run log saying why first."""
        message = f"Rescheduled by the agent: {why}"
        logger.warning("flow run {id}: {message}", id=run.id, message=message)
        try:
            await self.run_logs.flush()  # what the run logged before comes first
            await self.cloud.write_run_log(run.id, self.identity.agent_name, message, "WARNING")
        except ApiError as exc:
            logger.warning("flow run {id}: run log not written: {error}", id=run.id, error=exc)
        try:
            back = scheduled_state(message, iso_now(), attempts_of(run.serialized_state))  # the count goes on
            await self.cloud.set_flow_run_state(run.id, back, None)
        except ApiError as api_exc:
            logger.error("flow run {id}: could not reschedule: {error}", id=run.id, error=api_exc)
            return
        METRICS.runs_requeued.labels(reason=reason).inc()  # only once it is back in the queue
