"""`MAX_CONCURRENT_RUNS`: how many of this agent's flow containers may run at once.

The count comes from Docker (running containers labelled `io.local-agent.agent=<name>`), not from memory, so
it survives agent restarts and sees containers an earlier process started (peers point 12). Launches in
flight are not visible to Docker until their container starts, so each holds a reservation from before the
claim until its launch ends; on every path (launched, failed, denied, requeued) the reservation is released.
A run that finds no free slot is not claimed: it stays Scheduled for a later poll, or another agent.

Acquire and release share one lock, so a count taken while a launch is in flight includes that launch's
reservation (and possibly its container too: counting twice only makes the limit conservative).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from loguru import logger

T = TypeVar("T")


class Capacity:
    """Admission control for launches; `limit` 0 means unlimited (no Docker calls at all)."""

    def __init__(self, limit: int, count_running: Callable[[], Awaitable[int]]) -> None:
        self.limit = limit
        self._count_running = count_running
        self._reserved: set[str] = set()
        self._lock = asyncio.Lock()

    @property
    def unlimited(self) -> bool:
        return self.limit <= 0

    @property
    def reserved(self) -> int:
        return len(self._reserved)

    async def free_slots(self) -> int | None:
        """Slots free right now (None when unlimited): the poll loop spawns no more launches than this."""
        if self.unlimited:
            return None
        async with self._lock:
            return max(0, self.limit - await self._count_running() - len(self._reserved))

    async def admit(self, runs: Sequence[T]) -> list[T]:
        """The first runs that fit (runs are sorted by start time); the others stay Scheduled."""
        free = await self.free_slots()
        if free is None or free >= len(runs):
            return list(runs)
        logger.debug("at capacity ({limit} concurrent runs): leaving {n} run(s) Scheduled",
                     limit=self.limit, n=len(runs) - free)
        return list(runs[:free])

    async def acquire(self, run_id: str) -> bool:
        """Reserve a slot for `run_id` before claiming it; False when the agent is at its limit."""
        if self.unlimited:
            return True
        async with self._lock:
            running = await self._count_running()
            if running + len(self._reserved) >= self.limit:
                logger.debug("flow run {id} not claimed: {r} running + {f} launching >= limit {limit}",
                             id=run_id, r=running, f=len(self._reserved), limit=self.limit)
                return False
            self._reserved.add(run_id)
            return True

    async def release(self, run_id: str) -> None:
        """End the reservation: the container now counts itself (running), or there is none (failed)."""
        if self.unlimited:
            return
        async with self._lock:
            self._reserved.discard(run_id)
