"""The vocabulary of the Docker boundary: its error tree (and the mapping from docker-py / requests
failures onto it) and the value types callers pass in and get back. No Docker calls here.

The one question every caller asks of a Docker failure is "is Docker away, or is this run broken?".
`DockerUnavailable` (and any error with `transient=True`) means keep the run and retry later; an error
with `transient=False` means the run itself cannot work (bad image, denied pull, invalid container).
`agent.runtime.docker` re-exports the public names; import them from there.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import docker.errors
import requests
import urllib3.exceptions

from agent.runtime.images import pull_error_is_permanent

FLOW_RUN_LABEL = "io.prefect.flow-run-id"

_NAME_OK = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")
_ZERO_TIME = "0001-01-01T00:00:00Z"
_OWNED_CREATE_KWARGS = {"image", "command", "name", "environment", "labels", "detach", "network"}


# ------------------------------------------------------------------------------------------------ errors
class DockerError(Exception):
    """Base of every error this module raises; `transient` tells "retry later" from "this run is broken"."""

    failure_reason = "docker"  # the `reason` label of local_agent_runs_failed_total
    engine_error_kind = "other"  # the `kind` label of local_agent_docker_errors_total

    transient: bool = False

    def __init__(self, message: str, *, status_code: int | None = None,
                 transient: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        if transient is not None:
            self.transient = transient


class DockerUnavailable(DockerError):
    """The daemon cannot be reached, did not answer in time, or failed internally. Never fail a run for it."""

    engine_error_kind = "unavailable"

    transient = True

    def __init__(self, address: str, reason: str, advice: str | None = None) -> None:
        self.address = address
        self.reason = reason
        advice = advice or _advice(address, reason)
        super().__init__(f"Cannot reach the Docker daemon at {address}: {reason}. {advice}")


class ImagePullError(DockerError):
    """A pull failed; `message` is the registry's / daemon's own text (manifest unknown, denied, ...)."""

    failure_reason = "image"

    def __init__(self, image: str, message: str, *, status_code: int | None = None,
                 transient: bool | None = None) -> None:
        self.image = image
        self.registry_message = message
        if transient is None:
            client_error = status_code is not None and 400 <= status_code < 500
            transient = not client_error and not pull_error_is_permanent(message)
        super().__init__(f"Pulling image {image} failed: {message}", status_code=status_code,
                         transient=transient)


class ImageNotFound(DockerError):
    """The image is not on this host and was not pulled (pulling is off or `never`)."""

    failure_reason = "image"

    def __init__(self, image: str) -> None:
        self.image = image
        super().__init__(
            f"Image {image} is not present on this Docker host and was not pulled (pulling is off: "
            f"--no-pull). Pull it on the host (docker pull {image}) or turn pulling on.", status_code=404)


class ContainerCreateError(DockerError):
    """Docker refused to create, connect or start the flow-run container; carries Docker's own message."""

    failure_reason = "container"


class ContainerNotFound(DockerError):
    """The container does not exist (any more)."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        super().__init__(f"No such container: {container_id}", status_code=404)


def _advice(address: str, reason: str) -> str:
    if "timed out" in reason:
        return ("The daemon is overloaded or hung: check `docker info` on the host, "
                "or raise the Docker API timeout.")
    if address.startswith("unix://"):
        path = address.removeprefix("unix://")
        if "ermission denied" in reason:
            return (f"The agent's user may not open {path}: run it as root or add the socket's group "
                    f"(--group-add $(stat -c %g {path})).")
        return (f"Start Docker, or, when the agent runs in a container, mount the host socket: "
                f"-v {path}:{path}")
    return ("Start Docker on that host, or fix DOCKER_HOST (and DOCKER_TLS_VERIFY / DOCKER_CERT_PATH "
            "for TLS); when the agent runs in a container, the address must be reachable from inside it.")


def _walk(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (args, urllib3 `reason`, cause, context), breadth first."""
    queue, seen = [exc], set()
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        queue.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
        for linked in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                queue.append(linked)


def is_timeout(exc: BaseException) -> bool:
    timeouts = (TimeoutError, requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError)
    return any(isinstance(inner, timeouts) for inner in _walk(exc))


def is_unreachable(exc: BaseException) -> bool:
    """Connection-level failures (socket missing, refused, reset, timed out), wrapped or not."""
    if isinstance(exc, docker.errors.APIError):
        return False
    kinds = (OSError, requests.exceptions.RequestException, urllib3.exceptions.HTTPError)
    return any(isinstance(inner, kinds) for inner in _walk(exc))


def reason(exc: BaseException, timeout: float) -> str:
    if is_timeout(exc):
        return f"timed out after {timeout:g}s"
    for inner in _walk(exc):
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
    return first_line(str(exc))


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def explanation(exc: docker.errors.APIError) -> str:
    return first_line(str(exc.explanation or exc))


# Engine races that pass by themselves (a veth pair vanishing while the sandbox is set up, a container
# removed under us, a daemon too busy to answer in time). Any other refusal, 5xx included, is the run's own:
# "could not select device driver" or "executable file not found" fail the same way on every attempt.
_TRANSIENT_ENGINE_ERRORS = (
    "failed to add interface", "to sandbox", "link not found", "no such container",
    "connection reset by peer", "i/o timeout", "context deadline exceeded",
    "resource temporarily unavailable",
)


def engine_error_is_transient(exc: docker.errors.APIError) -> bool:
    """Whether a create/start refusal is an engine race worth retrying, judged by Docker's own text."""
    lowered = str(exc.explanation or exc).lower()
    return (exc.is_server_error() or exc.status_code == 404) and any(
        marker in lowered for marker in _TRANSIENT_ENGINE_ERRORS)


# ------------------------------------------------------------------------------------------------ values
@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one flow-run container.

    `host_config` takes extra docker-py `containers.create` kwargs (mem_limit, mounts, device_requests, ...);
    it may not override the fields above it. `networks[0]` is joined at create time, the others are
    connected before start (so the flow never runs without them, cf. PrefectHQ/prefect#4840).
    """

    name: str
    image: str
    command: list[str]
    environment: dict[str, str]
    labels: dict[str, str]
    extra_hosts: dict[str, str] = field(default_factory=dict)
    host_config: dict[str, Any] = field(default_factory=dict)
    networks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME_OK.match(self.name):
            raise ValueError(f"invalid container name {self.name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        clash = _OWNED_CREATE_KWARGS & set(self.host_config)
        if clash:
            raise ValueError(f"host_config may not set {sorted(clash)}: use the ContainerSpec fields")
        if self.networks and "network_mode" in self.host_config:
            raise ValueError("networks and host_config['network_mode'] are mutually exclusive")

    def create_kwargs(self) -> dict[str, Any]:
        """The docker-py `containers.create` keyword arguments for this spec."""
        kwargs = dict(self.host_config)
        if self.extra_hosts:
            kwargs["extra_hosts"] = {**kwargs.get("extra_hosts", {}), **self.extra_hosts}
        if self.networks:
            kwargs["network"] = self.networks[0]
        kwargs.update(image=self.image, command=list(self.command), name=self.name,
                      environment=dict(self.environment), labels=dict(self.labels), detach=True)
        return kwargs


@dataclass(frozen=True)
class DaemonFacts:
    """What the engine says about itself that decides whether a container's death was the engine's doing."""

    started_at: datetime | None  # when the running daemon started; None when it cannot tell
    live_restore: bool | None  # containers survive a daemon restart; None when unknown
    engine: str | None = None  # its kind and version, for the start-up lines ("Podman 4.3.1 (rootless, ...)")
    warnings: tuple[str, ...] = ()  # what it cannot do that the agent's settings may ask for


@dataclass(frozen=True)
class LaunchResult:
    container_id: str
    created: bool  # False: a container with this name already existed and was adopted, not started twice
    status: str = "running"  # container status after launch; an adopted one may already be "exited"
    started: bool = False  # this launch started it (created now, or adopted as created but never started)


@dataclass(frozen=True)
class ContainerInfo:
    """The parts of `docker inspect` the agent reasons about."""

    id: str
    name: str
    status: str  # created | running | paused | restarting | removing | exited | dead
    labels: dict[str, str]
    exit_code: int | None  # only once the container has exited
    oom_killed: bool
    created: str
    finished_at: str | None
    started_at: str | None = None
    image: str = ""  # the reference it was created from
    image_id: str = ""
    error: str | None = None  # the daemon's error when starting failed
    kind: str = "container"  # "service": a run of the swarm engine (its logs: `docker service logs`)
    removed: bool = False  # the engine's record is gone: the agent removed it itself (what it knew is here)

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting", "paused")

    @property
    def exited(self) -> bool:
        return self.status in ("exited", "dead")

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> ContainerInfo:
        state = attrs.get("State") or {}
        config = attrs.get("Config") or {}
        status = str(state.get("Status") or "unknown")
        return cls(
            id=attrs["Id"],
            name=str(attrs.get("Name") or "").lstrip("/"),
            status=status,
            labels=dict(config.get("Labels") or {}),
            exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
            oom_killed=bool(state.get("OOMKilled")),
            created=str(attrs.get("Created") or ""),
            finished_at=_time_or_none(state.get("FinishedAt")),
            started_at=_time_or_none(state.get("StartedAt")),
            image=str(config.get("Image") or ""),
            image_id=str(attrs.get("Image") or ""),
            error=state.get("Error") or None,
        )

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> ContainerInfo:
        """From a `docker ps` row: id, name, status and labels only (no exit code, OOM flag or times)."""
        names = summary.get("Names") or [""]
        return cls(
            id=summary["Id"],
            name=str(names[0]).lstrip("/"),
            status=str(summary.get("State") or "unknown"),
            labels=dict(summary.get("Labels") or {}),
            exit_code=None,
            oom_killed=False,
            created="",
            finished_at=None,
        )


def _time_or_none(value: str | None) -> str | None:
    return None if not value or value == _ZERO_TIME else value


def docker_time(value: str | None) -> datetime | None:
    """A Docker timestamp (RFC 3339 with nanoseconds); None for Go's zero time, a missing or a garbled one."""
    if not value or value == _ZERO_TIME:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def container_name_for(flow_run_id: str, prefix: str = "prefect") -> str:
    """`prefect-<flow_run_id>`: deterministic, so a second launch of the same run collides by name.

    Ids that are not already name-safe get their unsafe characters replaced plus a short hash of the
    original, so two different ids can never map to the same name.
    """
    safe = _NAME_UNSAFE.sub("-", flow_run_id).strip("-.")
    if safe != flow_run_id or len(safe) > 100:
        digest = hashlib.sha256(flow_run_id.encode()).hexdigest()[:12]
        safe = f"{safe[:80]}-{digest}" if safe else digest
    return f"{prefix}-{safe}"
