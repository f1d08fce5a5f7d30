"""`FakeRuntime`: an in-memory `ContainerRuntime` for in-process orchestration tests (no Docker).

It keeps the contract of `agent.runtime.port.ContainerRuntime` as `DockerEngine` implements it: adoption by
name (`created=False`), `replace_exited`, `ImageNotFound` for an absent image, `DockerUnavailable` while the
engine is "down", `start`/`die` events on a blocking stream fed by a `queue.Queue`. Tests drive the
containers' lives with `finish`, `vanish` and `say`, inject failures with `fail_launch`, `fail_pull`, `down`
and one-shot `before_next` hooks, and read every call in `calls`.

Everything but the streams runs on the event loop's thread; the streams are read by the agent's threads
and are only ever touched through their (thread-safe) queues.
"""

from __future__ import annotations

import asyncio
import queue
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.runtime.docker_types import (
    FLOW_RUN_LABEL,
    ContainerCreateError,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    DaemonFacts,
    DockerError,
    DockerUnavailable,
    ImageNotFound,
    LaunchResult,
    container_name_for,
)
from agent.runtime.port import BeforeStart, Labels, Stream

if TYPE_CHECKING:
    from agent.runtime.port import ContainerRuntime

_END = object()
SIGTERM_EXIT = 143
Hook = Callable[..., Awaitable[None]]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeStream:
    """A blocking iterator over a queue; `close()` (any thread) ends the iteration."""

    def __init__(self, labels: Labels | None = None, container_id: str | None = None) -> None:
        self.labels = dict(labels or {})
        self.container_id = container_id
        self.closed = False
        self._queue: queue.Queue[Any] = queue.Queue()

    def put(self, item: Any) -> None:
        if not self.closed:
            self._queue.put(item)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(_END)


@dataclass
class FakeContainer:
    id: str
    name: str
    image: str
    labels: dict[str, str]
    spec: ContainerSpec | None = None
    status: str = "created"
    exit_code: int | None = None
    oom_killed: bool = False
    output: list[str] = field(default_factory=list)
    created: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def run_id(self) -> str | None:
        return self.labels.get(FLOW_RUN_LABEL)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def info(self, *, inspected: bool = True) -> ContainerInfo:
        if not inspected:  # what one `docker ps` row tells (ContainerInfo.from_summary)
            return ContainerInfo(id=self.id, name=self.name, status=self.status, labels=dict(self.labels),
                                 exit_code=None, oom_killed=False, created="", finished_at=None)
        exited = self.status in ("exited", "dead")
        return ContainerInfo(
            id=self.id, name=self.name, status=self.status, labels=dict(self.labels),
            exit_code=self.exit_code if exited else None, oom_killed=self.oom_killed, created=self.created,
            finished_at=self.finished_at, started_at=self.started_at, image=self.image,
            image_id=f"sha256:{self.image}",
        )

    def matches(self, labels: Labels) -> bool:
        return all(key in self.labels and (value is None or self.labels[key] == value)
                   for key, value in labels.items())


class FakeRuntime:
    """In-memory container engine; see the module docstring."""

    def __init__(self, *, images: tuple[str, ...] = (), host: str = "fake-host-1",
                 address: str = "fake:///engine") -> None:
        self.images: set[str] = set(images)
        self.containers: dict[str, FakeContainer] = {}  # by id
        self.volumes: set[str] = set()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.down = False  # every engine call raises DockerUnavailable
        self.peak_running = 0  # the most containers ever running at once
        self.closed = 0  # how many times close() was called
        self._host, self._address = host, address
        self._launch_errors: dict[str, list[DockerError | None]] = {}  # by image; None: succeed
        self._pull_errors: dict[str, DockerError] = {}
        self._hooks: dict[str, list[Hook]] = {}
        self._launch_gate: asyncio.Event | None = None
        self._event_streams: list[FakeStream] = []
        self._log_streams: list[FakeStream] = []
        self.facts = DaemonFacts(started_at=datetime.now(UTC), live_restore=False)

    # ------------------------------------------------------------------ test controls
    def fail_launch(self, image: str, error: DockerError, times: int = 1) -> None:
        """The next `times` launches of `image` raise `error` (before anything is created)."""
        self._launch_errors.setdefault(image, []).extend([error] * times)

    def fail_pull(self, image: str, error: DockerError) -> None:
        """Every pull of `image` raises `error`."""
        self._pull_errors[image] = error

    def before_next(self, method: str, hook: Hook) -> None:
        """Await `hook(*args)` once, at the start of the next call of `method` (e.g. "ping")."""
        self._hooks.setdefault(method, []).append(hook)

    def hold_launches(self) -> None:
        """Launches wait (cancellably) until `release_launches()`: a launch caught in flight."""
        self._launch_gate = asyncio.Event()

    def release_launches(self) -> None:
        if self._launch_gate is not None:
            self._launch_gate.set()
        self._launch_gate = None

    def add_container(self, name: str, labels: Mapping[str, str], *, image: str = "seeded:1",
                      status: str = "running", exit_code: int | None = None) -> FakeContainer:
        """A container that was there before the agent (left by an earlier process)."""
        container = FakeContainer(self._new_id(), name, image, dict(labels), status=status,
                                  exit_code=exit_code, started_at=_now() if status != "created" else None)
        if status == "exited":
            container.finished_at = _now()
        self.containers[container.id] = container
        self._note_running()
        return container

    def container(self, ref: str) -> FakeContainer | None:
        """By id, name, or flow-run id."""
        found = self.containers.get(ref)
        if found is not None:
            return found
        for candidate in self.containers.values():
            if ref in (candidate.name, candidate.run_id) or candidate.name == container_name_for(ref):
                return candidate
        return None

    def running(self, labels: Labels | None = None) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.running and c.matches(labels or {})]

    def finish(self, ref: str | FakeContainer, code: int, oom: bool = False) -> None:
        """The container exits with `code` (OOM-killed when `oom`): status exited and a `die` event."""
        container = self._resolve(ref)
        container.status, container.exit_code, container.oom_killed = "exited", code, oom
        container.finished_at = _now()
        self._emit("die", container)
        for stream in self._log_streams:
            if stream.container_id == container.id:
                stream.close()

    def restart_daemon(self) -> list[FakeContainer]:
        """The daemon restarts without live-restore: every running container is stopped (143) without an event
        reaching the agent (the API closes first), and the new daemon's start time is after their ends."""
        stopped = self.running()
        for container in stopped:
            container.status, container.exit_code, container.finished_at = "exited", SIGTERM_EXIT, _now()
        time.sleep(0.002)  # the new daemon starts strictly after the last stop
        self.facts = DaemonFacts(started_at=datetime.now(UTC), live_restore=self.facts.live_restore)
        return stopped

    def vanish(self, ref: str | FakeContainer) -> None:
        """The container is removed behind the agent's back (`docker rm -f` by someone), without an event."""
        del self.containers[self._resolve(ref).id]

    def say(self, ref: str | FakeContainer, *lines: str) -> None:
        """The container prints `lines`."""
        container = self._resolve(ref)
        container.output.extend(lines)
        for stream in self._log_streams:
            if stream.container_id == container.id:
                for line in lines:
                    stream.put((line + "\n").encode())

    def called(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]

    # ------------------------------------------------------------------ the port
    @property
    def address(self) -> str:
        return self._address

    async def ping(self) -> None:
        await self._enter("ping")

    async def host_id(self) -> str:
        await self._enter("host_id")
        return self._host

    async def daemon_facts(self) -> DaemonFacts:
        await self._enter("daemon_facts")
        return self.facts

    async def image_present(self, image: str) -> bool:
        await self._enter("image_present", image)
        return image in self.images

    async def image_digest(self, image: str) -> str | None:
        await self._enter("image_digest", image)
        return f"{image}@sha256:{'0' * 64}" if image in self.images else None

    async def pull(self, image: str, *, on_progress: Callable[[str], None] | None = None,
                   auth_config: dict[str, Any] | None = None, progress_interval: float = 5.0) -> str:
        await self._enter("pull", image)
        error = self._pull_errors.get(image)
        if error is not None:
            raise error
        if on_progress is not None:
            on_progress(f"pulled {image}")
        self.images.add(image)
        return f"sha256:{image}"

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        await self._enter("ensure_volume", name)
        created = name not in self.volumes
        self.volumes.add(name)
        return created

    async def launch(self, spec: ContainerSpec, *, replace_exited: bool = False,
                     before_start: BeforeStart | None = None) -> LaunchResult:
        await self._enter("launch", spec.name, spec.image)
        if self._launch_gate is not None:
            await self._launch_gate.wait()
        errors = self._launch_errors.get(spec.image)
        if errors:
            error = errors.pop(0)
            if error is not None:
                raise error
        existing = self._by_name(spec.name)
        if existing is not None:
            adopted = await self._adopt(existing, spec, replace_exited, before_start)
            if adopted is not None:
                return adopted
        if spec.image not in self.images:
            raise ImageNotFound(spec.image)
        container = FakeContainer(self._new_id(), spec.name, spec.image, dict(spec.labels), spec=spec)
        self.containers[container.id] = container
        if before_start is not None:
            await before_start(container.id)
        self._start(container)
        return LaunchResult(container.id, created=True, started=True)

    async def find(self, labels: Labels, *, all: bool = True, inspect: bool = True) -> list[ContainerInfo]:
        await self._enter("find", dict(labels), all)
        return [c.info(inspected=inspect) for c in list(self.containers.values())
                if c.matches(labels) and (all or c.running)]

    async def count(self, labels: Labels) -> int:
        await self._enter("count", dict(labels))
        return len(self.running(labels))

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        await self._enter("inspect", container_id)
        found = self.containers.get(container_id) or self._by_name(container_id)
        return found.info() if found is not None else None

    async def logs_tail(self, container_id: str, lines: int = 50) -> str:
        await self._enter("logs_tail", container_id, lines)
        found = self.containers.get(container_id)
        if found is None:
            raise ContainerNotFound(container_id)
        return "".join(line + "\n" for line in found.output[-lines:])

    async def stop(self, container_id: str, timeout: float) -> None:
        """Like `docker stop` of a process that honours SIGTERM: exit 143 and a `die` event."""
        await self._enter("stop", container_id, timeout)
        found = self.containers.get(container_id)
        if found is not None and found.running:
            self.finish(found, SIGTERM_EXIT)

    async def remove(self, container_id: str, force: bool = False) -> None:
        await self._enter("remove", container_id, force)
        found = self.containers.get(container_id)
        if found is None:
            return
        if found.running and not force:
            raise DockerError(f"cannot remove running container {found.name}", status_code=409)
        del self.containers[container_id]

    def events(self, labels: Labels, since: int | None = None) -> Stream:
        self._record("events", dict(labels), since)
        self._raise_if_down()
        stream = FakeStream(labels)
        self._event_streams = [s for s in self._event_streams if not s.closed] + [stream]
        return stream

    def follow_logs(self, container_id: str, since: float | None = None) -> Stream:
        self._record("follow_logs", container_id, since)
        self._raise_if_down()
        found = self.containers.get(container_id)
        if found is None:
            raise ContainerNotFound(container_id)
        stream = FakeStream(container_id=container_id)
        for line in found.output:
            stream.put((line + "\n").encode())
        if found.running:
            self._log_streams.append(stream)
        else:
            stream.close()
        return stream

    async def close(self) -> None:
        """The agent is done with the engine: its streams end. The containers stay (they outlive agents)."""
        self._record("close")
        self.closed += 1
        for stream in [*self._event_streams, *self._log_streams]:
            stream.close()
        self._event_streams, self._log_streams = [], []

    # ------------------------------------------------------------------ internals
    def _record(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))

    async def _enter(self, method: str, *args: Any) -> None:
        """Record the call, run a pending hook, and fail like an absent daemon while `down`."""
        self._record(method, *args)
        hooks = self._hooks.get(method)
        if hooks:
            await hooks.pop(0)(*args)
        self._raise_if_down()

    def _raise_if_down(self) -> None:
        if self.down:
            raise DockerUnavailable(self._address, "Connection refused (fake engine is down)")

    async def _adopt(self, existing: FakeContainer, spec: ContainerSpec, replace_exited: bool,
                     before_start: BeforeStart | None) -> LaunchResult | None:
        """The name is taken: the same run's container is adopted (or replaced when exited and asked to)."""
        run_id = spec.labels.get(FLOW_RUN_LABEL)
        if run_id is not None and existing.run_id != run_id:
            raise ContainerCreateError(
                f"container name {spec.name} is taken by container {existing.id[:12]}, which does not belong "
                f"to flow run {run_id}", status_code=409)
        if replace_exited and existing.status in ("exited", "dead"):
            del self.containers[existing.id]
            return None
        if existing.status == "created":
            if before_start is not None:
                await before_start(existing.id)
            self._start(existing)
            return LaunchResult(existing.id, created=False, started=True)
        return LaunchResult(existing.id, created=False, status=existing.status)

    def _start(self, container: FakeContainer) -> None:
        container.status, container.started_at = "running", _now()
        self._note_running()
        self._emit("start", container)

    def _note_running(self) -> None:
        self.peak_running = max(self.peak_running, len(self.running()))

    def _emit(self, action: str, container: FakeContainer) -> None:
        actor = {"ID": container.id, "Attributes": dict(container.labels)}
        event = {"Action": action, "status": action, "id": container.id, "Type": "container",
                 "time": int(time.time()), "Actor": actor}
        for stream in self._event_streams:
            if not stream.closed and container.matches(stream.labels):
                stream.put(event)

    def _by_name(self, name: str) -> FakeContainer | None:
        return next((c for c in self.containers.values() if c.name == name), None)

    def _resolve(self, ref: str | FakeContainer) -> FakeContainer:
        if isinstance(ref, FakeContainer):
            return ref
        found = self.container(ref)
        if found is None:
            raise KeyError(f"no fake container {ref!r}; have {[c.name for c in self.containers.values()]}")
        return found

    @staticmethod
    def _new_id() -> str:
        return uuid.uuid4().hex + uuid.uuid4().hex


if TYPE_CHECKING:
    _conforms: ContainerRuntime = FakeRuntime()  # mypy: the fake keeps the port's contract
