"""Zombie runs ("Lazarus", contract §4.11): flow runs stuck in Submitted/Running without a heartbeat.

Submitted and Running states, and `update_flow_run_heartbeat`, set `flow_run.heartbeat`. A run whose heartbeat
is older than `zombie_timeout_s` (its container died, the host rebooted, the agent crashed after claiming)
goes back to Scheduled with start_time now, at most `zombie_max_reschedules` times; after that it is marked
Failed. Each step writes a run log line. Of several server replicas on one database only the one holding
the `lazarus` lease (`server.lease`) sweeps; even without it the state write is the usual compare-and-set,
so two sweeps at once (clocks far apart, a lease taken over mid-sweep) never double-reschedule a run.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from loguru import logger
from sqlalchemy import Connection, or_, select

from server import db, retention
from server.abandoned import discard_stale_registrations
from server.context import Services
from server.errors import ApiError, database_unavailable, first_line
from server.lease import Lease
from server.states import Change, scheduled_state, write_state

BATCH = 200
LEASE_NAME = "lazarus"


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
    # Locked until commit (PostgreSQL), so a Running state or heartbeat arriving meanwhile waits, and the
    # run is judged on what is written, not on what was read before.
    row = conn.execute(select(fr).where(fr.c.id == run_id, _stale(cutoff)).with_for_update()).first()
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
    """Every `zombie_check_interval_s` until `stop` is set: renew the sweep's lease, and in the rounds this
    replica holds it sweep zombies and abandoned registrations (unless switched off) and expired runs
    (`server.retention`). The lease is released on the way out, so another replica takes over at its next
    round instead of after the lease's ttl."""
    settings = services.settings
    lease = Lease(services.engine, LEASE_NAME, settings.lease_ttl_s, services.instance_id)
    loop = asyncio.get_running_loop()
    failing = False
    try:
        while not stop.is_set():
            try:
                if await loop.run_in_executor(None, lease.renew):
                    if settings.zombies_enabled:
                        await loop.run_in_executor(None, sweep, services)
                        await loop.run_in_executor(None, discard_stale_registrations, services)
                    await loop.run_in_executor(None, retention.sweep_if_due, services, stop.is_set)
                if failing:
                    logger.info("lazarus: database available again")
                failing = False
            except Exception as exc:  # a transient database error must not end the service
                failing = _report(exc, failing)
            try:
                await asyncio.wait_for(stop.wait(), timeout=settings.zombie_check_interval_s)
            except TimeoutError:
                pass
    finally:
        await loop.run_in_executor(None, lease.release)


def _report(exc: Exception, failing: bool) -> bool:
    """A lost database is logged once per outage; anything else with its traceback every time."""
    if database_unavailable(exc) is None:
        logger.exception("lazarus sweep failed")
        return failing
    if not failing:
        logger.warning("lazarus: database unavailable, sweeping again when it is back: {}", first_line(exc))
    return True
