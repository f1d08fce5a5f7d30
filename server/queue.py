"""The run queue of `get_runs_in_queue` (contract §4.1), shared by the resolver, the seeder and benchmarks.

A run qualifies when (a) it is in a queue state with `state_start_time <= before`, or (b) it is Running and
has a task run in a queue state with `state_start_time <= before` (a flow process died during a long task
retry). Each queue state is one range scan on `ix_flow_run_queue` (tenant_id, state, state_start_time),
already in order, so the cost does not grow with the number of finished runs stored. Like Prefect Server, 3 x
limit candidates are fetched in start-time order, then filtered by labels: a run's labels must be a subset of
the agent's, and an unlabelled run only goes to an unlabelled agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from server import db
from server.states import QUEUE_STATES

CANDIDATE_FACTOR = 3


def labels_match(run_labels: Iterable[str] | None, agent_labels: set[str]) -> bool:
    wanted = set(run_labels or ())
    if wanted - agent_labels:
        return False
    return bool(wanted) or not agent_labels


def _candidates(conn: Connection, tenant_id: str, before: datetime, count: int) -> list[Any]:
    fr, tr = db.flow_run, db.task_run
    rows: list[Any] = []
    for state in QUEUE_STATES:
        rows += conn.execute(
            select(fr.c.id, fr.c.state_start_time.label("due"), fr.c.labels)
            .where(fr.c.tenant_id == tenant_id, fr.c.state == state, fr.c.state_start_time <= before)
            .order_by(fr.c.state_start_time).limit(count)
        ).all()
    retrying = (
        select(tr.c.flow_run_id, func.min(tr.c.state_start_time).label("due"))
        .where(tr.c.tenant_id == tenant_id, tr.c.state.in_(QUEUE_STATES), tr.c.state_start_time <= before)
        .group_by(tr.c.flow_run_id).subquery()
    )
    rows += conn.execute(
        select(fr.c.id, retrying.c.due, fr.c.labels)
        .join(retrying, retrying.c.flow_run_id == fr.c.id)
        .where(fr.c.state == "Running").order_by(retrying.c.due).limit(count)
    ).all()
    rows.sort(key=lambda row: (row.due, row.id))
    return rows[:count]


def queued_run_ids(
    conn: Connection, tenant_id: str, labels: Sequence[str] | None, before: datetime, limit: int = 25
) -> list[str]:
    """Ids of the runs an agent with `labels` may claim now, oldest start time first, at most `limit`."""
    agent_labels = set(labels or ())
    result: list[str] = []
    for row in _candidates(conn, tenant_id, before, CANDIDATE_FACTOR * limit):
        if row.id not in result and labels_match(row.labels, agent_labels):
            result.append(row.id)
            if len(result) >= limit:
                break
    return result


def next_due(conn: Connection, tenant_id: str, after: datetime) -> datetime | None:
    """The earliest queue-state start time after `after`: when a long poll should look again."""
    fr = db.flow_run
    times = [
        conn.execute(
            select(func.min(fr.c.state_start_time))
            .where(fr.c.tenant_id == tenant_id, fr.c.state == state, fr.c.state_start_time > after)
        ).scalar()
        for state in QUEUE_STATES
    ]
    found = [db.UTCDateTime().process_result_value(t, None) if isinstance(t, datetime) and t.tzinfo is None
             else t for t in times if t is not None]
    return min(found) if found else None
