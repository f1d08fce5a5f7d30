"""API tokens for `--auth token` (Prefect Cloud behaviour): stored as sha256, scoped FLOW_RUN, RUNNER, USER
or ADMIN.

A token is shown once, by `local-agent-server token create` (or `create_flow_run_token` for a FLOW_RUN token,
see `server.run_tokens`); only its hash is stored, so a leaked database does not leak credentials, and a token
never reaches a log line. Only ADMIN tokens may create tenants.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, select
from sqlalchemy.exc import IntegrityError

from server import db, run_tokens
from server.context import SCOPES
from server.request_limits import ByteLRU

TOKEN_PREFIX = "las_"
MAX_TOKEN_CHARS = 512  # ours are 47; anything far longer is not worth hashing


@dataclass(frozen=True)
class Identity:
    """Who a token is; a FLOW_RUN token also names its run and until when it is known to be valid."""

    tenant_id: str
    scope: str
    flow_run_id: str | None = None
    valid_until: datetime | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    kind, _, value = header.strip().partition(" ")
    value = value.strip()
    return value if kind.lower() == "bearer" and value else None


def authenticate(engine: Engine, token: str, grace_s: float = 60.0) -> Identity | None:
    """The token's identity; a token that is not printable ASCII (raw header bytes) is simply invalid.

    A FLOW_RUN token is valid only while `run_tokens.live_until` says so (its run, grace, lifetime).
    """
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        return None
    t = db.api_token
    with db.read_tx(engine) as conn:
        columns = (t.c.tenant_id, t.c.scope, t.c.flow_run_id, t.c.expires_at, t.c.created)
        row = conn.execute(select(*columns).where(t.c.token_hash == hash_token(token))).first()
        if row is None:
            return None
        if row.scope != run_tokens.SCOPE:
            return Identity(row.tenant_id, row.scope)
        until = run_tokens.live_until(conn, row, grace_s, db.utcnow()) if row.flow_run_id else None
    return None if until is None else Identity(row.tenant_id, row.scope, row.flow_run_id, until)


class IdentityCache:
    """Hashed token -> identity for a few seconds, so the check that precedes reading a body stays cheap.

    Only valid tokens are kept (random wrong tokens would only fill it); keys are sha256 digests, so the
    cache holds no token, and its size is bounded in bytes. A deleted token keeps working for up to `ttl_s`.
    """

    ENTRY_BYTES = 256

    def __init__(self, ttl_s: float, max_entries: int = 4096, grace_s: float = 60.0) -> None:
        self.ttl_s, self.grace_s = ttl_s, grace_s
        size = max_entries * self.ENTRY_BYTES
        self._cache: ByteLRU[tuple[Identity, float]] = ByteLRU(size, self.ENTRY_BYTES)

    def cached(self, token: str) -> Identity | None:
        """The identity if this token was valid moments ago; no database access, so the event loop may ask."""
        if self.ttl_s <= 0:
            return None
        cached = self._cache.get(self._key(token))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def authenticate(self, engine: Engine, token: str) -> Identity | None:
        identity = self.cached(token)
        if identity is not None:
            return identity
        identity = authenticate(engine, token, self.grace_s)
        if identity is not None and self.ttl_s > 0:
            ttl = self.ttl_s
            if identity.valid_until is not None:  # never cached past a FLOW_RUN token's known end
                ttl = min(ttl, (identity.valid_until - db.utcnow()).total_seconds())
            self._cache.put(self._key(token), (identity, time.monotonic() + ttl), self.ENTRY_BYTES)
        return identity

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def agent_in_tenant(engine: Engine, agent_id: str, tenant_id: str) -> bool:
    """Whether an `X-Prefect-Agent-Id` names an agent of this tenant (others' agents are ignored)."""
    with db.read_tx(engine) as conn:
        row = conn.execute(select(db.agent.c.id).where(
            db.agent.c.id == agent_id, db.agent.c.tenant_id == tenant_id)).first()
    return row is not None


class TenantExists(ValueError):
    """The slug is taken (tenant slugs are unique)."""


def create_tenant(engine: Engine, name: str, slug: str) -> str:
    """Add a tenant: the server CLI and the ADMIN-only `create_tenant` mutation both come here."""
    tenant_id = db.new_id()
    try:
        with db.write_tx(engine) as conn:
            if conn.execute(select(db.tenant.c.id).where(db.tenant.c.slug == slug)).first():
                raise TenantExists(f"a tenant with slug {slug!r} already exists")
            conn.execute(db.tenant.insert().values(id=tenant_id, name=name, slug=slug, created=db.utcnow()))
    except IntegrityError as exc:  # the same slug created concurrently by another server process
        raise TenantExists(f"a tenant with slug {slug!r} already exists") from exc
    return tenant_id


def create_token(engine: Engine, scope: str, name: str, tenant_slug: str | None = None) -> str:
    """Create a token in the named tenant (default: the first one) and return it - the only time it exists."""
    if scope == run_tokens.SCOPE:
        raise ValueError("FLOW_RUN tokens are minted for one flow run by the create_flow_run_token mutation")
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


def create_flow_run_token(engine: Engine, flow_run_id: str, tenant_scope: ColumnElement[bool],
                          max_lifetime_s: float) -> run_tokens.Minted:
    """A new FLOW_RUN token for a run of the caller's tenant; returned once, stored as its hash."""
    token = run_tokens.new_token()
    with db.write_tx(engine) as conn:
        expires_at = run_tokens.mint(conn, flow_run_id, tenant_scope, max_lifetime_s, hash_token(token))
    return run_tokens.Minted(token, expires_at)
