"""Time-limited leases: a job only one server replica may do at a time (the zombie sweep).

A lease is one row of the `lease` table. `hold` acquires or renews it in one write transaction with a
conditional UPDATE (`WHERE name = ? AND (holder = ? OR expires < now)`), which both SQLite (one writer at a
time) and PostgreSQL (the second UPDATE waits for the first's row lock, then re-checks its WHERE on the new
row) decide for exactly one replica. A lease nobody ever held is INSERTed inside a savepoint, so two
replicas inserting at once end with one row and a plain `False` for the loser.

Expiry uses the replicas' clocks: they must agree to well within the ttl (NTP). A replica whose clock runs
ahead could take a lease early; the work it guards is safe anyway (the sweep's state writes are
compare-and-set), the lease only keeps replicas from doing it several times over.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from loguru import logger
from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from server import db


def new_holder() -> str:
    """A random id per process: a restarted replica is a new holder and waits for its old lease too."""
    return uuid.uuid4().hex


def hold(engine: Engine, name: str, holder: str, ttl_s: float) -> bool:
    """Acquire or renew lease `name` for `holder` until now + ttl_s; False while another holder has it."""
    lease = db.lease
    with db.write_tx(engine) as conn:
        now = db.utcnow()
        expires = now + timedelta(seconds=ttl_s)
        renewed = conn.execute(update(lease).where(
            lease.c.name == name, or_(lease.c.holder == holder, lease.c.expires < now),
        ).values(holder=holder, expires=expires))
        if renewed.rowcount == 1:
            return True
        if conn.execute(select(lease.c.holder).where(lease.c.name == name)).first() is not None:
            return False
        try:
            with conn.begin_nested():
                conn.execute(lease.insert().values(name=name, holder=holder, expires=expires))
        except IntegrityError:  # another replica inserted it first
            return False
        return True


def release(engine: Engine, name: str, holder: str) -> bool:
    """Give the lease up (clean shutdown): another replica takes it at its next round, not after the ttl."""
    lease = db.lease
    with db.write_tx(engine) as conn:
        gone = conn.execute(delete(lease).where(lease.c.name == name, lease.c.holder == holder))
        return gone.rowcount == 1


class Lease:
    """One process's view of one lease: renews it each round and logs when it gains or loses it."""

    def __init__(self, engine: Engine, name: str, ttl_s: float, holder: str | None = None) -> None:
        self.engine, self.name, self.ttl_s = engine, name, ttl_s
        self.holder = holder or new_holder()
        self.held = False

    def renew(self) -> bool:
        """Acquire or renew; a database error counts as not holding it (another replica may take over)."""
        try:
            held = hold(self.engine, self.name, self.holder, self.ttl_s)
        except Exception:
            self._change(False)
            raise
        self._change(held)
        return held

    def release(self) -> None:
        if not self.held:
            return
        try:
            release(self.engine, self.name, self.holder)
        except Exception as exc:  # the database is away: the lease simply runs out
            logger.warning("lease {}: could not release it ({}); it expires by itself", self.name,
                           type(exc).__name__)
        self._change(False)

    def _change(self, held: bool) -> None:
        if held != self.held:
            verb = "acquired" if held else "released or lost"
            logger.info("lease {} {} by this replica (holder {}, ttl {:g} s)", self.name, verb, self.holder,
                        self.ttl_s)
        self.held = held
