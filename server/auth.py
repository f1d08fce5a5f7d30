"""API tokens for `--auth token` (Prefect Cloud behaviour): stored as sha256, scoped RUNNER, USER or ADMIN.

A token is shown once, by `local-agent-server token create`; only its hash is stored, so a leaked database
does not leak credentials, and a token never reaches a log line. Only ADMIN tokens may create tenants.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from server import db
from server.context import SCOPES
from server.request_limits import ByteLRU

TOKEN_PREFIX = "las_"
MAX_TOKEN_CHARS = 512  # ours are 47; anything far longer is not worth hashing


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
    """The token's identity; a token that is not printable ASCII (raw header bytes) is simply invalid."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        return None
    with db.read_tx(engine) as conn:
        row = conn.execute(select(db.api_token.c.tenant_id, db.api_token.c.scope).where(
            db.api_token.c.token_hash == hash_token(token))).first()
    return None if row is None else Identity(row.tenant_id, row.scope)


class IdentityCache:
    """Hashed token -> identity for a few seconds, so the check that precedes reading a body stays cheap.

    Only valid tokens are kept (random wrong tokens would only fill it); keys are sha256 digests, so the
    cache holds no token, and its size is bounded in bytes. A deleted token keeps working for up to `ttl_s`.
    """

    ENTRY_BYTES = 256

    def __init__(self, ttl_s: float, max_entries: int = 4096) -> None:
        self.ttl_s = ttl_s
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
        identity = authenticate(engine, token)
        if identity is not None and self.ttl_s > 0:
            self._cache.put(self._key(token), (identity, time.monotonic() + self.ttl_s), self.ENTRY_BYTES)
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
