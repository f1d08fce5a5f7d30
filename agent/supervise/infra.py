"""Flow containers the infrastructure stopped: recognised, resubmitted a bounded number of times, then failed.

A Docker daemon that stops or restarts without live-restore closes its API first, then stops every container
(the stop signal, SIGKILL after the stop timeout: exit 143 or 137); the new daemon starts them not. No `die`
event reaches the agent, and the flow runner never recorded an end: without this module the run is Failed
like a flow that crashed, although the user did nothing.

A container of a run still Submitted or Running died with its daemon when Docker's own record says so: it was
started by an earlier daemon (`StartedAt` before `DaemonFacts.started_at`), it ended around that daemon's end
(no later than the new daemon's start; without live-restore, the new daemon may still kill leftovers while it
restores, so `RESTORE_SLACK_S` later), by a signal (143, 137) and not by the kernel's OOM killer. An engine
that cannot tell its start time gets no benefit of the doubt: the exit is reported as the flow's.

Such a run goes back to Scheduled with a WARNING run log saying why and which attempt comes next, after its
Running task runs go back to Pending (a flow runner skips a task run that is already Running). The attempt
count travels with the run (`agent.api.models.Attempts`: the Scheduled state's context, then the container's
labels), so it survives agent restarts; once `INFRA_RETRIES` resubmissions are spent, the run is Failed with
every cause in its message.
"""

from __future__ import annotations

from datetime import timedelta

from loguru import logger

from agent.api.cloud import ApiError, CloudClient
from agent.api.models import FAILABLE_STATES, Attempts, failed_state, iso_now, pending_state, scheduled_state
from agent.launch.plan import attempts_from_labels
from agent.ops.metrics import METRICS
from agent.runtime.docker_types import ContainerInfo, DaemonFacts, docker_time
from agent.supervise.reconcile import run_states

SHUTDOWN_EXITS = frozenset({137, 143})  # SIGKILL, SIGTERM: what a stopping daemon does to its containers
RESTORE_SLACK_S = 60.0
TASK_RESET = "Reset to Pending by the agent: the infrastructure stopped the flow runner that ran it"


def daemon_stopped(info: ContainerInfo, facts: DaemonFacts) -> str | None:
    """The cause, in words, when Docker's record shows the daemon stopped this container; else None."""
    if info.exit_code not in SHUTDOWN_EXITS or info.oom_killed:
        return None
    started, finished, restart = docker_time(info.started_at), docker_time(info.finished_at), facts.started_at
    if started is None or finished is None or restart is None:
        return None
    slack = timedelta(seconds=0 if facts.live_restore else RESTORE_SLACK_S)
    if not (started < restart and finished <= restart + slack):
        return None
    return (f"the Docker daemon restarted while this run was running (container {info.name} was stopped "
            f"{finished:%H:%M:%S} UTC, exit code {info.exit_code}; the daemon is back since "
            f"{restart:%H:%M:%S} UTC)")


class Resubmitter:
    """Puts runs whose container the infrastructure stopped back in the queue, `retries` times at most."""

    def __init__(self, cloud: CloudClient, agent_name: str, retries: int) -> None:
        self.cloud, self.agent_name, self.retries = cloud, agent_name, retries

    async def handle(self, run_id: str, info: ContainerInfo, cause: str) -> str | None:
        """Resubmit, or fail once the attempts are spent; the run log comes first, it explains the state.
        Returns the state after it: "Scheduled" (resubmitted), "Failed", or the state found (None: gone).

        The run's state is read again right before: a Scheduled state is written whatever the version (the
        backend locks versions only for Submitted, Running and Cancelling), so a run cancelled or finished
        meanwhile must be seen here, not overwritten."""
        current = (await run_states(self.cloud, [run_id])).get(run_id)
        if current is None or current.state not in FAILABLE_STATES:
            logger.info("flow run {id}: not resubmitted, it is {state} now", id=run_id,
                        state=current.state if current else "gone")
            return current.state if current is not None else None
        attempts = attempts_from_labels(info.labels)
        total = self.retries + 1
        if attempts.number >= total:
            await self._give_up(run_id, attempts.after(cause), total)
            return "Failed"
        following = attempts.after(cause)
        message = (f"Rescheduled by the agent: {cause}; resubmitted, attempt {following.number} of {total}")
        logger.warning("flow run {id}: {message}", id=run_id, message=message)
        await self._log(run_id, message, "WARNING")
        await self._reset_task_runs(run_id)
        back = scheduled_state(message, iso_now(), following)
        await self.cloud.set_flow_run_state(run_id, back, current.version)
        METRICS.runs_requeued.labels(reason="infrastructure").inc()
        return "Scheduled"

    async def _give_up(self, run_id: str, attempts: Attempts, total: int) -> None:
        story = "; ".join(attempts.history)
        message = (f"The infrastructure stopped every one of this run's {total} attempts (INFRA_RETRIES="
                   f"{self.retries}); not resubmitted again. {story}")
        logger.error("flow run {id}: {message}", id=run_id, message=message)
        await self._log(run_id, message, "ERROR")
        await self.cloud.set_flow_run_state(run_id, failed_state(message), None)
        METRICS.runs_failed.labels(reason="infrastructure").inc()

    async def _reset_task_runs(self, run_id: str) -> None:
        rows = await self.cloud.running_task_runs(run_id)
        if rows:
            await self.cloud.set_task_run_states([(str(row["id"]), pending_state(TASK_RESET), None)
                                                  for row in rows])

    async def _log(self, run_id: str, message: str, level: str) -> None:
        try:
            await self.cloud.write_run_log(run_id, self.agent_name, message, level)
        except ApiError as exc:
            logger.warning("flow run {id}: run log not written: {error}", id=run_id, error=exc)
