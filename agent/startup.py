"""Start-up steps that do not depend on each other run side by side (launch -> first poll).

Only registration needs the tenant; the engine and the backend are independent, so their round trips
need not wait for each other. `alongside()` runs the engine check while the backend work proceeds, and a
failed check still wins: "Docker unreachable at start" exits with its own code (3).

`warm_docker()` goes further back: the CLI creates the Docker runtime before it imports the agent's modules
(~150 ms of CPU) and lets a daemon thread open the first Docker connection meanwhile (client, API version
negotiation, `/_ping`: ~15 ms of waiting on a socket). The agent's own check then finds the API version
known. Failures are ignored there: the agent's check reports them as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from agent.runtime.docker import DockerRuntime
    from agent.settings import Settings

T = TypeVar("T")
C = TypeVar("C")
CHECK_GRACE_S = 2.0


async def _cancel(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def alongside(check: Awaitable[C], work: Awaitable[T]) -> tuple[C, T]:
    """Both results once both are done; the first failure cancels the other and is raised (`check` first).

    Cancelling this coroutine (a stop signal during start-up) cancels both.
    """
    checking, working = asyncio.ensure_future(check), asyncio.ensure_future(work)
    try:
        await asyncio.wait({checking, working}, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await _cancel(checking, working)
        raise
    if checking.done() and checking.exception() is not None:
        await _cancel(working)
        checking.result()  # raises
    if working.done() and working.exception() is not None:
        # The check is an engine call in a thread: cancelling our await would leave the thread busy and the
        # process exiting as "stuck"; it answers quickly, so let it finish before reporting `work`'s error.
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(asyncio.shield(checking), CHECK_GRACE_S)
        working.result()  # raises
    try:
        return await checking, await working
    except asyncio.CancelledError:
        await _cancel(checking, working)
        raise


def warm_docker(settings: Settings) -> DockerRuntime:
    """The agent's Docker runtime, its first connection opened in a daemon thread (see module docstring)."""
    from agent.runtime.engines import open_runtime  # docker-py is already imported with the settings

    runtime = open_runtime(settings)

    def ping() -> None:
        with contextlib.suppress(Exception):
            runtime.ping()

    threading.Thread(target=ping, name="docker-warm-up", daemon=True).start()
    return runtime
