"""The scheduler's runs: which are already ahead, and removing those no agent claimed.

Every run the scheduler creates has `auto_scheduled = true` and the idempotency key
`auto-scheduled:<ISO start time in UTC>` (plus a hash of the event's parameters and labels when it has any,
as Prefect Server does). The ISO form sorts in time order, so "the flow's runs from now on" is a range scan
of the unique index on (flow_id, idempotency_key), however many past runs the flow has.

Removal (schedule turned off, flow version archived) is like Prefect Server's: future auto-scheduled runs
still in the `Scheduled` state they were created with (version 1: never claimed, never run) are deleted,
with their task runs, states and logs. A run may have thousands of task runs,
so removal goes in two steps, each bounded: one short transaction turns the runs into tombstones (no state,
so invisible and never queued; no idempotency key, so the scheduler may create its time again; version
bumped, so a claim that read the run before loses), then their rows go in batches of `write_batch_rows`.
A crash in between leaves tombstones, which the next scheduler round removes, as it removes runs whose
creation was cut short (no state) longer than `stale_registration_s` ago.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger
from sqlalchemy import ColumnElement, Connection, Engine, Select, delete, or_, select, update

from server import db

KEY_PREFIX = "auto-scheduled:"
_KEY_END = "auto-scheduled;"  # ';' follows ':': every key of the prefix sorts below it


def idempotency_key(start_time: datetime, parameters: dict[str, Any] | None, labels: list[str] | None) -> str:
    """`auto-scheduled:<ISO UTC>`; events with parameters or labels get a hash too, so two clocks firing at
    the same time with different parameters each get their run (as in Prefect Server)."""
    key = KEY_PREFIX + start_time.astimezone(UTC).isoformat()
    if parameters or labels is not None:
        extra = json.dumps([parameters or {}, labels], sort_keys=True, default=str)
        key += ":" + hashlib.sha256(extra.encode()).hexdigest()[:16]
    return key


def _from(moment: datetime) -> ColumnElement[bool]:
    """Runs the scheduler created for `moment` or later (on the unique index's key range)."""
    fr = db.flow_run
    return (fr.c.idempotency_key > KEY_PREFIX + moment.astimezone(UTC).isoformat()) & (
        fr.c.idempotency_key < _KEY_END) & fr.c.auto_scheduled.is_(True)


def _group_flows(group_id: str, archived_only: bool = False) -> Select[Any]:
    stmt = select(db.flow.c.id).where(db.flow.c.flow_group_id == group_id)
    return stmt.where(db.flow.c.archived.is_(True)) if archived_only else stmt


@dataclass
class Ahead:
    """A flow group's runs ahead: how many, the latest start time, and the keys of the runs at that time."""

    count: int = 0
    latest: datetime | None = None
    keys_at_latest: set[str] = field(default_factory=set)


def _scheduled_groups() -> Select[Any]:
    """The flows of groups whose schedule is on (archived versions too: their claimed runs count)."""
    flow, group = db.flow, db.flow_group
    return (select(flow.c.id).join(group, group.c.id == flow.c.flow_group_id)
            .where(group.c.schedule_active.is_(True)))


def runs_ahead(conn: Connection, now: datetime) -> dict[str, Ahead]:
    """Per flow group with an active schedule: the runs the scheduler created after `now` (whatever their
    state: a claimed run is a run), in one query per round. At most `scheduler_max_runs` (and the ties of
    the last time) per group, so the rows stay few."""
    fr, flow = db.flow_run, db.flow
    stmt = (select(flow.c.flow_group_id, fr.c.scheduled_start_time, fr.c.idempotency_key)
            .join(flow, flow.c.id == fr.c.flow_id)
            .where(fr.c.flow_id.in_(_scheduled_groups()), _from(now), fr.c.scheduled_start_time > now,
                   fr.c.state.is_not(None)))
    ahead: dict[str, Ahead] = {}
    for group_id, start, key in conn.execute(stmt):
        entry = ahead.setdefault(group_id, Ahead())
        entry.count += 1
        if entry.latest is None or start > entry.latest:
            entry.latest, entry.keys_at_latest = start, {key}
        elif start == entry.latest:
            entry.keys_at_latest.add(key)
    return ahead


def half_made(conn: Connection, now: datetime) -> list[Any]:
    """Future runs of current versions with an active schedule whose creation was cut short (a crash between
    the insert and the first state): later rounds continue after later runs, so these are finished
    explicitly."""
    fr, flow = db.flow_run, db.flow
    current = _scheduled_groups().where(flow.c.archived.is_(False))
    stmt = select(fr.c.flow_id, fr.c.idempotency_key, fr.c.scheduled_start_time).where(
        fr.c.flow_id.in_(current), _from(now), fr.c.scheduled_start_time > now, fr.c.state.is_(None))
    return list(conn.execute(stmt))


def remove_unclaimed(engine: Engine, batch: int, group_id: str, archived_only: bool = False) -> int:
    """Delete the group's (or its archived versions') future auto-scheduled runs still Scheduled."""
    fr = db.flow_run
    now = db.utcnow()
    doomed = (select(fr.c.id).where(fr.c.flow_id.in_(_group_flows(group_id, archived_only)), _from(now),
                                    fr.c.scheduled_start_time > now, _untouched()))
    return _remove(engine, batch, doomed)


def remove_stray(engine: Engine, batch: int, stale_s: float) -> int:
    """Future unclaimed auto-scheduled runs of archived flows or inactive schedules, then any tombstones.

    They exist when a scheduler round created a run while the schedule was being turned off or the flow
    archived (it read the flow just before; `create_flow_run` now refuses most of those); this round-by-round
    sweep removes them. It reads Scheduled runs only (the state prefix of ix_flow_run_heartbeat), which the
    queue keeps few.
    """
    fr, flow, group = db.flow_run, db.flow, db.flow_group
    now = db.utcnow()
    doomed = (select(fr.c.id).join(flow, flow.c.id == fr.c.flow_id)
              .join(group, group.c.id == flow.c.flow_group_id)
              .where(_untouched(), fr.c.auto_scheduled.is_(True),
                     fr.c.scheduled_start_time > now,
                     or_(flow.c.archived.is_(True), group.c.schedule_active.is_(False))))
    removed = _remove(engine, batch, doomed)
    return removed + _purge_tombstones(engine, batch, now - timedelta(seconds=stale_s))


def _untouched() -> ColumnElement[bool]:
    """Exactly the Scheduled state create_flow_run wrote (version 1) and nothing since: a run that was
    claimed, ran, and went back to Scheduled (a retry, a requeue, the zombie sweep) has a past and stays."""
    fr = db.flow_run
    return (fr.c.state == "Scheduled") & (fr.c.version == 1)


def _tombstone(stale_before: datetime | None = None) -> ColumnElement[bool]:
    """A removal's tombstone (no state, no key); with `stale_before`, also a creation cut short (no state)
    long ago, which no round finishes any more (a past time, an archived version, a schedule off)."""
    fr = db.flow_run
    dead: ColumnElement[bool] = fr.c.state.is_(None) & fr.c.idempotency_key.is_(None)
    if stale_before is not None:
        dead = or_(dead, fr.c.state.is_(None) & (fr.c.created < stale_before))
    return fr.c.auto_scheduled.is_(True) & dead


def _remove(engine: Engine, batch: int, doomed: Select[Any]) -> int:
    fr = db.flow_run
    removed = 0
    while True:
        with db.read_tx(engine) as conn:  # nothing to remove (the usual round) takes no write lock
            ids = conn.execute(doomed.order_by(fr.c.id).limit(batch)).scalars().all()
        if ids:
            with db.write_tx(engine) as conn:
                # Re-checked by the UPDATE itself (PostgreSQL waits for a concurrent claim's row lock, then
                # re-evaluates): a run claimed meanwhile is Submitted now and stays.
                conn.execute(update(fr).where(fr.c.id.in_(ids), _untouched(),
                                              fr.c.auto_scheduled.is_(True)).values(
                    state=None, serialized_state=None, idempotency_key=None, version=fr.c.version + 1))
        for run_id in ids:
            removed += _purge(engine, batch, run_id)
        if len(ids) < batch:
            return removed


def _purge_tombstones(engine: Engine, batch: int, stale_before: datetime) -> int:
    with db.read_tx(engine) as conn:
        stmt = select(db.flow_run.c.id).where(_tombstone(stale_before)).limit(batch)
        ids = conn.execute(stmt).scalars().all()
    return sum(_purge(engine, batch, run_id, stale_before) for run_id in ids)


def _children(run_id: str) -> Sequence[tuple[Any, ColumnElement[bool]]]:
    tr = db.task_run
    task_runs = select(tr.c.id).where(tr.c.flow_run_id == run_id)
    return ((db.task_run_state, db.task_run_state.c.task_run_id.in_(task_runs)),
            (tr, tr.c.flow_run_id == run_id),
            (db.log, db.log.c.flow_run_id == run_id),
            (db.flow_run_state, db.flow_run_state.c.flow_run_id == run_id))


def _purge(engine: Engine, batch: int, run_id: str, stale_before: datetime | None = None) -> int:
    """A tombstone's rows in batches, then the run itself; 1 if it was removed."""
    fr = db.flow_run
    still = select(fr.c.id).where(fr.c.id == run_id, _tombstone(stale_before))
    for table, where in _children(run_id):
        while True:
            with db.write_tx(engine) as conn:
                if conn.execute(still.with_for_update()).first() is None:
                    return 0  # gone already (another remover), or written to since: left alone
                ids = select(table.c.id).where(where).limit(batch)
                if conn.execute(delete(table).where(table.c.id.in_(ids))).rowcount < batch:
                    break
    with db.write_tx(engine) as conn:
        if conn.execute(still.with_for_update()).first() is None:
            return 0
        for table, where in _children(run_id):
            conn.execute(delete(table).where(where))
        conn.execute(delete(fr).where(fr.c.id == run_id))
    logger.debug("removed unclaimed auto-scheduled flow run {}", run_id)
    return 1
