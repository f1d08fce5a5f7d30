"""The scheduler: flows with an active schedule get their next runs created ahead, like Prefect Server 1.x.

Each round, for every published, unarchived flow whose flow group's schedule is active and that has a
schedule (`flow.schedule`, a copy of the serialized flow's, so a round never loads whole flows), the next
runs are created: at most `scheduler_max_runs` runs of the flow group ahead of now and none more than
`scheduler_max_days` ahead, continuing from the latest one already created. The runs ahead and the runs
left half-made are read for all flows at once, one query each per round. Each
run is made by `create_flow_run` itself (parameters, labels, task runs, the Scheduled state) with
`auto_scheduled = true` and an idempotency key per start time, so two schedulers at once (a lease taken over
mid-round, clocks far apart) or a restart mid-round find the run instead of creating it again: the unique
index on (flow_id, idempotency_key) decides. Of several replicas only the one holding the `scheduler` lease
runs the rounds, renewing it during a long round and stopping once it is lost. `set_schedule_active` wakes
this process's scheduler at once (`server.scheduler_wake`). One flow's failure (a refused schedule, an
overflow computing its events) is logged once and skips that flow only; a lost database ends the round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from loguru import logger
from sqlalchemy import Connection, select

from server import auto_runs, db, scheduler_wake
from server.context import RequestContext, Services
from server.errors import ApiError, database_unavailable, first_line
from server.lease import Lease
from server.resolvers.runs import FlowArchived, ScheduleStopped, create_flow_run
from server.schedules import ScheduledEvent, next_events, parse_schedule

LEASE_NAME = "scheduler"
_REPORTED_MAX = 10_000
_JUST_BEFORE = timedelta(microseconds=1)  # event times are whole microseconds

_reported: dict[str, str] = {}  # flow id -> the last problem logged for it, so each is logged once


def schedule_round(services: Services, stopping: Callable[[], bool] = lambda: False) -> int:
    """One round over every scheduled flow; returns how many runs it created (or found made already).
    `stopping` is asked between runs, so a server stopping (or a lease lost) mid-round ends the round."""
    settings = services.settings
    auto_runs.remove_stray(services.engine, settings.write_batch_rows, settings.stale_registration_s)
    with db.read_tx(services.engine) as conn:
        unfinished = auto_runs.half_made(conn, db.utcnow())
    for run in unfinished:  # create_flow_run finds each by its key and finishes it
        if stopping():
            return 0
        _finish(services, run)
    with db.read_tx(services.engine) as conn:
        now = db.utcnow()
        flows = _scheduled_flows(conn)
        ahead = auto_runs.runs_ahead(conn, now)
    created = 0
    for flow_id, group_id, serialized in flows:
        if stopping():
            break
        try:
            created += schedule_flow(services, flow_id, serialized, ahead.get(group_id, auto_runs.Ahead()),
                                     stopping)
        except Exception as exc:  # this flow's schedule or parameters cannot be run: the others go on
            if database_unavailable(exc) is not None:
                raise
            _report_flow(flow_id, exc.message if isinstance(exc, ApiError) else
                         f"{type(exc).__name__}: {first_line(exc)}")
    return created


def _scheduled_flows(conn: Connection) -> list[tuple[str, str, Any]]:
    """The flows to schedule, with their schedule column (never the whole serialized flow)."""
    flow, group = db.flow, db.flow_group
    stmt = (select(flow.c.id, flow.c.flow_group_id, flow.c.schedule)
            .join(group, group.c.id == flow.c.flow_group_id)
            .where(flow.c.archived.is_(False), flow.c.ready.is_(True), group.c.schedule_active.is_(True),
                   flow.c.schedule.is_not(None))
            .order_by(flow.c.id))
    return [(row[0], row[1], row[2]) for row in conn.execute(stmt) if row[2]]


def _finish(services: Services, run: Any) -> None:
    try:
        _create_run(services, {"flow_id": run.flow_id, "idempotency_key": run.idempotency_key,
                               "scheduled_start_time": run.scheduled_start_time})
    except (FlowArchived, ScheduleStopped) as exc:
        logger.debug("scheduler: run {} of flow {} not finished: {}", run.idempotency_key, run.flow_id,
                     exc.message)


def schedule_flow(services: Services, flow_id: str, serialized: Any, ahead: auto_runs.Ahead,
                  stopping: Callable[[], bool] = lambda: False) -> int:
    """Create the flow's missing runs ahead; returns how many new events it created runs for.

    Events continue from the latest run ahead, that time included: several clocks (or a run limit) may
    leave some of that time's events still to make; those made already are skipped by their keys."""
    schedule = parse_schedule(serialized)
    if schedule is None:
        return 0
    settings = services.settings
    wanted = settings.scheduler_max_runs - ahead.count
    if wanted <= 0:
        return 0
    now = db.utcnow()
    until = now + timedelta(days=settings.scheduler_max_days)
    if ahead.latest is None or ahead.latest <= now:
        events = next_events(schedule, now, wanted, until)
    else:
        tied = len(ahead.keys_at_latest)
        events = next_events(schedule, ahead.latest - _JUST_BEFORE, wanted + tied, until)
    made = 0
    for event in events:
        if stopping():
            break
        key = auto_runs.idempotency_key(event.start_time, event.parameter_defaults, event.labels)
        if key in ahead.keys_at_latest:
            continue
        try:
            _create(services, flow_id, event, key)
        except (FlowArchived, ScheduleStopped) as exc:  # turned off or replaced since the round began
            logger.debug("scheduler: flow {} stopped: {}", flow_id, exc.message)
            break
        made += 1
    if made:
        logger.info("scheduler: flow {} has runs up to {}", flow_id, events[-1].start_time.isoformat())
    _reported.pop(flow_id, None)
    return made


def _create(services: Services, flow_id: str, event: ScheduledEvent, key: str) -> str:
    return _create_run(services, {
        "flow_id": flow_id, "scheduled_start_time": event.start_time, "labels": event.labels,
        "parameters": dict(event.parameter_defaults) or None, "idempotency_key": key,
    })
def _create_run(services: Services, args: dict[str, Any]) -> str:
    ctx = RequestContext(services)
    try:
        return create_flow_run(ctx, args, auto_scheduled=True)
    finally:
        ctx.close()


def _report_flow(flow_id: str, message: str) -> None:
    if _reported.get(flow_id) == message:
        return
    if len(_reported) >= _REPORTED_MAX:
        _reported.clear()
    _reported[flow_id] = message
    logger.warning("scheduler: no runs created for flow {}: {}", flow_id, message)


async def run(services: Services, stop: asyncio.Event) -> None:
    """Every `scheduler_interval_s` (or at once when woken) until `stop` is set: renew the scheduler's lease,
    and run a round when this replica holds it. The lease is released on the way out, so another replica
    takes over at its next round instead of after the lease's ttl."""
    settings = services.settings
    lease = Lease(services.engine, LEASE_NAME, settings.scheduler_lease_ttl_s, services.instance_id)
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    scheduler_wake.register(services.instance_id, loop, woken)
    failing = False
    try:
        while not stop.is_set():
            woken.clear()
            try:
                if await loop.run_in_executor(None, lease.renew):
                    stopping = lease_keeper(lease, stop.is_set)
                    await loop.run_in_executor(None, schedule_round, services, stopping)
                if failing:
                    logger.info("scheduler: database available again")
                failing = False
            except Exception as exc:  # a transient database error must not end the service
                failing = _report(exc, failing)
            await _pause(stop, woken, settings.scheduler_interval_s)
    finally:
        scheduler_wake.unregister(services.instance_id)
        await loop.run_in_executor(None, lease.release)


def lease_keeper(lease: Lease, stop_is_set: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic) -> Callable[[], bool]:
    """`stopping` for a round: True once the server stops or the lease is lost; renews the lease every third
    of its ttl, so a long round keeps it and a replica that lost it (a stall, its clock) stops mid-round."""
    due = clock() + lease.ttl_s / 3

    def stopping() -> bool:
        nonlocal due
        if stop_is_set():
            return True
        if clock() >= due:
            if not lease.renew():
                logger.info("scheduler: lease lost mid-round; this replica stops scheduling")
                return True
            due = clock() + lease.ttl_s / 3
        return False

    return stopping


async def _pause(stop: asyncio.Event, woken: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(woken.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


def _report(exc: Exception, failing: bool) -> bool:
    """A lost database is logged once per outage; anything else with its traceback every time."""
    if database_unavailable(exc) is None:
        logger.exception("scheduler round failed")
        return failing
    if not failing:
        logger.warning("scheduler: database unavailable, scheduling again when it is back: {}",
                       first_line(exc))
    return True
