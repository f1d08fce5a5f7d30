"""`Admission`: the one answer to "may I poll now?" and "may I claim this run now?".

Three things decide, and this object owns all of them so that no one else keeps a copy:
* the launch gate (`agent.launch.gate.LaunchGate`): a claim-ahead window and the launch slots;
* the concurrency limit (`agent.launch.capacity.Capacity`, `MAX_CONCURRENT_RUNS`, counted from the engine);
* whether the container engine is reachable (`EngineStatus`): nothing is claimed while it is away, and a
  run claimed just before it went away goes back to the queue, never Failed. Health only reports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

from loguru import logger

from agent.launch.capacity import Capacity
from agent.launch.gate import LaunchGate, Ticket
from agent.launch.plan import LABEL_AGENT
from agent.launch.prelaunch import DockerProbe
from agent.runtime.docker_types import DockerUnavailable
from agent.runtime.port import ContainerRuntime
from agent.runtime.status import EngineStatus
from agent.settings import Settings

T = TypeVar("T")


class Admission:
    """Launch slots, the concurrency limit and the engine's reachability: asked before polls and claims."""

    def __init__(self, settings: Settings, runtime: ContainerRuntime) -> None:
        self.runtime = runtime
        self.gate = LaunchGate(settings.max_concurrent_launches)
        self.capacity = Capacity(settings.max_concurrent_runs, self._count_running)
        self.probe = DockerProbe(runtime)
        self.engine = EngineStatus()
        self._agent_name = settings.name

    # ------------------------------------------------------------------ the engine
    def engine_down(self, exc: DockerUnavailable) -> None:
        """An engine call found the engine away (any caller): logged once per outage, claiming pauses."""
        if self.engine.went_down(exc):
            logger.error("{error}", error=exc)

    async def recheck_engine(self) -> None:
        """During an outage, before each poll: raises `DockerUnavailable` until the engine answers."""
        await self.runtime.ping()
        self.engine.came_back()
        logger.info("Docker daemon at {address} is reachable again", address=self.runtime.address)

    async def ping(self) -> None:
        """The engine answers (one real ping per second for everyone); raises `DockerUnavailable`."""
        await self.probe.ping()

    # ------------------------------------------------------------------ polling
    async def room_to_poll(self, timeout: float) -> None:
        """Wait (at most `timeout`) until a poll can bring new runs (see `LaunchGate.room_to_poll`)."""
        await self.gate.room_to_poll(timeout)

    def polled(self, *, fresh: bool) -> None:
        """The last poll brought runs this agent did not hold yet (or not): how soon to poll again."""
        self.gate.fresh_last_poll = fresh

    def hold_claims(self) -> bool:
        """Claims may wait: enough claimed runs are still queued for a launch slot."""
        return self.gate.hold_claims()

    @property
    def claim_room(self) -> asyncio.Event:
        """Set whenever a claimed run gets its launch slot (held claims may go out then)."""
        return self.gate.room

    async def admit(self, runs: Sequence[T]) -> list[T]:
        """The runs of one poll that fit under `MAX_CONCURRENT_RUNS`; the others stay Scheduled."""
        return await self.capacity.admit(runs)

    # ------------------------------------------------------------------ one run
    @asynccontextmanager
    async def ticket(self) -> AsyncIterator[Ticket]:
        """A place in the claim-ahead window, held until the run's launch is over."""
        async with self.gate.ticket() as ticket:
            yield ticket

    async def may_claim(self, run_id: str) -> bool:
        """The engine answers and a concurrency slot is reserved for `run_id` (release it with `release`)."""
        try:
            await self.probe.ping()
        except DockerUnavailable as exc:
            logger.warning("not claiming flow run {id}: {error}", id=run_id, error=exc)
            self.engine_down(exc)
            return False
        return await self.capacity.acquire(run_id)

    async def release(self, run_id: str) -> None:
        await self.capacity.release(run_id)

    async def _count_running(self) -> int:
        return await self.runtime.count({LABEL_AGENT: self._agent_name})
