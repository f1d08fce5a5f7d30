"""`DockerEngine`: the runtime port over Docker, each blocking docker-py call in the engine's own threads.

docker-py is synchronous (`agent.runtime.docker.DockerRuntime` is the typed, timed boundary to it). The
engine runs its calls in a bounded pool, counts the calls still in a thread (a blocked docker call cannot be
cancelled from asyncio, so the process must be able to exit past it), and counts failures for `/metrics`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, ParamSpec, TypeVar

from loguru import logger

from agent.ops.metrics import METRICS
from agent.runtime.docker import DockerRuntime
from agent.runtime.docker_types import ContainerInfo, ContainerSpec, DaemonFacts, LaunchResult
from agent.runtime.port import BeforeStart, Labels, Stream

P = ParamSpec("P")
T = TypeVar("T")


BEFORE_START_WAIT_S = 60.0  # a launch waits this long at most for its record before it starts anyway
WAIT_SLICE_S = 0.5


def _in_loop(before_start: BeforeStart, loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
    """`before_start`, run on the agent's loop and waited for by the engine's thread that launches. The
    launch never fails for it: its errors, and a loop that stopped running it (a forced exit), only cost
    the record; the thread looks at the loop every half second rather than wait blind."""
    def hook(container_id: str) -> None:
        try:
            future = asyncio.run_coroutine_threadsafe(before_start(container_id), loop)
            deadline = time.monotonic() + BEFORE_START_WAIT_S
            while True:
                try:
                    future.result(WAIT_SLICE_S)
                    return
                except FutureTimeout:
                    if not loop.is_running() or time.monotonic() > deadline:
                        future.cancel()
                        raise
        except Exception as exc:  # noqa: BLE001 - the container starts whatever happened to its record
            logger.warning("container {id}: starting without its launch record: {error!r}",
                           id=container_id[:12], error=exc)
    return hook


class DockerEngine:
    """`ContainerRuntime` for one Docker daemon; `threads` bounds the docker calls in flight."""

    def __init__(self, docker: DockerRuntime, threads: int) -> None:
        self.docker = docker
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="docker")
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return self.docker.address

    @property
    def busy_threads(self) -> int:
        """Docker calls still running in a thread (abandoned, not waited for, at exit)."""
        return self._busy

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._lock:
            self._busy += 1
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)  # counts the thread, not our (cancellable) await
        return await asyncio.wrap_future(future)

    def _done(self, future: Future[Any]) -> None:
        METRICS.docker_call_done(future)
        with self._lock:
            self._busy -= 1

    # -- the port
    async def ping(self) -> None:
        await self._run(self.docker.ping)

    async def host_id(self) -> str:
        """Where this agent's runs live (`DockerRuntime.host_identity`): a daemon, or a whole swarm."""
        return await self._run(self.docker.host_identity)

    async def daemon_facts(self) -> DaemonFacts:
        return await self._run(self.docker.daemon_facts)

    async def image_present(self, image: str) -> bool:
        return await self._run(self.docker.image_present, image)

    async def image_digest(self, image: str) -> str | None:
        return await self._run(self.docker.image_digest, image)

    async def pull(self, image: str, *, on_progress: Callable[[str], None] | None = None,
                   auth_config: dict[str, Any] | None = None, progress_interval: float = 5.0) -> str:
        return await self._run(self.docker.pull, image, on_progress=on_progress, auth_config=auth_config,
                               progress_interval=progress_interval)

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        return await self._run(self.docker.ensure_volume, name, labels)

    async def launch(self, spec: ContainerSpec, *, replace_exited: bool = False,
                     before_start: BeforeStart | None = None) -> LaunchResult:
        hook = None if before_start is None else _in_loop(before_start, asyncio.get_running_loop())
        return await self._run(self.docker.launch, spec, replace_exited=replace_exited, before_start=hook)

    async def find(self, labels: Labels, *, all: bool = True, inspect: bool = True) -> list[ContainerInfo]:
        return await self._run(self.docker.find, labels, all=all, inspect=inspect)

    async def count(self, labels: Labels) -> int:
        return await self._run(self.docker.count, labels)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        return await self._run(self.docker.inspect, container_id)

    async def logs_tail(self, container_id: str, lines: int = 50) -> str:
        return await self._run(self.docker.logs_tail, container_id, lines)

    async def stop(self, container_id: str, timeout: float) -> None:
        await self._run(self.docker.stop, container_id, timeout)

    async def remove(self, container_id: str, force: bool = False) -> None:
        await self._run(self.docker.remove, container_id, force=force)

    def events(self, labels: Labels, since: int | None = None) -> Stream:
        stream: Stream = self.docker.events(labels, since=since)
        return stream

    def follow_logs(self, container_id: str, since: float | None = None) -> Stream:
        stream: Stream = self.docker.follow_logs(container_id, since=since)
        return stream

    async def close(self) -> None:
        """Close the clients (in a thread: it may block), then the pool without waiting for stuck calls."""
        try:
            await self._run(self.docker.close)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
