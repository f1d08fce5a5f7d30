"""The agent's typed, synchronous boundary to the Docker engine (docker-py underneath).

Everything the agent does to Docker goes through `DockerRuntime`; the running agent reaches it through the
runtime port (`agent.runtime.engine.DockerEngine` runs each call in its own threads). Three promises callers
rely on:

* Every call has a timeout. A thread blocked in a docker call cannot be cancelled from asyncio, so a hung
  daemon must surface as an error, never as a stuck task.
* Every failure is a `DockerError` whose class and `transient` flag say what to do with the run:
  `DockerUnavailable` means "Docker is away, keep the run and retry later"; everything else with
  `transient=False` means "this run is broken" (bad image, denied pull, invalid container config).
* Launching is idempotent per container name: names derive from the flow-run id, so Docker's unique-name
  rule acts as a per-host lock and a second launch adopts the first container instead of running twice.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import docker.utils
from loguru import logger

from agent.runtime import docker_launch
from agent.runtime.docker_clients import ClientPool, label_filters
from agent.runtime.docker_types import (
    ContainerCreateError,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    DaemonFacts,
    DockerError,
    DockerUnavailable,
    ImageNotFound,
    ImagePullError,
    LaunchResult,
    container_name_for,
    docker_time,
    engine_error_is_transient,
    explanation,
    first_line,
    is_timeout,
    is_unreachable,
    reason,
)
from agent.runtime.images import (
    DEADLINE,
    PullProgress,
    SingleFlight,
    follow_pull,
    names_registry,
    open_pull,
    split_image,
)

__all__ = [
    "ContainerCreateError", "ContainerInfo", "ContainerNotFound", "ContainerSpec", "DockerError",
    "DockerRuntime", "DockerUnavailable", "ImageNotFound", "ImagePullError", "LaunchResult",
    "container_name_for", "names_registry", "split_image",
]

# ------------------------------------------------------------------------------------------------ runtime
class DockerRuntime:
    """Synchronous, thread-safe facade over one Docker daemon (`agent.runtime.engine` runs it in threads)."""

    def __init__(self, base_url: str | None = None, timeout: float = 60.0) -> None:
        self._timeout = timeout
        self._clients = ClientPool(base_url, timeout)
        self._address = self._clients.address
        self._pulls = SingleFlight()
        self._announced = False

    @property
    def address(self) -> str:
        """The daemon address we try to reach (`unix:///var/run/docker.sock`, `tcp://host:2376`, ...)."""
        return self._address

    @property
    def timeout(self) -> float:
        return self._timeout

    # -- plumbing
    def client(self) -> docker.DockerClient:
        with self.errors("connect"):
            return self._clients.get()

    def _unavailable(self, exc: BaseException) -> DockerUnavailable:
        return DockerUnavailable(self._address, reason(exc, self._timeout))

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Map docker-py / requests failures onto our tree: unreachable or 5xx -> DockerUnavailable."""
        try:
            yield
        except DockerError:
            raise
        except docker.errors.APIError as exc:
            if exc.is_server_error():
                raise DockerUnavailable(self._address, f"{action} failed: {explanation(exc)}",
                                        "The daemon answered with an internal error; retry later.") from exc
            raise DockerError(f"Docker refused to {action}: {explanation(exc)}",
                              status_code=exc.status_code) from exc
        except Exception as exc:
            if is_unreachable(exc):
                raise self._unavailable(exc) from exc
            raise DockerError(f"Docker client failed to {action}: {first_line(str(exc))}") from exc

    # -- daemon
    def ping(self) -> None:
        """Raise `DockerUnavailable` unless the daemon answers `/_ping` on a new connection (a stopping
        daemon still answers on old ones)."""
        with self.errors("ping"), self._clients.fresh() as api:
            api.ping()

    def info(self) -> dict[str, Any]:
        """The daemon's `docker info` payload (ID, Name, ...): `ID` identifies the Docker host."""
        with self.errors("read the daemon info"):
            return dict(self.client().info())

    def host_identity(self) -> str:
        """The daemon's `docker info` ID: stable across restarts and the same through any socket or proxy to
        that daemon, which is what matters (containers live there). The hostname is the fallback."""
        try:
            found = self.info().get("ID")
        except DockerError as exc:
            logger.debug("docker info failed, the hostname identifies this host: {error}", error=exc)
            found = None
        return str(found) if found else f"host:{socket.gethostname()}"

    def daemon_facts(self) -> DaemonFacts:
        """Docker reports no start time, but dockerd recreates its default `bridge` network at every start:
        that network's creation time is the daemon's (unknown without one: `--bridge=none`)."""
        with self.errors("read the daemon's facts"), self._clients.fresh() as api:  # not a stopping one's
            networks = api.networks(names=["bridge"])  # a name filter matches parts of names too
            created = next((n.get("Created") for n in networks if n.get("Name") == "bridge"), None)
            info = api.info()
        facts = DaemonFacts(docker_time(created), info.get("LiveRestoreEnabled"),
                            engine=f"Docker {info.get('ServerVersion') or 'unknown'}")
        self.announce(facts)
        return facts

    def announce(self, facts: DaemonFacts) -> None:
        """The engine's kind and version, and what it cannot do, once, among the agent's start-up lines."""
        if self._announced:
            return
        self._announced = True
        logger.info("Engine: {engine} at {address}", engine=facts.engine, address=self._address)
        for warning in facts.warnings:
            logger.warning("{warning}", warning=warning)

    # -- images
    def image_present(self, image: str) -> bool:
        return self.image_id(image) is not None

    def image_id(self, image: str) -> str | None:
        """Local image id (`sha256:...`) of `image`, or None when it is not on this host."""
        with self.errors("inspect an image"):
            try:
                attrs: dict[str, Any] = self.client().api.inspect_image(image)  # type: ignore[no-untyped-call]
                return str(attrs["Id"])
            except docker.errors.NotFound:
                return None

    def image_digest(self, image: str) -> str | None:
        """The registry digest (`repo@sha256:...`) of the local `image`, for the run log; None if unknown."""
        repository, _ = split_image(image)
        with self.errors("inspect an image"):
            try:
                attrs: dict[str, Any] = self.client().api.inspect_image(image)  # type: ignore[no-untyped-call]
                digests: list[str] = attrs.get("RepoDigests") or []
            except docker.errors.NotFound:
                return None
        matching = [d for d in digests if d.partition("@")[0] == repository]
        found = matching or digests
        return found[0] if found else None

    def pull(self, image: str, *, on_progress: Callable[[str], None] | None = None,
             progress_interval: float = 5.0, auth_config: dict[str, Any] | None = None,
             timeout: float | None = None, stall_timeout: float = 300.0) -> str:
        """Pull `image` (`repo`, `repo:tag`, `host:port/repo@sha256:...`); returns the local image id.

        Registry errors, whether HTTP (404 manifest unknown, 401, 500 registry unreachable) or inside the
        200 stream, raise `ImagePullError` carrying the registry's message. Progress reaches `on_progress`
        as one summary line at most every `progress_interval` s plus a closing line. `timeout` bounds the
        whole pull, `stall_timeout` the wait for the next progress event (docker-py itself reads pull
        streams without any timeout). Concurrent pulls of one image share a single pull.
        """
        repository, ref = split_image(image)
        key = f"{repository}@{ref}"

        def work(emit: Callable[[str], None]) -> str:
            return self._pull(image, emit, progress_interval, auth_config, timeout, stall_timeout)

        return self._pulls.run(key, work, on_progress)

    def _pull(self, image: str, emit: Callable[[str], None], interval: float,
              auth_config: dict[str, Any] | None, timeout: float | None, stall_timeout: float) -> str:
        deadline = time.monotonic() + timeout if timeout else None
        try:
            response, events = open_pull(self.client().api, image, auth_config, self._timeout, stall_timeout)
            try:
                error = follow_pull(events, PullProgress(image), emit, interval=interval, deadline=deadline)
            finally:
                response.close()
        except docker.errors.APIError as exc:
            raise ImagePullError(image, explanation(exc), status_code=exc.status_code) from exc
        except DockerError:
            raise
        except Exception as exc:
            if is_timeout(exc):
                raise ImagePullError(image, f"no progress for {stall_timeout:g}s", transient=True) from exc
            if is_unreachable(exc):
                raise self._unavailable(exc) from exc
            raise
        if error == DEADLINE:
            raise ImagePullError(image, f"did not finish within {timeout:g}s", transient=True)
        if error is not None:
            raise ImagePullError(image, error)
        found = self.image_id(image)
        if found is None:
            raise ImagePullError(image, "the pull ended but the image is not on the host", transient=True)
        return found

    # -- containers
    def launch(self, spec: ContainerSpec, *, replace_exited: bool = False,
               before_start: Callable[[str], None] | None = None) -> LaunchResult:
        """Create and start `spec`'s container, adopting one of the same name (`docker_launch.launch`)."""
        return docker_launch.launch(self, spec, replace_exited, before_start)

    def create(self, spec: ContainerSpec) -> str:
        """Create (never start) `spec`'s container; a taken name is `ContainerCreateError` 409. `launch`
        creates through it, so checks of what Docker made of a spec see what a launch would run."""
        container_id = self._create(self.client(), spec)
        if container_id is None:
            raise ContainerCreateError(f"container name {spec.name} is already in use", status_code=409)
        return container_id

    def _create(self, client: docker.DockerClient, spec: ContainerSpec) -> str | None:
        """Create the container and return its id, or None when the name is already taken."""
        with self.errors("create a container"):
            try:
                return str(client.containers.create(**spec.create_kwargs()).id)
            except docker.errors.ImageNotFound as exc:
                raise ImageNotFound(spec.image) from exc
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    return None
                raise ContainerCreateError(
                    f"Docker could not create container {spec.name} from {spec.image}: {explanation(exc)}",
                    status_code=exc.status_code, transient=engine_error_is_transient(exc)) from exc
            except (TypeError, ValueError, docker.errors.InvalidArgument) as exc:  # a bad host_config kwarg
                raise ContainerCreateError(f"invalid container configuration for {spec.name}: {exc}") from exc

    def find(self, labels: Mapping[str, str | None], *, all: bool = True,
             inspect: bool = True) -> list[ContainerInfo]:
        """Containers carrying every label in `labels` (a None value matches any value), inspected.

        `inspect=False` answers from the list call alone (id, name, status, labels; no exit code, OOM flag
        or times): one request instead of one per container, for callers that only need those.
        """
        with self.errors("list containers"):
            api = self.client().api
            summaries = api.containers(all=all, filters={"label": label_filters(labels)})
            if not inspect:
                return [ContainerInfo.from_summary(summary) for summary in summaries]
            infos = []
            for summary in summaries:
                try:
                    infos.append(self.container_info(api.inspect_container(summary["Id"])))
                except docker.errors.NotFound:
                    continue  # removed between list and inspect
            return infos

    def count(self, labels: Mapping[str, str | None], *, all: bool = False) -> int:
        """How many containers carry `labels` (running ones unless `all`): one list call, no inspects."""
        with self.errors("list containers"):
            return len(self.client().api.containers(all=all, filters={"label": label_filters(labels)},
                                                     quiet=True))

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        """Create the named volume with `labels` unless it exists (an existing one is used as is)."""
        with self.errors("create a volume"):
            try:
                self.client().api.inspect_volume(name)
                return False
            except docker.errors.NotFound:
                self.client().api.create_volume(name, labels=dict(labels))
                return True

    def find_by_label(self, key: str, value: str | None = None, *, all: bool = True) -> list[ContainerInfo]:
        """Containers labelled `key` (=`value` when given); `all=False` lists running ones only."""
        return self.find({key: value}, all=all)

    def inspect(self, container_id: str) -> ContainerInfo | None:
        """The container's state, or None when it does not exist."""
        with self.errors("inspect a container"):
            try:
                return self.container_info(self.client().api.inspect_container(container_id))
            except docker.errors.NotFound:
                return None

    def container_info(self, attrs: Mapping[str, Any]) -> ContainerInfo:
        """What the agent reads of an inspect payload (an engine that records less corrects it here)."""
        return ContainerInfo.from_attrs(attrs)

    def logs_tail(self, container_id: str, lines: int = 50, max_chars: int = 64_000) -> str:
        """The last `lines` lines of stdout+stderr (at most `max_chars`), for run-log forensics."""
        with self.errors("read container logs"):
            try:
                data = self.client().api.logs(container_id, stdout=True, stderr=True, tail=lines)
            except docker.errors.NotFound as exc:
                raise ContainerNotFound(container_id) from exc
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return text if len(text) <= max_chars else "…" + text[-max_chars:]

    def events(self, labels: Mapping[str, str | None], actions: tuple[str, ...] = ("start", "die"),
               since: int | None = None) -> Any:
        """A blocking, decoded stream of container events for containers carrying `labels` (watcher).

        Iterate it in a dedicated thread; `close()` it from any thread to end the iteration. It has no read
        timeout (events are rare); when the daemon goes away the iteration ends or raises.
        """
        filters = {"type": ["container"], "event": list(actions),
                   "label": label_filters(labels)}
        with self.errors("follow events"):
            return self.client().api.events(since=since, filters=filters, decode=True)

    def follow_logs(self, container_id: str, since: float | None = None) -> Any:
        """A blocking stream of the container's output chunks (`--show-flow-logs`); `close()` ends it."""
        with self.errors("follow container logs"):
            try:
                return self.client().api.logs(container_id, stream=True, follow=True, since=since)
            except docker.errors.NotFound as exc:
                raise ContainerNotFound(container_id) from exc

    def stop(self, container_id: str, timeout: float) -> None:
        """SIGTERM (or the STOPSIGNAL), then SIGKILL after `timeout` s; a missing container is fine."""
        with self.errors("stop a container"):
            try:
                self.client().api.stop(container_id, timeout=max(0, math.ceil(timeout)))
            except docker.errors.NotFound:
                return

    def remove(self, container_id: str, force: bool = False) -> None:
        """Remove the container and its anonymous volumes; idempotent (missing or already going is fine)."""
        with self.errors("remove a container"):
            try:
                self.client().api.remove_container(container_id, v=True, force=force)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "already in progress" in str(exc.explanation):
                    return
                raise

    def release_thread(self) -> None:
        """Close the calling thread's client: for threads that end (their client would stay until `close`)."""
        self._clients.release()

    def close(self) -> None:
        """Close every per-thread client; the runtime reconnects lazily if used again."""
        self._clients.close()
