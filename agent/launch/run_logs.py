"""A small buffer for the run logs the agent writes ("Submitted for execution: Container ID ...", notices).

One `write_run_logs` request per launched run doubled the agent's API traffic in a burst. `write_run_logs`
takes a list, so entries are collected and sent together: at most every `interval` seconds, at once when
`max_entries` are waiting, and always on `close()` (a clean stop loses nothing). Each entry carries the time
it was written, so a late flush does not reorder a run's log. Errors that precede a Failed state do not
wait here: the pipeline flushes the buffer, then writes them directly, so the log explains the state. The
"Submitted for execution" line is flushed between the container's create and its start (`flush()` sends every
line waiting, so concurrent launches share requests); only informational lines (pulls, policy notices) can
be lost, and only to a SIGKILL.

A failed flush keeps its entries for the next one (transient API trouble), up to `max_kept`; beyond that the
oldest are dropped with a warning: they are informational, the container runs and reports on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from loguru import logger

from agent.api.cloud import ApiError, CloudClient, TransientApiError
from agent.api.models import iso_now

FLUSH_INTERVAL_S = 1.0
MAX_ENTRIES = 100
MAX_KEPT = 2_000


class RunLogBuffer:
    """`add()` never blocks or raises; `flush()` sends what is waiting; `close()` flushes and stops."""

    def __init__(self, cloud: CloudClient, *, interval: float = FLUSH_INTERVAL_S,
                 max_entries: int = MAX_ENTRIES, max_kept: int = MAX_KEPT) -> None:
        self.cloud, self.interval, self.max_entries, self.max_kept = cloud, interval, max_entries, max_kept
        self._entries: list[dict[str, Any]] = []
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def add(self, flow_run_id: str, name: str, message: str, level: str = "INFO") -> None:
        entry = {"flow_run_id": flow_run_id, "name": name, "message": message, "level": level,
                 "timestamp": iso_now()}
        self._entries.append(entry)
        if self._closed:
            return  # close() is flushing; the entry goes with it or the next explicit flush
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="run-logs")
        if len(self._entries) >= self.max_entries:
            self._full.set()

    async def flush(self) -> bool:
        """Send everything waiting in one request per `max_entries`; False when the API refused it."""
        async with self._lock:
            while self._entries:
                batch = self._entries[:self.max_entries]
                try:
                    await self.cloud.write_run_logs(batch)
                except TransientApiError as exc:
                    return self._keep(exc)
                except ApiError as exc:  # one line the API refuses for good (a run since deleted) must not
                    if not await self._one_by_one(batch):  # hold back every other run's record
                        return self._keep(exc)
                    continue  # the batch is gone from the front: sent or dropped line by line
                del self._entries[:len(batch)]
        return True

    async def _one_by_one(self, batch: list[dict[str, Any]]) -> bool:
        """Each line of a refused batch (the front of the buffer) alone, dropping those refused for good;
        False when the API went away meanwhile (what was handled is removed, the rest waits)."""
        for entry in batch:
            try:
                await self.cloud.write_run_logs([entry])
            except TransientApiError:
                return False
            except ApiError as exc:
                logger.warning("flow run {id}: run log line dropped, the API refuses it: {error}",
                               id=entry["flow_run_id"], error=exc)
            self._entries.pop(0)  # this entry: the buffer only grows at its end
        return True

    def _keep(self, exc: ApiError) -> bool:
        self._trim()
        logger.warning("{n} run log line(s) not written yet: {error}", n=len(self._entries), error=exc)
        return False

    async def close(self) -> None:
        """Flush what is waiting (a clean stop loses nothing the API accepts) and stop the flusher."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def _trim(self) -> None:
        extra = len(self._entries) - self.max_kept
        if extra > 0:
            del self._entries[:extra]
            logger.warning("dropped {n} run log line(s): the API has refused them for too long", n=extra)

    async def _run(self) -> None:
        while self._entries:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.interval)
            self._full.clear()
            await asyncio.shield(self.flush())  # close() must not abort a request the API may have taken
