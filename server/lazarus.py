"""Zombie runs ("Lazarus", contract §4.11): flow runs stuck in Submitted/Running without a heartbeat.

Submitted and Running states, and `update_flow_run_heartbeat`, set `flow_run.heartbeat`. A run whose heartbeat
is older than `zombie_timeout_s` (its container died, the host rebooted, the agent crashed after claiming)
goes back to Scheduled with start_time now, at most `zombie_max_reschedules` times; after that it is marked
Failed. Each step writes a run log line. The state write is the usual compare-and-set, so several server
processes sweeping the same database never double-reschedule a run.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from loguru import logger
from sqlalchemy import Connection, or_, select

from server import db
from server.abandoned import discard_stale_registrations
from server.context import Services
from server.errors import ApiError
from server.states import Change, scheduled_state, write_state

BATCH = 200


def _stale(cutoff: Any) -> Any:
    fr = db.flow_run
    return fr.c.state.in_(("Submitted", "Running")) & or_(
        fr.c.heartbeat < cutoff, fr.c.heartbeat.is_(None) & (fr.c.state_timestamp < cutoff))


def sweep(services: Services) -> int:
    """One pass; returns how many runs were rescheduled or failed."""
    settings = services.settings
    cutoff = db.utcnow() - timedelta(seconds=settings.zombie_timeout_s)
    with db.read_tx(services.engine) as conn:
        ids = conn.execute(select(db.flow_run.c.id).where(_stale(cutoff)).limit(BATCH)).scalars().all()
    handled = 0
    for run_id in ids:
        try:
            with db.write_tx(services.engine) as conn:
                handled += _revive(conn, run_id, cutoff, settings.zombie_max_reschedules)
        except ApiError as exc:  # lost a race with a live update: the run is not a zombie any more
            logger.debug("lazarus skipped {}: {}", run_id, exc)
    if handled:
        services.events.notify()
    return handled


def _revive(conn: Connection, run_id: str, cutoff: Any, limit: int) -> int:
    fr = db.flow_run
    row = conn.execute(select(fr).where(fr.c.id == run_id, _stale(cutoff))).first()
    if row is None:
        return 0
    attempt = row.times_resurrected + 1
    if row.times_resurrected >= limit:
        message = (f"A Lazarus process attempted to reschedule this run {row.times_resurrected} times "
                   "without success. Marking as failed.")
        state: dict[str, Any] = {"type": "Failed", "message": message}
        level = "ERROR"
    else:
        message = f"Rescheduled by a Lazarus process. This is attempt {attempt}."
        state, level = scheduled_state(db.utcnow(), message), "INFO"
        conn.execute(fr.update().where(fr.c.id == run_id).values(times_resurrected=attempt))
    write_state(conn, fr, "flow", run_id, Change(state), fr.c.id.is_not(None))
    conn.execute(db.log.insert().values(
        id=db.new_id(), tenant_id=row.tenant_id, flow_run_id=run_id, timestamp=db.utcnow(), name="lazarus",
        level=level, message=message, created=db.utcnow()))
    logger.info("lazarus: flow run {} ({}) -> {}", run_id, row.state, state["type"])
    return 1


async def run(services: Services, stop: asyncio.Event) -> None:
    """Sweep zombies and abandoned registrations every `zombie_check_interval_s` until `stop` is set."""
    interval = services.settings.zombie_check_interval_s
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            await loop.run_in_executor(None, sweep, services)
            await loop.run_in_executor(None, discard_stale_registrations, services)
        except Exception:  # a transient database error must not end the service
            logger.exception("lazarus sweep failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
