"""`StopSignal`: the agent's one way to say "stop", and to wait for anything unless it is said first.

A first SIGTERM/SIGINT sets it: the poll loop, runs sleeping until their start time and held claims end,
while launches in flight finish. Every wait in the agent that must end on a stop goes through `sleep` or
`race` here, so none of them can outlive the signal by more than a scheduling step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """The stop signal fired while waiting."""


class StopSignal:
    """Set once; `sleep()` and `race()` end as soon as it is."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when still running afterwards, False once stopped."""
        if seconds > 0 and not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), seconds)
        return not self._event.is_set()

    async def race(self, work: Awaitable[T]) -> T:
        """`work`'s result, unless the signal fires first: then `work` is cancelled and `Stopped` raised."""
        if self._event.is_set():
            if asyncio.iscoroutine(work):
                work.close()
            raise Stopped
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise Stopped
        return task.result()
