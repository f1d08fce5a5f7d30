"""Retention: finished flow runs older than `retention_days` are deleted with everything that hangs off them
(task runs and both state histories, logs, the run's FLOW_RUN tokens), so a server's database stops growing
with a year of runs. Unset (the default), nothing is ever deleted, as in Prefect Server 1.x.

A run qualifies by its current state (one of `FINISHED_STATES`) and the time that state was set
(`state_timestamp`, indexed with the state). Deletion goes in batches of `retention_batch_runs` runs, one
write transaction each that selects and deletes them together, so writers interleave with a long first pass
and a run set back to Scheduled a moment earlier (a restart) is kept. It runs in the sweep of the replica
holding the `lazarus` lease (`server.lazarus`), at most every `retention_interval_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from loguru import logger
from sqlalchemy import Connection, delete, select

from server import db
from server.context import Services
from server.states import FINISHED_STATES

_last_pass: dict[str, float] = {}  # Services.instance_id -> monotonic time of its last pass


def sweep_if_due(services: Services, stopping: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic) -> int:
    """A pass when retention is on and `retention_interval_s` has passed since this process's last one."""
    settings = services.settings
    if settings.retention_days is None:
        return 0
    last = _last_pass.get(services.instance_id)
    if last is not None and clock() - last < settings.retention_interval_s:
        return 0
    # A pass gets a third of the sweep's lease (renewed between rounds): a first pass over a large database
    # goes on in the next rounds, with the zombie sweep between them and the lease kept.
    budget_end = clock() + settings.lease_ttl_s / 3
    cut = False

    def out_of_time() -> bool:
        nonlocal cut
        cut = cut or clock() >= budget_end
        return cut or stopping()

    cutoff = db.utcnow() - timedelta(days=settings.retention_days)
    deleted = sweep(services, cutoff, out_of_time)
    if not cut:  # a pass cut short (or failed: the exception) goes on at the next round
        _last_pass[services.instance_id] = clock()
    return deleted


def sweep(services: Services, cutoff: datetime, stopping: Callable[[], bool] = lambda: False) -> int:
    """Delete the runs finished before `cutoff`, batch by batch until none is left or `stopping()` (asked
    after each batch, so every pass makes progress)."""
    batch = services.settings.retention_batch_runs
    deleted = 0
    while True:
        done = delete_batch(services, cutoff, batch)
        deleted += done
        if done < batch or stopping():
            break
    if deleted:
        logger.info("retention: deleted {} flow runs finished before {}", deleted, cutoff.isoformat())
    return deleted


def delete_batch(services: Services, cutoff: datetime, limit: int) -> int:
    """One transaction: up to `limit` runs finished before `cutoff`, and all their rows."""
    fr = db.flow_run
    ids: list[str] = []
    with db.write_tx(services.engine) as conn:
        # One finished state at a time: each is a range of the (state, state_timestamp) index, where
        # `state IN (...)` with the order makes PostgreSQL scan and sort the whole table (630 ms a batch at
        # 10^6 runs, against 7 ms). PostgreSQL: the rows stay locked until commit, so no state write slips in
        # between; rows another replica's pass holds are skipped. SQLite: the write transaction is the lock.
        for state in sorted(FINISHED_STATES):
            if len(ids) >= limit:
                break
            ids += conn.execute(
                select(fr.c.id).where(fr.c.state == state, fr.c.state_timestamp < cutoff)
                .order_by(fr.c.state_timestamp).limit(limit - len(ids)).with_for_update(skip_locked=True)
            ).scalars().all()
        if ids:
            _delete_runs(conn, ids)
    return len(ids)


def _delete_runs(conn: Connection, ids: Sequence[str]) -> None:
    task_runs = select(db.task_run.c.id).where(db.task_run.c.flow_run_id.in_(ids))
    conn.execute(delete(db.task_run_state).where(db.task_run_state.c.task_run_id.in_(task_runs)))
    conn.execute(delete(db.task_run).where(db.task_run.c.flow_run_id.in_(ids)))
    conn.execute(delete(db.flow_run_state).where(db.flow_run_state.c.flow_run_id.in_(ids)))
    conn.execute(delete(db.log).where(db.log.c.flow_run_id.in_(ids)))
    conn.execute(delete(db.api_token).where(db.api_token.c.flow_run_id.in_(ids)))
    conn.execute(delete(db.flow_run).where(db.flow_run.c.id.in_(ids)))
