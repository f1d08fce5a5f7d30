"""Long writes in bounded batches, each its own short write transaction.

SQLite has one write lock per database. A flow of 10,000 tasks written in one transaction would hold it
for seconds while every heartbeat and claim of every other client waits; written `write_batch_rows` rows
per transaction, other writers get the lock between batches (in arrival order, see `write_gate.FairGate`).
Callers keep such writes crash-safe by making the result visible only in a last, short transaction
(`flow.ready`, a flow run's first state) or by making the work idempotent (the cancel cascade).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Table, select

from server import db
from server.context import RequestContext
from server.states import FINISHED_STATES, cancel_task_runs


def chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def insert_in_batches(ctx: RequestContext, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    for batch in chunks(rows, ctx.settings.write_batch_rows):
        with ctx.write() as conn:
            conn.execute(table.insert(), list(batch))


def cascade_cancelled(ctx: RequestContext, flow_run_id: str, state: dict[str, Any]) -> int:
    """Every unfinished task run of the flow run -> `state`, a batch per transaction; returns the count.

    Idempotent: each batch re-selects the task runs still unfinished (finished ones were cancelled by an
    earlier, interrupted cascade or finished by their runner meanwhile), so running it again completes an
    interrupted cascade and changes nothing after a complete one.
    """
    tr, done, size = db.task_run, 0, ctx.settings.write_batch_rows
    unfinished = (select(tr.c.id, tr.c.tenant_id, tr.c.version, tr.c.serialized_state)
                  .where(tr.c.flow_run_id == flow_run_id,
                         tr.c.state.not_in(sorted(FINISHED_STATES)) | tr.c.state.is_(None))
                  .order_by(tr.c.id).limit(size).with_for_update())
    # Until a batch finds none: on PostgreSQL a short batch proves nothing (FOR UPDATE skips rows another
    # transaction finished while it waited); rows are locked in id order, like the state batches.
    previous: list[str] = []
    while True:
        with ctx.write() as conn:
            rows = list(conn.execute(unfinished))
            cancel_task_runs(conn, rows, state)
        done += len(rows)
        ids = [row.id for row in rows]
        if not rows or ids == previous:  # none left, or no progress (never loop forever)
            return done
        previous = ids
