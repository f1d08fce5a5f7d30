"""Batched claims and the launch gate: how many runs are claimed ahead of Docker, and how claims travel.

A burst of due runs used to cost one `set_flow_run_states` request per run. Against a backend that offers
the capability `"partial_states"` (our server's extension: `set_flow_run_states_input.partial`), every claim
that is due at the same moment goes out in ONE request, with a per-element outcome, so a run lost to another
agent costs nobody else their claim. Any other backend (Prefect Server or Cloud) sees exactly the requests
it saw before: one claim per request.

How far ahead to claim is the `LaunchGate`'s job. Launches are bounded (`max_concurrent_launches`, L); runs
are claimed into a window of at most 2·L claimed-or-launching runs, so a claimed run never waits long for
Docker and an agent never hoards a queue that other agents could serve. While at least L/2 claimed runs are
still waiting for a launch slot, new claims are held back and coalesced (they would only wait too); below
that they go out together, while the ones still waiting keep the launch slots busy during the claim's round
trip. A single run due on a quiet queue is claimed at once.

The gate also tells the poll loop when polling is pointless: the queue answers oldest runs first, so while
this agent still holds L due runs it has not claimed, a poll would mostly return those same runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from agent.api.cloud import ApiError, CloudClient, StateUpdateFailed
from agent.stop import StopSignal

CAPABILITY = "partial_states"
LINGER_S = 0.002  # collect the claims of runs that became due in the same instant
MAX_BATCH = 50


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
        self.on_ready_drop: Callable[[], None] = lambda: None

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
            gate.on_ready_drop()
        try:
            yield
        finally:
            gate._launch.release()


class ClaimWithdrawn(ApiError):
    """The agent began to stop before this claim was sent: it is not sent (nothing new after a signal)."""


@dataclass
class _Pending:
    entry: dict[str, Any]
    future: asyncio.Future[None]


def outcome_error(status: str | None, message: str | None) -> ApiError | None:
    """None for SUCCESS; a lost race (`VERSION_LOCKING_ERROR`, "State update failed") is StateUpdateFailed."""
    if status == "SUCCESS":
        return None
    text = message or status or "no outcome reported"
    if status == "VERSION_LOCKING_ERROR" or text.startswith("State update failed"):
        return StateUpdateFailed(text)
    return ApiError(f"{status}: {text}")


class ClaimBatcher:
    """`set_state()` behaves like `CloudClient.set_flow_run_state` (same errors); batched when `partial`."""

    def __init__(self, cloud: CloudClient, *, partial: bool, hold: Callable[[], bool] = lambda: False,
                 max_batch: int = MAX_BATCH, stop: StopSignal | None = None) -> None:
        self.cloud, self.partial, self._hold, self.max_batch = cloud, partial, hold, max_batch
        self._stop = stop or StopSignal()
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def set_state(self, flow_run_id: str, state: dict[str, Any], version: int | None) -> None:
        if not self.partial:
            await self.cloud.set_flow_run_state(flow_run_id, state, version)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = {"flow_run_id": flow_run_id, "version": version, "state": state}
        self._pending.append(_Pending(entry, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="claims")
        self._wake.set()
        await future

    def poke(self) -> None:
        """The backlog changed: held claims may be due now."""
        if self._pending:
            self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pending in self._pending:
            pending.future.cancel()
        self._pending = []

    async def _run(self) -> None:
        while True:
            await self._woken()
            self._wake.clear()
            await asyncio.sleep(LINGER_S)
            self._pending = [p for p in self._pending if not p.future.done()]  # cancelled waiters: not sent
            if self._stop.is_set():
                self._withdraw()
                continue
            if not self._pending or (self._hold() and len(self._pending) < self.max_batch):
                continue
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            await self._send(batch)
            if self._pending:
                self._wake.set()

    async def _woken(self) -> None:
        """A claim arrived or the backlog changed; or the agent began to stop (then only new claims wake)."""
        if self._stop.is_set():
            await self._wake.wait()
            return
        waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def _withdraw(self) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
            item.future.set_exception(ClaimWithdrawn("not claimed: the agent is stopping"))
        if pending:
            logger.debug("{n} claim(s) not sent: the agent is stopping", n=len(pending))

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            outcomes = await self.cloud.set_flow_run_states_partial([p.entry for p in batch])
        except Exception as exc:  # noqa: BLE001 - any failure fails these claims, never the batcher itself
            if not isinstance(exc, ApiError):
                logger.opt(exception=exc).error("batched claim failed: {error!r}", error=exc)
            failure = exc if isinstance(exc, ApiError) else ApiError(f"claim failed: {exc!r}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(type(failure)(str(failure)))
            return
        by_id = {str(o.get("id")): o for o in outcomes}
        for pending in batch:
            outcome = by_id.get(str(pending.entry["flow_run_id"])) or {}
            error = outcome_error(outcome.get("status"), outcome.get("message"))
            if pending.future.done():
                continue
            if error is None:
                pending.future.set_result(None)
            else:
                pending.future.set_exception(error)
        logger.debug("claimed {n} run(s) in one request", n=len(batch))
