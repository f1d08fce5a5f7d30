"""The Swarm runtime's two blocking streams: task transitions as `start`/`die` events, and a service's output.

Docker's event stream says nothing about job tasks ending (and a service's task containers may live on other
nodes), so events are polled: every second the labelled services and their tasks are read and each change
of phase becomes the event the watcher already understands (`{"Action": "start"|"die", "id": service id}`).
A service's log stream does not end when its task does (it waits for the next task), so a watchdog closes it
once the service has finished, as `docker logs --follow` ends with its container.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from docker.types.daemon import CancellableStream

from agent.runtime.docker_types import ContainerInfo, DockerError, docker_time

View = tuple[ContainerInfo, str | None]  # a service as the port sees it, and its task's Swarm state
POLL_S = 1.0
LOG_DRAIN_S = 1.0  # output still in flight when the task ended


def _phase(info: ContainerInfo, state: str | None) -> str:
    if info.exited:
        return "die"
    return "start" if state == "running" else "pending"


class TaskEvents:
    """A polling stream of `start`/`die` events of labelled services; `close()` ends it within a poll."""

    def __init__(self, poll: Callable[[], list[View]], since: int | None, interval: float = POLL_S) -> None:
        self._poll, self._since, self._interval = poll, since, interval
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        seen: dict[str, str] = {}
        first = True
        while not self._closed.is_set():
            views = self._poll()
            events = self._changes(seen, views, first)
            first = False
            yield from events
            if self._closed.wait(self._interval):
                return

    def _changes(self, seen: dict[str, str], views: list[View], first: bool) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        now = int(time.time())
        current = {info.id for info, _ in views}
        for info, state in views:
            phase, before = _phase(info, state), seen.get(info.id)
            seen[info.id] = phase
            if phase == before or phase == "pending":
                continue
            if first and before is None and not self._recent(info):
                continue  # what happened before the stream was asked for is not news
            if phase == "die" and before != "start" and info.exit_code is not None:
                events.append(_event("start", info.id, now))  # started and ended between two polls
            events.append(_event(phase, info.id, now))
        for service_id in [s for s in seen if s not in current]:
            if seen.pop(service_id) != "die":
                events.append(_event("die", service_id, now))  # removed under us: the watcher inspects it
        return events

    def _recent(self, info: ContainerInfo) -> bool:
        if self._since is None:
            return False
        moment = docker_time(info.finished_at if info.exited else info.started_at)
        return moment is None or moment.timestamp() >= self._since


def _event(action: str, service_id: str, now: int) -> dict[str, Any]:
    return {"Type": "service", "Action": action, "id": service_id, "time": now}


def open_service_logs(api: Any, service: str, since: float | None) -> tuple[Any, Iterator[bytes]]:
    """The followed log response of `service` and its demultiplexed chunks (docker-py's `service_logs`
    hides the response, and only the response can be closed from another thread)."""
    params = {"follow": True, "stdout": True, "stderr": True, "since": f"{since or 0:.6f}", "tail": "all",
              "details": False, "timestamps": False}
    response = api._get(api._url("/services/{0}/logs", service), params=params, stream=True)
    try:
        api._raise_for_status(response)
    except Exception:
        response.close()
        raise
    return response, api._multiplexed_response_stream_helper(response)


class ServiceLogs:
    """A service's followed output (bytes chunks), ended by `close()` or once `finished()` says so."""

    def __init__(self, response: Any, chunks: Iterator[bytes], finished: Callable[[], bool],
                 interval: float = POLL_S, on_exit: Callable[[], None] = lambda: None) -> None:
        self._stream = CancellableStream(chunks, response)
        self._finished, self._interval, self._on_exit = finished, interval, on_exit
        self._closed = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="swarm-logs-watch").start()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            yield bytes(chunk)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):  # already closed, or the daemon went away
            self._stream.close()

    def _watch(self) -> None:
        try:
            while not self._closed.wait(self._interval):
                try:
                    done = self._finished()
                except DockerError:
                    continue  # the daemon is away; the reader's own timeout covers a dead connection
                if done:
                    self._closed.wait(LOG_DRAIN_S)
                    self.close()
                    return
        finally:
            self._on_exit()  # the watch thread's own Docker client goes with it
