"""Container garbage collection: what to remove, and when. Touches only containers with this agent's labels.

Successful containers go at once (exit code 0, not OOM-killed, and the run did not end in a failed state);
everything else (failed, OOM-killed, cancelled) is kept `keep_failed_containers_hours` after it finished, so
`docker logs` works while someone debugs, then removed. A container whose run is still Submitted/Running is
never removed here: the watcher must first record its exit in the run (see `agent.watcher`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.docker_types import ContainerInfo
from agent.models import parse_time

# Prefect 1.x finished state types (server/states.py FINISHED_STATES), and the failed ones among them.
FINISHED_STATES = frozenset({
    "Success", "Skipped", "Mapped", "Cached", "Failed", "TimedOut", "TriggerFailed", "ValidationFailed",
    "Cancelled", "Looped", "Finished",
})
FAILED_STATES = frozenset({"Failed", "TimedOut", "TriggerFailed", "ValidationFailed"})
# States in which nobody but the container would report the run's end: its exit must be recorded.
ACTIVE_STATES = frozenset({"Submitted", "Running", "Cancelling"})
GONE = "<missing>"  # the run no longer exists in the backend (deleted)


def finished_at(info: ContainerInfo) -> datetime | None:
    if not info.finished_at:
        return None
    try:
        return parse_time(info.finished_at)  # Python 3.11 reads Docker's nanosecond fractions
    except ValueError:
        return None


def succeeded(info: ContainerInfo, run_state: str | None) -> bool:
    """Exit 0, not OOM-killed, and the run did not end in a failed state (`run_state` None: unknown)."""
    if info.exit_code != 0 or info.oom_killed or run_state is None:
        return False
    return run_state == GONE or run_state not in FAILED_STATES | ACTIVE_STATES


def removal_reason(info: ContainerInfo, run_state: str | None, keep_hours: float,
                   now: datetime | None = None) -> str | None:
    """`"succeeded"`, `"expired"` or None (keep). `run_state` None means the API could not be asked."""
    if info.status not in ("exited", "dead"):
        return None
    if run_state in ACTIVE_STATES:
        return None  # the exit is not recorded yet: the watcher settles it first
    if succeeded(info, run_state):
        return "succeeded"
    ended = finished_at(info)
    now = now or datetime.now(UTC)
    if ended is not None and now - ended >= timedelta(hours=keep_hours):
        return "expired"
    return None


def keep_notice(container_name: str, keep_hours: float) -> str:
    """The run-log sentence telling a user how long the evidence stays and how to read it."""
    if keep_hours <= 0:
        return f"The container {container_name} is removed at the next cleanup."
    return (f"The container is kept for {keep_hours:g} h on the agent's Docker host for debugging: "
            f"docker logs {container_name}")
