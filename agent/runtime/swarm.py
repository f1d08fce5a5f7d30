"""`SwarmRuntime`: the runtime port over a Docker Swarm manager, one replicated-job service per flow run.

It is a `DockerRuntime` (same synchronous, timed, error-mapped boundary, same methods, so
`agent.runtime.engine.DockerEngine` makes it the port) whose "containers" are the runs' services: a launch
creates the service (adopting one of the same name: Swarm's unique service names are the cluster-wide lock
that the container name is on one host), and everything after it reads the service and its one task.

Two things are the agent's own here, because Swarm has no notion of them: a task Swarm cannot place within
`schedule_timeout` fails the run with Swarm's reason (the service is removed; what happened is remembered so
later inspects still tell), and an image is referenced by digest or local id, so that no node tries a pull
the run did not ask for.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
from loguru import logger

from agent.runtime.docker import DockerRuntime
from agent.runtime.docker_clients import label_filters
from agent.runtime.docker_types import (
    FLOW_RUN_LABEL,
    ContainerCreateError,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    DockerError,
    DockerUnavailable,
    LaunchResult,
    engine_error_is_transient,
    explanation,
)
from agent.runtime.images import split_image
from agent.runtime.swarm_spec import service_spec
from agent.runtime.swarm_streams import ServiceLogs, TaskEvents, View, open_service_logs
from agent.runtime.swarm_types import (
    LIVE,
    SERVICE_ID_LABEL,
    SwarmOptions,
    gone_info,
    latest_task,
    service_info,
    swarm_reason,
    task_container_id,
    task_state,
    unscheduled_for,
)

REMEMBERED = 1000  # services the agent removed itself, kept in memory for later inspects
STOP_SETTLE_S = 5.0  # after a stop, how long to wait for Swarm to record the task's end


class SwarmRuntime(DockerRuntime):
    """Synchronous, thread-safe facade over one Swarm manager (`DockerEngine` runs it in threads)."""

    def __init__(self, base_url: str | None = None, timeout: float = 60.0,
                 options: SwarmOptions | None = None) -> None:
        super().__init__(base_url, timeout)
        self.options = options or SwarmOptions()
        self._gone: dict[str, ContainerInfo] = {}  # by service id and name
        self._unplaced_since: dict[str, float] = {}  # service id -> monotonic time first seen unplaced
        self._lock = threading.Lock()
        self._node_id: str | None = None
        self._network_ready = False

    def api(self) -> Any:
        """docker-py's low-level client (its service and task calls are untyped in the stubs)."""
        return self.client().api

    # -- the manager
    def check_manager(self) -> None:
        """Raise a clear `DockerError` unless the daemon is an active swarm manager."""
        swarm = self.info().get("Swarm") or {}
        state = swarm.get("LocalNodeState") or "inactive"
        if state != "active":
            raise DockerError(
                f"The Docker daemon at {self.address} is not part of a swarm (node state: {state}); the "
                "swarm engine needs a manager: run `docker swarm init` there, or point DOCKER_HOST at one")
        if not swarm.get("ControlAvailable"):
            raise DockerError(
                f"The Docker daemon at {self.address} is a swarm worker, not a manager: services can only be "
                "created through a manager (point DOCKER_HOST at one, or promote this node)")

    def host_identity(self) -> str:
        """`swarm:<cluster id>`: runs claimed through any manager of one cluster were claimed 'here'."""
        self.check_manager()
        return f"swarm:{self.info()['Swarm']['Cluster']['ID']}"

    def node_id(self) -> str:
        """This daemon's node id (its task containers can be inspected and stopped directly)."""
        if self._node_id is None:
            self._node_id = str((self.info().get("Swarm") or {}).get("NodeID") or "")
        return self._node_id

    def pinned_image(self, image: str) -> str:
        """The local image's repo digest, else its id, else `image`: Swarm skips the per-task pull for an id
        or a digest the node has, and the run asked for that image, not for whatever a registry has now."""
        with self.errors("inspect an image"):
            try:
                attrs: dict[str, Any] = self.api().inspect_image(image)
            except docker.errors.NotFound:
                return image
        repository, _ = split_image(image)
        matching = [d for d in attrs.get("RepoDigests") or [] if d.partition("@")[0] == repository]
        return str(matching[0] if matching else attrs["Id"])

    def ensure_network(self) -> None:
        """Create the flow network (an attachable overlay, with the agent's labels) unless it exists."""
        name = self.options.network
        if self._network_ready or not name:
            return
        with self.errors("create the flow network"):
            try:  # asked of the cluster itself: a node keeps a removed network in its lists for a while
                self.api().create_network(name, driver="overlay", attachable=True,
                                          labels=dict(self.options.network_labels))
                logger.info("created the swarm network {name} for flow runs", name=name)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: it exists (made by us earlier, or by another agent)
                    raise
        self._network_ready = True

    # -- launch
    def launch(self, spec: ContainerSpec, *, replace_exited: bool = False,
               before_start: Callable[[str], None] | None = None) -> LaunchResult:
        """Create the run's service, or adopt the one that holds its name (`before_start(service name)` is
        called before a service is created: creating it runs it)."""
        image = self.pinned_image(spec.image)
        try:  # refusals come first; a value docker-py cannot express fails the run, never crashes the launch
            kwargs = service_spec(spec, self.options, image)
        except (docker.errors.DockerException, ValueError, TypeError) as exc:
            raise ContainerCreateError(f"invalid service configuration for {spec.name}: {exc}") from exc
        if not spec.networks:
            self.ensure_network()
        for _ in range(3):  # the holder of the name may vanish between our create and our lookup
            adopted = self._adopt(spec, replace_exited)
            if adopted is not None:
                return adopted
            if before_start is not None:
                before_start(spec.name)
            service_id = self._create_service(spec, kwargs)
            if service_id is not None:
                logger.debug("created service {name} ({id})", name=spec.name, id=service_id[:12])
                return LaunchResult(service_id, created=True, started=True)
        raise ContainerCreateError(f"service name {spec.name} is in use but its holder keeps disappearing",
                                   status_code=409, transient=True)

    def _create_service(self, spec: ContainerSpec, kwargs: dict[str, Any]) -> str | None:
        """The new service's id, or None when the name is taken."""
        with self.errors("create a service"):
            try:
                return str(self.api().create_service(**kwargs)["ID"])
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    return None
                if exc.status_code == 503 or _swarm_unavailable(explanation(exc)):
                    why = f"Swarm cannot create services now: {explanation(exc)}"
                    raise DockerUnavailable(self.address, why, "The run is requeued; retried later.") from exc
                transient = engine_error_is_transient(exc)
                if f"network {self.options.network} not found" in explanation(exc):
                    self._network_ready, transient = False, True  # removed under us: the retry recreates it
                raise ContainerCreateError(
                    f"Swarm could not create service {spec.name} from {spec.image}: {explanation(exc)}",
                    status_code=exc.status_code, transient=transient) from exc
            except (TypeError, ValueError, docker.errors.InvalidArgument) as exc:
                raise ContainerCreateError(f"invalid service configuration for {spec.name}: {exc}") from exc

    def _adopt(self, spec: ContainerSpec, replace_exited: bool) -> LaunchResult | None:
        """The existing service of this run, adopted (or removed, when finished and `replace_exited`)."""
        info = self.inspect(spec.name, remembered=False)
        if info is None:
            return None
        run_id = spec.labels.get(FLOW_RUN_LABEL)
        if run_id is not None and info.labels.get(FLOW_RUN_LABEL) != run_id:
            raise ContainerCreateError(
                f"service name {spec.name} is taken by service {info.id[:12]}, which does not belong to "
                f"flow run {run_id}", status_code=409)
        if replace_exited and info.exited:
            logger.debug("replacing finished service {name}", name=spec.name)
            self.remove(info.id)
            return None
        logger.debug("adopting existing service {name} ({status})", name=spec.name, status=info.status)
        return LaunchResult(info.id, created=False, status=info.status)

    # -- reading services
    def _tasks(self, service_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {s: [] for s in service_ids}
        if service_ids:
            for task in self.api().tasks(filters={"service": service_ids}):
                found.setdefault(str(task.get("ServiceID")), []).append(task)
        return found

    def _view(self, service: Mapping[str, Any], tasks: list[dict[str, Any]], inspect: bool) -> View:
        """The service as the port sees it; a task unplaced for too long ends the run here."""
        task = latest_task(tasks)
        waited = self._unplaced_for(str(service["ID"]), unscheduled_for(service, task, datetime.now(UTC)))
        if waited is not None and waited > self.options.schedule_timeout:
            return self._give_up(service, task), task_state(task)
        container = self._task_container(task) if inspect else None
        return service_info(service, task, container), task_state(task)

    def _unplaced_for(self, service_id: str, by_manager: float | None) -> float | None:
        """How long the task has waited for a node: the manager's record, but never more than this process
        has seen it waiting (a clock ahead of the manager's must not give up on a task at once)."""
        with self._lock:
            if by_manager is None:
                self._unplaced_since.pop(service_id, None)
                return None
            while len(self._unplaced_since) >= REMEMBERED:
                self._unplaced_since.pop(next(iter(self._unplaced_since)))
            first_seen = self._unplaced_since.setdefault(service_id, time.monotonic())
        return min(by_manager, time.monotonic() - first_seen)

    def _task_container(self, task: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The task's container when it is on this node (OOM kill, exact times); None elsewhere."""
        container_id = task_container_id(task)
        if container_id is None or (task or {}).get("NodeID") != self.node_id():
            return None
        try:
            return dict(self.api().inspect_container(container_id))
        except docker.errors.NotFound:
            return None

    def _give_up(self, service: Mapping[str, Any], task: Mapping[str, Any] | None) -> ContainerInfo:
        timeout = self.options.schedule_timeout
        error = f"Swarm could not place the task within {timeout:g}s: {swarm_reason(task)}"
        info = service_info(service, task)
        logger.warning("service {name}: {error}; service removed", name=info.name, error=error)
        return self._forget_service(info, error)

    def _forget_service(self, info: ContainerInfo, error: str) -> ContainerInfo:
        """Remove the service the agent ends itself, remembering how it ended."""
        gone = gone_info(info, error, datetime.now(UTC).isoformat().replace("+00:00", "Z"))
        with self._lock:
            while len(self._gone) >= 2 * REMEMBERED:
                self._gone.pop(next(iter(self._gone)))
            self._gone[info.id] = self._gone[info.name] = gone
        self._remove_service(info.id)
        return gone

    def _views(self, labels: Mapping[str, str | None], inspect: bool) -> list[View]:
        with self.errors("list services"):
            services = self.api().services(filters={"label": label_filters(labels)})
            tasks = self._tasks([str(s["ID"]) for s in services])
            return [self._view(s, tasks.get(str(s["ID"]), []), inspect) for s in services]

    def find(self, labels: Mapping[str, str | None], *, all: bool = True,
             inspect: bool = True) -> list[ContainerInfo]:
        """The services carrying every label (a None value matches any), with what the agent removed itself
        (`all`); `inspect=False` skips the task containers (no OOM flag or exact times)."""
        infos = [info for info, _ in self._views(labels, inspect)]
        if all:
            known = {info.id for info in infos}
            with self._lock:
                remembered = {info.id: info for info in self._gone.values()}
            infos += [i for i in remembered.values() if i.id not in known and _matches(i.labels, labels)]
        return infos if all else [info for info in infos if info.running]

    def count(self, labels: Mapping[str, str | None], *, all: bool = False) -> int:
        """Live runs (services whose task Swarm has not finished with), cluster-wide."""
        return len(self.find(labels, all=all, inspect=False))

    def inspect(self, container_id: str, *, remembered: bool = True) -> ContainerInfo | None:
        """The service (by id or name) as the port sees it, or None when it does not exist."""
        with self.errors("inspect a service"):
            try:
                service = self.api().inspect_service(container_id)
            except docker.errors.NotFound:
                with self._lock:
                    return self._gone.get(container_id) if remembered else None
            service_id = str(service["ID"])
            return self._view(service, self._tasks([service_id])[service_id], inspect=True)[0]

    # -- output
    def logs_tail(self, container_id: str, lines: int = 50, max_chars: int = 64_000) -> str:
        """The service's last `lines` lines of output (its task's, wherever it ran)."""
        with self.errors("read service logs"):
            try:
                chunks = self.api().service_logs(container_id, stdout=True, stderr=True, tail=lines,
                                                 is_tty=False)
                data = b"".join(bytes(c) for c in chunks)
            except docker.errors.NotFound as exc:
                raise ContainerNotFound(container_id) from exc
        text = data.decode("utf-8", "replace")
        return text if len(text) <= max_chars else "…" + text[-max_chars:]

    def follow_logs(self, container_id: str, since: float | None = None) -> Any:
        """The service's output as it comes, until its task ended (or `close()`)."""
        with self.errors("follow service logs"):
            try:
                response, chunks = open_service_logs(self.api(), container_id, since)
            except docker.errors.NotFound as exc:
                raise ContainerNotFound(container_id) from exc

        def finished() -> bool:
            info = self.inspect(container_id)
            return info is None or info.exited

        return ServiceLogs(response, chunks, finished, on_exit=self.release_thread)

    def events(self, labels: Mapping[str, str | None], actions: tuple[str, ...] = ("start", "die"),
               since: int | None = None) -> Any:
        """A polling stream of `start`/`die` events of the labelled services (`swarm_streams.TaskEvents`)."""
        return TaskEvents(lambda: self._views(labels, inspect=False), since)

    # -- ending
    def stop(self, container_id: str, timeout: float) -> None:
        """Stop the task's container when it is on this node (its exit code is kept); elsewhere, or before
        Swarm placed it, remove the service. A missing service is fine."""
        with self.errors("stop a service"):
            try:
                service = self.api().inspect_service(container_id)
            except docker.errors.NotFound:
                return
            service_id = str(service["ID"])
            task = latest_task(self._tasks([service_id])[service_id])
            if task is not None and task_state(task) not in LIVE:
                return
            local = self._task_container(task)
            if local is None:
                why = "stopped by the agent: its service was removed (its task was not running on this node)"
                self._forget_service(service_info(service, task), why)
                return
            try:
                self.api().stop(local["Id"], timeout=max(0, math.ceil(timeout)))
            except docker.errors.NotFound:
                pass
        self._await_end(service_id)

    def _await_end(self, service_id: str) -> None:
        """Swarm records the task's end a moment after its container stopped; callers inspect right after."""
        deadline = time.monotonic() + STOP_SETTLE_S
        while time.monotonic() < deadline:
            info = self.inspect(service_id)
            if info is None or info.exited:
                return
            time.sleep(0.2)

    def remove(self, container_id: str, force: bool = False) -> None:
        """Remove the service and its task containers on this node (Swarm leaves a finished job's behind);
        idempotent. `force`: a task container still running is removed too."""
        with self._lock:
            gone = self._gone.pop(container_id, None)
            if gone is not None:
                self._gone.pop(gone.name if gone.id == container_id else gone.id, None)
        service_id = self._remove_service(container_id) or (gone.id if gone else container_id)
        self._remove_task_containers(service_id, force)

    def _remove_service(self, service_id: str) -> str | None:
        """Remove the service (by id or name); its id, or None when there was none."""
        with self.errors("remove a service"):
            try:
                found = str(self.api().inspect_service(service_id)["ID"])
                self.api().remove_service(found)
                return found
            except docker.errors.NotFound:
                return None

    def _remove_task_containers(self, service_id: str, force: bool) -> None:
        with self.errors("remove a service's containers"):
            api = self.api()
            for summary in api.containers(all=True, filters={"label": f"{SERVICE_ID_LABEL}={service_id}"}):
                if summary.get("State") == "running" and not force:
                    continue  # Swarm is still shutting it down; the next cleanup takes it
                try:
                    api.remove_container(summary["Id"], v=True, force=force)
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # 409: its removal is already in progress
                        raise


# Swarm's own words when the cluster, not the run, is the problem (a demoted manager, a lost quorum, a
# locked swarm): the run goes back to the queue instead of failing.
_SWARM_UNAVAILABLE = ("not a swarm manager", "does not have a leader", "swarm is encrypted",
                      "not part of a swarm", "rpc error: code = unavailable", "context deadline exceeded")


def _swarm_unavailable(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _SWARM_UNAVAILABLE)


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str | None]) -> bool:
    return all(key in labels and (value is None or labels[key] == value) for key, value in wanted.items())

