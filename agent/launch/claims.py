"""Batched claims: how claims travel to the backend.

A burst of due runs used to cost one `set_flow_run_states` request per run. Against a backend that offers
the capability `"partial_states"` (our server's extension: `set_flow_run_states_input.partial`), every claim
that is due at the same moment goes out in ONE request, with a per-element outcome, so a run lost to another
agent costs nobody else their claim. Any other backend (Prefect Server or Cloud) sees exactly the requests
it saw before: one claim per request. When claims are held back, and when they may go, is the launch
gate's call (`agent.launch.gate`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from agent.api.cloud import ApiError, CloudClient, StateUpdateFailed
from agent.stop import StopSignal

CAPABILITY = "partial_states"
LINGER_S = 0.002  # collect the claims of runs that became due in the same instant
MAX_BATCH = 50


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
                 max_batch: int = MAX_BATCH, stop: StopSignal | None = None,
                 room: asyncio.Event | None = None) -> None:
        self.cloud, self.partial, self._hold, self.max_batch = cloud, partial, hold, max_batch
        self._stop = stop or StopSignal()
        self._room = room or asyncio.Event()  # the gate's: the backlog of claimed runs dropped
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
        waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait()),
                 asyncio.ensure_future(self._room.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
            self._room.clear()

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
