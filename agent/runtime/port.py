"""The runtime port: what the agent needs from a container engine, and nothing more.

Every consumer (the launch pipeline, the watcher, restart recovery, cleanup, flow-log streaming) is typed
against `ContainerRuntime`, never against docker-py, so another engine (Swarm services, Podman) plugs in
beside `agent.runtime.engine.DockerEngine`, and the orchestration is tested in-process with a fake
(`tests/support/fake_runtime.py`).

The methods are coroutines: an engine runs its blocking calls in its own threads, with timeouts, so no caller
ever blocks the event loop or needs to know how. Two streams are the exception: `events` and `follow_logs`
hand back blocking iterators, read by a dedicated thread of the consumer and ended with `close()`.
Failures are `agent.runtime.docker_types.DockerError`s whose class and `transient` flag say whether the run
is broken or the engine is away.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, Protocol

from agent.runtime.docker_types import ContainerInfo, ContainerSpec, DaemonFacts, LaunchResult

Labels = Mapping[str, str | None]  # label filters: a None value matches any value
BeforeStart = Callable[[str], Coroutine[Any, Any, None]]


class Stream(Protocol):
    """A blocking stream (engine events, container output); `close()` from any thread ends the iteration."""

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class ContainerRuntime(Protocol):
    """One container engine, as the agent uses it."""

    @property
    def address(self) -> str:
        """Where the engine is reached (`unix:///var/run/docker.sock`, `tcp://host:2376`), for messages."""
        ...

    async def ping(self) -> None:
        """Raise `DockerUnavailable` unless the engine answers."""

    async def host_id(self) -> str:
        """A stable id of the engine's host, recorded in claims (restart recovery asks "claimed here?")."""
        ...

    async def daemon_facts(self) -> DaemonFacts:
        """When the engine last started and whether containers survive its restarts (`supervise.infra`)."""
        ...

    async def image_present(self, image: str) -> bool: ...

    async def image_digest(self, image: str) -> str | None:
        """The registry digest of a local image, for forensics; None when unknown."""
        ...

    async def pull(self, image: str, *, on_progress: Callable[[str], None] | None = None,
                   auth_config: dict[str, Any] | None = None, progress_interval: float = 5.0) -> str:
        """Pull `image`; the local image id. Registry errors raise `ImagePullError` (the registry's text)."""
        ...

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        """Create the named volume unless it exists; True when created."""
        ...

    async def launch(self, spec: ContainerSpec, *, replace_exited: bool = False,
                     before_start: BeforeStart | None = None) -> LaunchResult:
        """Create and start; a container already holding the spec's name is adopted, never started twice.
        `before_start(container_id)` is awaited before this call starts a container (the launch record)."""
        ...

    async def find(self, labels: Labels, *, all: bool = True, inspect: bool = True) -> list[ContainerInfo]:
        """Containers carrying every label; `inspect=False`: from one list call (no exit codes)."""
        ...

    async def count(self, labels: Labels) -> int:
        """Running containers carrying every label (one list call)."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """The container's state, or None when it does not exist."""
        ...

    async def logs_tail(self, container_id: str, lines: int = 50) -> str:
        """The last `lines` lines of output; `ContainerNotFound` when the container is gone."""
        ...

    async def stop(self, container_id: str, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` s; a missing container is fine."""

    async def remove(self, container_id: str, force: bool = False) -> None:
        """Remove the container; idempotent."""

    def events(self, labels: Labels, since: int | None = None) -> Stream:
        """A blocking stream of `start`/`die` events (dicts with `Action` and `id`) of labelled containers."""
        ...

    def follow_logs(self, container_id: str, since: float | None = None) -> Stream:
        """A blocking stream of the container's output chunks (bytes)."""
        ...

    async def close(self) -> None:
        """Release connections and threads; calls still blocked in the engine are abandoned."""
