"""What an ended flow container means for its run, recorded once by the watcher.

Cancelling: the run becomes Cancelled. Submitted or Running with a non-zero exit or an OOM kill: nobody else
will ever report it, so the run is Failed with the forensics (`forensics.exit_report`) — unless the daemon
itself stopped the container (`infra`), then it is resubmitted. Exit 0 without a final state is left alone:
a flow runner that exits 0 found the run owned elsewhere (Prefect's own double-launch guard), and the
backend's zombie handling covers the rest. Each run log is written before the state it explains.
Every settled exit ends with the run's one outcome line (`agent.supervise.outcome`), a resubmitted run's
excepted: it has not ended.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from agent.api.cloud import ApiError, CloudClient
from agent.api.models import CANCEL_STATES, FAILABLE_STATES, SCHEDULED_STATES, failed_state
from agent.ops.metrics import METRICS
from agent.runtime.docker_types import ContainerInfo
from agent.runtime.port import ContainerRuntime
from agent.settings import Settings
from agent.supervise import infra
from agent.supervise.forensics import exit_report
from agent.supervise.outcome import STILL, Outcomes
from agent.supervise.reconcile import RunState

SIGKILLED, OOM_EVENT_WAIT_S = 137, 1.0


class ExitRecorder:
    """Records container exits in their runs: Cancelled, Failed, resubmitted, or nothing."""

    def __init__(self, settings: Settings, cloud: CloudClient, runtime: ContainerRuntime) -> None:
        self.cloud, self.runtime, self.agent_name = cloud, runtime, settings.name
        self.keep_hours = settings.keep_failed_containers_hours
        self.resubmitter = infra.Resubmitter(cloud, settings.name, settings.infra_retries)
        self.outcomes = Outcomes()

    async def record(self, run_id: str, name: str, info: ContainerInfo | None, known: RunState | None, *,
                     stopped_by_agent: bool = False, run_name: str | None = None,
                     watched_since: float | None = None) -> str | None:
        """`name`: the container's; `known`: the run as read just before (None: the run is gone). Ends with
        the run's one outcome line (`agent.supervise.outcome`), unless the run was resubmitted. Returns the
        state the run ended in, as the outcome line says it."""
        state = known.state if known is not None else None
        ended: str | None = state
        if state == "Cancelling" or (stopped_by_agent and state in CANCEL_STATES):
            await self._mark_cancelled(run_id, name, info, state, stopped_by_agent)
            ended = "Cancelled"
        elif state in FAILABLE_STATES and (info is None or info.exit_code != 0 or info.oom_killed):
            cause = await self._infra_cause(info)
            if cause is not None and info is not None:
                ended = await self.resubmitter.handle(run_id, info, cause)
                if ended in SCHEDULED_STATES:
                    return ended  # not ended: queued again (the Resubmitter's WARNING line says why)
            else:
                info = await self._report_exit(run_id, name, info, state)
                ended = "Failed"
        elif state in FAILABLE_STATES:
            logger.debug("flow run {id}: container {name} exited 0 without a final state; left to the "
                         "flow runner and the backend", id=run_id, name=name)
            ended = f"{STILL}{state}"  # read after the 0.5 s event batch: a final state would show by now
        label = (known.name if known is not None else None) or run_name or run_id
        self.outcomes.report(run_id, label, ended, info, watched_since)
        return ended

    async def run_log(self, run_id: str, message: str, level: str) -> None:
        try:
            await self.cloud.write_run_log(run_id, self.agent_name, message, level)
        except ApiError as exc:
            logger.warning("flow run {id}: run log not written: {error}", id=run_id, error=exc)

    async def _mark_cancelled(self, run_id: str, name: str, info: ContainerInfo | None, state: str | None,
                              stopped_by_agent: bool) -> None:
        code = "unknown" if info is None else info.exit_code
        what = f"Container {name} {'stopped' if stopped_by_agent else 'exited'} (exit code {code})"
        message = f"{what}; the flow run was already {state}."
        if state == "Cancelling":
            message = f"{what}; flow run marked Cancelled."
        logger.info("flow run {id}: {message}", id=run_id, message=message)
        await self.run_log(run_id, message, "INFO")  # before the state: it explains the state
        if state == "Cancelling":
            cancelled = {**failed_state(f"Flow run cancelled: {what.lower()}"), "type": "Cancelled"}
            await self.cloud.set_flow_run_state(run_id, cancelled, None)

    async def _infra_cause(self, info: ContainerInfo | None) -> str | None:
        """Why the infrastructure, not the flow, ended this container; None when it was the flow (or unknown).
        The daemon's facts are read afresh: a cached start time would miss the restart that matters."""
        if info is None or info.exit_code not in infra.SHUTDOWN_EXITS:
            return None
        return infra.daemon_stopped(info, await self.runtime.daemon_facts())

    async def _report_exit(self, run_id: str, name: str, info: ContainerInfo | None,
                           state: str | None) -> ContainerInfo | None:
        """Fail the run with the forensics; returns what the engine says of the container in the end."""
        if info is not None and info.exit_code == SIGKILLED and not info.oom_killed:
            # Docker records OOMKilled from a separate kernel event that may land just after `die`.
            await asyncio.sleep(OOM_EVENT_WAIT_S)
            info = await self.runtime.inspect(info.id) or info
        summary, report = await exit_report(self.runtime, name, info, state, self.keep_hours)
        logger.error("flow run {id}: {summary}", id=run_id, summary=summary)
        await self.cloud.write_run_log(run_id, self.agent_name, report, "ERROR")
        await self.cloud.set_flow_run_state(run_id, failed_state(summary), None)
        reason = "oom_killed" if info is not None and info.oom_killed else "exit_code"
        METRICS.runs_failed.labels(reason=reason).inc()
        return info
