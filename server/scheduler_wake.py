"""Waking this process's scheduler at once (a schedule was turned on), from any thread.

Apart from `server.scheduler` so that the resolvers that wake it do not import the scheduler, which itself
creates runs through the resolvers.
"""

from __future__ import annotations

import asyncio
import threading

_wakers: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
_lock = threading.Lock()


def register(instance_id: str, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    with _lock:
        _wakers[instance_id] = (loop, event)


def unregister(instance_id: str) -> None:
    with _lock:
        _wakers.pop(instance_id, None)


def wake(instance_id: str) -> None:
    """Set the scheduler's event of the process with this id; nothing happens if no scheduler runs there."""
    with _lock:
        waker = _wakers.get(instance_id)
    if waker is not None:
        loop, event = waker
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop closed meanwhile: the scheduler is gone
            pass
