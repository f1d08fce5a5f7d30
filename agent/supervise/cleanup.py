"""Container garbage collection: what to remove, and when. Touches only containers with this agent's labels.

A successful run's container (exit code 0, not OOM-killed, the run Success or another successful finished
state) is removed by the watcher as soon as it has read everything it reports from it, like GitLab Runner
and Buildkite remove a job's container, unless `keep_successful_containers_hours` keeps it. Everything else
(failed, OOM-killed, cancelled whatever the exit code, or a run still Submitted/Running that the watcher has
not settled) is kept `keep_failed_containers_hours` after it finished, so `docker logs` works while someone
debugs, then removed. A cancelled run is not a successful one: someone stopped it, and may want to see how
far it got. The periodic sweep is the safety net for what an agent restarted in between did not remove.
"""

from __future__ import annotations

from datetime import UTC, datetime

from loguru import logger

from agent.api.models import ACTIVE_STATES, FINISHED_STATES, UNSUCCESSFUL_STATES, parse_time
from agent.ops.metrics import METRICS
from agent.runtime.docker_types import FLOW_RUN_LABEL, ContainerInfo, DockerError, DockerUnavailable
from agent.runtime.port import ContainerRuntime

GONE = "<missing>"  # the run no longer exists in the backend (deleted)
SUCCESSFUL_END = FINISHED_STATES - UNSUCCESSFUL_STATES  # Success, Cached, Skipped, Mapped, Looped, Finished


def finished_at(info: ContainerInfo) -> datetime | None:
    if not info.finished_at:
        return None
    try:
        return parse_time(info.finished_at)  # Python 3.11 reads Docker's nanosecond fractions
    except ValueError:
        return None


def succeeded(info: ContainerInfo, run_state: str | None) -> bool:
    """Exit 0, not OOM-killed, and the run neither failed nor was cancelled (`run_state` None: unknown)."""
    if info.exit_code != 0 or info.oom_killed or run_state is None:
        return False
    return run_state == GONE or run_state not in UNSUCCESSFUL_STATES | ACTIVE_STATES


def removal_reason(info: ContainerInfo, run_state: str | None, keep_hours: float, min_age_s: float,
                   now: datetime | None = None, *, keep_successful_hours: float = 0.0) -> str | None:
    """`"succeeded"`, `"expired"` or None (keep). `run_state` None means the API could not be asked.

    Successful containers wait `keep_successful_hours`, and at least `min_age_s` (one cleanup interval) so
    the sweep never races the watcher settling a fresh exit; failed ones wait `keep_hours`.
    """
    ended = finished_at(info)
    if not info.exited or ended is None:
        return None
    age = ((now or datetime.now(UTC)) - ended).total_seconds()
    if succeeded(info, run_state):
        return "succeeded" if age >= max(min_age_s, keep_successful_hours * 3600) else None
    if age >= keep_hours * 3600:
        return "expired"
    return None


def remove_at_once(info: ContainerInfo | None, ended: str | None, keep_successful_hours: float) -> bool:
    """Whether the watcher removes a container it just settled: the run ended successfully (`ended`, the
    state it settled on) with exit code 0, and the operator keeps no successful container."""
    if info is None or not info.exited or keep_successful_hours > 0:
        return False
    return ended in SUCCESSFUL_END and succeeded(info, ended)


def keep_notice(container_name: str, keep_hours: float, kind: str = "container",
                removed: bool = False) -> str:
    """The run-log sentence telling a user how long the evidence stays and how to read it."""
    if removed:
        return f"The agent removed the {kind} {container_name}: this report is all that is left of it."
    if keep_hours <= 0:
        return f"The {kind} {container_name} is removed at the next cleanup."
    if kind == "service":
        return (f"The service is kept for {keep_hours:g} h in the swarm for debugging: "
                f"docker service logs {container_name}")
    return (f"The container is kept for {keep_hours:g} h on the agent's Docker host for debugging: "
            f"docker logs {container_name}")


async def sweep(runtime: ContainerRuntime, infos: list[ContainerInfo], states: dict[str, str] | None,
                keep_hours: float, min_age_s: float, keep_successful_hours: float = 0.0) -> int:
    """Remove the removable ones among `infos` (this agent's containers); returns how many went.

    `states` maps run ids to state types (GONE for deleted runs); None when the API could not be asked, in
    which case only expired containers go.
    """
    removed = 0
    for info in infos:
        run_id = info.labels.get(FLOW_RUN_LABEL, "")
        run_state = None if states is None else states.get(run_id, GONE)
        reason = removal_reason(info, run_state, keep_hours, min_age_s,
                                keep_successful_hours=keep_successful_hours)
        if reason is None:
            continue
        try:
            await runtime.remove(info.id)
        except DockerError as exc:
            if isinstance(exc, DockerUnavailable):
                raise
            logger.warning("cleanup: could not remove {name}: {error}", name=info.name, error=exc)
            continue
        logger.info("cleanup: removed container {name} ({reason})", name=info.name, reason=reason)
        METRICS.containers_removed.labels(reason=reason).inc()
        removed += 1
    return removed
