"""FLOW_RUN tokens: minted for one flow run, dead once the run has finished (plus a grace) or too old.

A flow container gets such a token instead of its agent's RUNNER token, so reading it (`docker inspect`)
gives access to that one run only (`server.run_scope`), and only while the run is alive. Stored like every
token: sha256 only, in `api_token` with `flow_run_id` and `expires_at` set.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select

from server import db
from server.errors import ApiError, NotFoundError
from server.states import FINISHED_STATES

SCOPE = "FLOW_RUN"
TOKEN_PREFIX = "lasr_"
NO_LIMIT_S = 72 * 3600.0


@dataclass(frozen=True)
class Minted:
    token: str
    expires_at: datetime


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def mint(conn: Connection, flow_run_id: str, scope: ColumnElement[bool], max_lifetime_s: float,
         token_hash: Any) -> datetime:
    """Insert the token row for a run of the caller's tenant (`scope`) that can still run.

    Another tenant's run and a run still being created read as not found, exactly like a random id.
    """
    fr = db.flow_run
    run = conn.execute(select(fr.c.id, fr.c.tenant_id, fr.c.state).where(
        fr.c.id == flow_run_id, scope, fr.c.state.is_not(None))).first()
    if run is None:
        raise NotFoundError(f"Flow run {flow_run_id} not found.")
    if run.state in FINISHED_STATES:
        raise ApiError(f"Flow run {flow_run_id} is already finished ({run.state}); no token is minted "
                       "for it.", "FLOW_RUN_FINISHED")
    now = db.utcnow()
    expires_at = now + timedelta(seconds=max_lifetime_s)
    conn.execute(db.api_token.insert().values(
        id=db.new_id(), tenant_id=run.tenant_id, name=f"flow run {flow_run_id}", scope=SCOPE,
        token_hash=token_hash, created=now, flow_run_id=flow_run_id, expires_at=expires_at))
    return expires_at


def live_until(conn: Connection, row: Any, grace_s: float, now: datetime) -> datetime | None:
    """Until when a FLOW_RUN token row stays valid (None: it is dead now).

    The run's first finished state recorded after the token was minted starts the grace period; a later
    requeue does not revive the token (the new launch gets a new one). The run must still exist.
    """
    limit: datetime | None = row.expires_at
    history = db.flow_run_state
    finished = conn.execute(select(func.min(history.c.timestamp)).where(
        history.c.flow_run_id == row.flow_run_id, history.c.state.in_(sorted(FINISHED_STATES)),
        history.c.timestamp >= row.created)).scalar()
    if finished is not None:
        finished_limit = finished + timedelta(seconds=grace_s)
        limit = finished_limit if limit is None else min(limit, finished_limit)
    exists = conn.execute(select(db.flow_run.c.id).where(
        db.flow_run.c.id == row.flow_run_id, db.flow_run.c.tenant_id == row.tenant_id)).first()
    if limit is None:  # rows this module writes always have expires_at; a hand-made one gets none extra
        limit = now + timedelta(seconds=NO_LIMIT_S)
    return None if exists is None or limit <= now else limit
