"""Flows whose registration never finished: removed by the zombie sweep, a bounded batch per transaction.

A registration writes its flow row (not `ready`, so invisible), then its tasks and edges in batches, then
publishes it. A crash in between leaves rows nothing reads; after `stale_registration_s` they go. The flow
is first marked `archived` while still unready, which `_publish` refuses to publish, so a registration that
is merely slow fails with a clear error instead of publishing a flow whose tasks are being deleted.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from loguru import logger
from sqlalchemy import Table, delete, exists, select, update

from server import db
from server.context import Services

FLOWS_PER_SWEEP = 20


def discard_stale_registrations(services: Services) -> int:
    """One pass over at most FLOWS_PER_SWEEP abandoned flows; returns how many were removed."""
    cutoff = db.utcnow() - timedelta(seconds=services.settings.stale_registration_s)
    flow = db.flow
    with db.read_tx(services.engine) as conn:
        rows = conn.execute(select(flow.c.id, flow.c.flow_group_id).where(
            flow.c.ready.is_(False), flow.c.created < cutoff).limit(FLOWS_PER_SWEEP)).all()
    for row in rows:
        _discard(services, row.id, row.flow_group_id)
        logger.info("removed flow {}: its registration did not finish", row.id)
    return len(rows)


def _discard(services: Services, flow_id: str, group_id: str) -> None:
    engine, size = services.engine, services.settings.write_batch_rows
    with db.write_tx(engine) as conn:
        conn.execute(update(db.flow).where(db.flow.c.id == flow_id, db.flow.c.ready.is_(False))
                     .values(archived=True))
    for table in (db.edge, db.task):
        while _delete_batch(engine, table, flow_id, size) == size:
            pass
    with db.write_tx(engine) as conn:  # anything a still-running registration added meanwhile, then the row
        for table in (db.edge, db.task):
            conn.execute(delete(table).where(table.c.flow_id == flow_id))
        conn.execute(delete(db.flow).where(db.flow.c.id == flow_id, db.flow.c.ready.is_(False)))
        others = exists().where(db.flow.c.flow_group_id == group_id)
        conn.execute(delete(db.flow_group).where(db.flow_group.c.id == group_id, ~others))


def _delete_batch(engine: Any, table: Table, flow_id: str, size: int) -> int:
    with db.write_tx(engine) as conn:
        ids = select(table.c.id).where(table.c.flow_id == flow_id).limit(size)
        return int(conn.execute(delete(table).where(table.c.id.in_(ids))).rowcount)
