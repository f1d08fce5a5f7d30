"""The launch gate: how many runs are claimed ahead of the engine, and when a poll is worth it.

Launches are bounded (`max_concurrent_launches`, L); runs are claimed into a window of at most 2·L
claimed-or-launching runs, so a claimed run never waits long for the engine and an agent never hoards a
queue that other agents could serve. While at least L/2 claimed runs are still waiting for a launch slot,
new claims are held back and coalesced (they would only wait too); below that they go out together, while
the ones still waiting keep the launch slots busy during the claim's round trip. A single run due on a
quiet queue is claimed at once.

The gate also tells the poll loop when polling is pointless: the queue answers oldest runs first, so while
this agent still holds L due runs it has not claimed, a poll would mostly return those same runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class LaunchGate:
    """Claim-ahead window (2·L), launch slots (L), and the counters the poll loop and claims look at."""

    def __init__(self, launches: int, ahead: int | None = None) -> None:
        self.launches = launches
        self._launch = asyncio.Semaphore(launches)
        self._ahead = asyncio.Semaphore(ahead or 2 * launches)
        self.low_water = max(1, launches // 2)
        self.unclaimed = 0  # due runs in this process, not claimed yet (waiting for the window or the claim)
        self.ready = 0  # claimed runs waiting for a launch slot
        self.fresh_last_poll = True  # set by the poll loop
        self._changed = asyncio.Event()
        self.room = asyncio.Event()  # set when a claimed run got its launch slot: held claims may go now

    def hold_claims(self) -> bool:
        """Claims may wait: enough claimed runs are still queued for a launch slot."""
        return self.ready >= self.low_water

    @contextlib.asynccontextmanager
    async def ticket(self) -> AsyncIterator[Ticket]:
        """A place in the claim-ahead window, held until the run's launch is over (or it is given up)."""
        ticket = Ticket(self)
        self.unclaimed += 1
        try:
            async with self._ahead:
                yield ticket
        finally:
            if not ticket.claimed:
                self._claim_settled()

    def _claim_settled(self) -> None:
        self.unclaimed -= 1
        self._changed.set()

    async def room_to_poll(self, timeout: float) -> None:
        """Wait (at most `timeout`) until a poll can bring new runs: the due runs we hold run low.

        After a poll that brought nothing new (`fresh_last_poll`), wait until every due run held is claimed.
        """
        limit = self.launches if self.fresh_last_poll else 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.unclaimed >= limit:
                    self._changed.clear()
                    await self._changed.wait()


class Ticket:
    """One run's place in the gate; `launching()` turns it into a launch slot once the run is claimed."""

    def __init__(self, gate: LaunchGate) -> None:
        self.gate = gate
        self.claimed = False

    @contextlib.asynccontextmanager
    async def launching(self) -> AsyncIterator[None]:
        gate = self.gate
        self.claimed = True
        gate._claim_settled()
        gate.ready += 1
        try:
            await gate._launch.acquire()
        finally:
            gate.ready -= 1
            gate.room.set()
        try:
            yield
        finally:
            gate._launch.release()
