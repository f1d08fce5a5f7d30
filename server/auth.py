"""API tokens for `--auth token` (Prefect Cloud behaviour): stored as sha256, scoped RUNNER or USER.

A token is shown once, by `local-agent-server token create`; only its hash is stored, so a leaked database
does not leak credentials, and a token never reaches a log line.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine, select

from server import db
from server.context import SCOPES

TOKEN_PREFIX = "las_"


@dataclass(frozen=True)
class Identity:
    tenant_id: str
    scope: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    kind, _, value = header.strip().partition(" ")
    value = value.strip()
    return value if kind.lower() == "bearer" and value else None


def authenticate(engine: Engine, token: str) -> Identity | None:
    with db.read_tx(engine) as conn:
        row = conn.execute(select(db.api_token.c.tenant_id, db.api_token.c.scope).where(
            db.api_token.c.token_hash == hash_token(token))).first()
    return None if row is None else Identity(row.tenant_id, row.scope)


def create_token(engine: Engine, scope: str, name: str, tenant_slug: str | None = None) -> str:
    """Create a token in the named tenant (default: the first one) and return it - the only time it exists."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.write_tx(engine) as conn:
        stmt = select(db.tenant.c.id)
        if tenant_slug:
            stmt = stmt.where(db.tenant.c.slug == tenant_slug)
        stmt = stmt.order_by(db.tenant.c.created)
        tenant_id = conn.execute(stmt.limit(1)).scalar()
        if tenant_id is None:
            raise ValueError(f"tenant {tenant_slug!r} not found")
        conn.execute(db.api_token.insert().values(
            id=db.new_id(), tenant_id=tenant_id, name=name, scope=scope, token_hash=hash_token(token),
            created=db.utcnow()))
    return token
