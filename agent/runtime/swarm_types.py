"""The vocabulary of the Swarm runtime: its options, and what a run's service and its one task mean in the
port's terms (`ContainerInfo`). No Docker calls here.

Under the swarm engine a flow run is a replicated-job service with exactly one task and no restart, so "the
container" of the port IS the service: its id, name and labels. Its status follows the task: a task Swarm
has not finished with (not even placed yet) is "running", because the run is Swarm's now; a finished task is
"exited", with the exit code the task recorded and Swarm's own text as `error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.runtime.docker_types import ContainerInfo, docker_time

SERVICE_ID_LABEL = "com.docker.swarm.service.id"  # Swarm's label on every task container
IMAGE_LABEL = "io.local-agent.image"  # the reference the run asked for (the service runs a pinned one)

UNSCHEDULED = frozenset({"new", "allocated", "pending"})  # Swarm has not placed the task on a node yet
LIVE = UNSCHEDULED | {"assigned", "accepted", "preparing", "ready", "starting", "running"}
FAILED_TERMINAL = frozenset({"rejected", "orphaned", "shutdown", "remove"})  # ended without a clean exit


@dataclass(frozen=True)
class SwarmOptions:
    """How the agent asks Swarm for its services (the settings' `SWARM_*` values)."""

    constraints: tuple[str, ...] = ()
    preferences: tuple[str, ...] = ()  # spread descriptors, e.g. `node.labels.zone`
    network: str = "local-agent-flows"  # the attachable overlay joined when the run names no network
    schedule_timeout: float = 120.0  # seconds a task may stay unscheduled before the run fails
    stop_grace: float = 30.0  # the service's StopGracePeriod
    gpu_resource: str = ""  # generic-resource kind for GPU requests; empty: GPUs are refused
    network_labels: Mapping[str, str] = field(default_factory=dict)  # labels of the network we create


def latest_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The service's newest task (a job with no restart normally has one; a lost node may leave more)."""
    if not tasks:
        return None
    oldest = datetime.min.replace(tzinfo=UTC)
    return max(tasks, key=lambda t: (docker_time(t.get("CreatedAt")) or oldest,
                                     int((t.get("Version") or {}).get("Index") or 0)))


def task_state(task: Mapping[str, Any] | None) -> str | None:
    return None if task is None else str((task.get("Status") or {}).get("State") or "new")


def task_container_id(task: Mapping[str, Any] | None) -> str | None:
    """The task's container id, once Swarm created one."""
    container = ((task or {}).get("Status") or {}).get("ContainerStatus") or {}
    found = container.get("ContainerID")
    return str(found) if found else None


def swarm_reason(task: Mapping[str, Any] | None) -> str:
    """Swarm's own words for a task's state (`no suitable node (...)`, `task: non-zero exit (3)`)."""
    if task is None:
        return "no task was created"
    status = task.get("Status") or {}
    return str(status.get("Err") or status.get("Message") or f"task {task_state(task)}")


def unscheduled_for(service: Mapping[str, Any], task: Mapping[str, Any] | None,
                    now: datetime) -> float | None:
    """Seconds the run has waited for a node (no task yet, or an unplaced one); None once placed."""
    if task is not None and task_state(task) not in UNSCHEDULED:
        return None
    since = docker_time(str((task or service).get("CreatedAt") or "")) or docker_time(
        str(service.get("CreatedAt") or ""))
    return None if since is None else max(0.0, (now - since).total_seconds())


def _exit_code(task: Mapping[str, Any]) -> int | None:
    status = task.get("Status") or {}
    container = status.get("ContainerStatus") or {}
    if not container.get("ContainerID") or "ExitCode" not in container:
        return None  # nothing ran: no exit code to report
    return int(container["ExitCode"])


def service_info(service: Mapping[str, Any], task: Mapping[str, Any] | None,
                 container: Mapping[str, Any] | None = None) -> ContainerInfo:
    """The run's service as the port sees it; `container`: the inspected task container when it is on this
    node (the only place OOM kills and exact start/finish times are known)."""
    spec = service.get("Spec") or {}
    container_spec = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {})
    labels = dict(spec.get("Labels") or {})
    state = task_state(task)
    pinned = str(container_spec.get("Image") or "")
    status, exit_code, error, finished = "running", None, None, None
    if task is not None and state not in LIVE:
        status, finished = "exited", _time(task.get("Status", {}).get("Timestamp"))
        exit_code = 0 if state == "complete" else _exit_code(task)
        error = None if state == "complete" else swarm_reason(task)
    c_state = (container or {}).get("State") or {}
    if container is not None and status == "exited":
        exit_code = exit_code if exit_code is None else int(c_state.get("ExitCode", exit_code))
        finished = _time(c_state.get("FinishedAt")) or finished
    return ContainerInfo(
        id=str(service["ID"]),
        name=str(spec.get("Name") or ""),
        status=status,
        labels=labels,
        exit_code=exit_code,
        oom_killed=bool(c_state.get("OOMKilled")),
        created=str(service.get("CreatedAt") or ""),
        finished_at=finished,
        started_at=_time(c_state.get("StartedAt")),
        image=labels.get(IMAGE_LABEL) or pinned,
        image_id=str((container or {}).get("Image") or (pinned if pinned.startswith("sha256:") else "")),
        error=error,
        kind="service",
    )


def gone_info(info: ContainerInfo, error: str, finished_at: str) -> ContainerInfo:
    """What the agent remembers of a service it removed itself (unschedulable, stopped off this node)."""
    return ContainerInfo(id=info.id, name=info.name, status="exited", labels=dict(info.labels),
                         exit_code=info.exit_code if info.exited else None, oom_killed=info.oom_killed,
                         created=info.created, finished_at=finished_at, started_at=info.started_at,
                         image=info.image, image_id=info.image_id, error=error, kind=info.kind,
                         removed=True)


def _time(value: Any) -> str | None:
    text = str(value or "")
    return text if docker_time(text) is not None else None
