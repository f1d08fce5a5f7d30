"""`--show-flow-logs`: stream flow containers' output to the agent's stdout, each line prefixed with the run.

Prefect 1.x's `--show-flow-logs` (PR #1929) did this for local debugging; the backend still gets the flow's
own logs as usual. One daemon thread per container follows `docker logs -f`; lines are masked like the
agent's own log (a flow printing its environment must not leak the agent's token) and rate-limited per
container, so one chatty flow cannot drown the agent's log: dropped lines are counted and reported.

A container adopted after a restart is followed from the given `since` (the watcher's start), not from its
own start: the previous agent process already printed what came before.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from loguru import logger

from agent.ops.logs import SECRETS, Masker
from agent.runtime.docker_types import ContainerNotFound, DockerError, is_timeout
from agent.runtime.port import ContainerRuntime

RATE_LINES_PER_S = 200.0
BURST_LINES = 1000.0


class RateLimit:
    """A token bucket: `allow()` is False once the burst is spent faster than `rate` lines per second."""

    def __init__(self, rate: float = RATE_LINES_PER_S, burst: float = BURST_LINES) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, time.monotonic()
        self.dropped = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False


class FlowLogStreamer:
    """Follows the output of the containers it is given until they exit or `stop()` is called.

    Lines are masked with `secrets` and with the process's registry `agent.ops.logs.SECRETS` (which learns
    rotated registry passwords while the agent runs).
    """

    def __init__(self, runtime: ContainerRuntime, secrets: Sequence[str | None],
                 stream: TextIO | None = None) -> None:
        self.runtime = runtime
        self._mask = Masker(secrets)
        self._out = stream or sys.stdout
        self._lock = threading.Lock()
        self._streams: dict[str, Any] = {}
        self._stopped = threading.Event()

    def follow(self, container_id: str, prefix: str, since: float | None = None) -> None:
        """Print the container's output from `since` (Unix time; None: from its start) until it exits."""
        if self._stopped.is_set() or container_id in self._streams:
            return
        self._streams[container_id] = None
        threading.Thread(target=self._run, args=(container_id, prefix, since), daemon=True,
                         name=f"flow-logs-{container_id[:12]}").start()

    async def drained(self, container_id: str, timeout: float) -> bool:
        """Wait (at most `timeout` s) until the container's output is written out: an exited container's
        stream ends by itself, and removing the container first would cut its last lines."""
        deadline = time.monotonic() + timeout
        while container_id in self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return container_id not in self._streams

    def stop(self) -> None:
        self._stopped.set()
        for stream in list(self._streams.values()):
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # noqa: BLE001 - best effort: the thread is a daemon anyway
                    pass

    def _run(self, container_id: str, prefix: str, since: float | None) -> None:
        limit = RateLimit()
        try:
            while not self._stopped.is_set():
                try:
                    stream = self.runtime.follow_logs(container_id, since=since)
                except ContainerNotFound:
                    return
                except DockerError as exc:
                    logger.debug("flow logs of {id}: {error}", id=container_id[:12], error=exc)
                    self._stopped.wait(2.0)
                    continue
                self._streams[container_id] = stream
                if self._pump(stream, prefix, limit):
                    return  # the container exited: its stream ended
                since = time.time()  # idle past docker-py's read timeout: follow again from now
        finally:
            self._streams.pop(container_id, None)

    def _pump(self, stream: Any, prefix: str, limit: RateLimit) -> bool:
        """Write lines until the stream ends (True) or times out while idle (False)."""
        pending = b""
        try:
            for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(prefix, line, limit)
        except Exception as exc:  # noqa: BLE001 - a broken stream ends this follow, never the agent
            if is_timeout(exc) and not self._stopped.is_set():
                return False
        if pending:
            self._emit(prefix, pending, limit)
        return True

    def _emit(self, prefix: str, raw: bytes, limit: RateLimit) -> None:
        if not limit.allow():
            return
        text = raw.decode("utf-8", "replace").rstrip("\r")
        with self._lock:
            if limit.dropped:
                self._out.write(f"{prefix} | ... {limit.dropped} line(s) dropped (rate limit)\n")
                limit.dropped = 0
            self._out.write(SECRETS(self._mask(f"{prefix} | {text}")) + "\n")
            self._out.flush()
