"""The schema's one way forward: the Alembic revisions in `server/migrations`, applied at start under a lock.

Several replicas may start at once on one database. On PostgreSQL the whole check-and-upgrade holds a session
advisory lock; on SQLite it is one `BEGIN IMMEDIATE` transaction (SQLite's DDL is transactional). Either way
one replica migrates and the others then find the database at head and go on. A database made before Alembic
(a `schema_version` table) is stamped at the revision its version matches and upgraded from there. A fresh
database is created by the same revisions, so what production runs is what the tests run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from loguru import logger
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from server import db

SCRIPT_LOCATION = Path(__file__).with_name("migrations")
# The pg_advisory_lock key of this application's schema migration: any fixed 64-bit number, never changed.
ADVISORY_LOCK_KEY = 0x4C41_5345_4D49_4752
# `schema_version` of a database made before Alembic -> the revision with the same schema.
LEGACY_REVISIONS = {1: "0001", 2: "0002", 3: "0003"}


class MigrationError(Exception):
    """The database cannot be brought to this code's schema; the message is one line for the operator."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration built in code: the packaged script directory, run on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, "the migrations have no head"
    return revision


def upgrade(engine: Engine) -> str:
    """Bring the database to head (creating it from nothing if empty); returns the head revision."""
    with _database_errors(engine), _migration_connection(engine) as conn:
        config = alembic_config(conn)
        found = _revision(conn)
        if found is None and inspect(conn).has_table("schema_version"):
            found = _legacy_revision(conn)
            command.stamp(config, found)
        elif found is not None:
            _check_known(found)
        command.upgrade(config, "head")
        reached = _revision(conn)
    assert reached is not None
    if reached != found:
        logger.info("database schema migrated from revision {} to {}", found or "none", reached)
    return reached


def current(engine: Engine) -> str | None:
    """The database's revision; None if it has none yet (empty, or made before Alembic)."""
    with _database_errors(engine), db.read_tx(engine) as conn:
        return _revision(conn)


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _legacy_revision(conn: Connection) -> str:
    version = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
    if version not in LEGACY_REVISIONS:
        raise MigrationError(f"the database's schema_version is {version}, which this server does not know")
    return LEGACY_REVISIONS[version]


def _check_known(revision: str) -> None:
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if revision not in known:
        raise MigrationError(f"the database is at schema revision {revision}, which this server does not "
                             f"know (its newest is {head()}): a newer local-agent-server migrated it")


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """One connection, one transaction, and no other replica migrating meanwhile."""
    if engine.dialect.name != "postgresql":
        with db.write_tx(engine) as conn:  # SQLite: BEGIN IMMEDIATE holds the write lock to the commit
            yield conn
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        conn.commit()  # the lock is the session's: it outlives this transaction
        try:
            with conn.begin():
                yield conn
        finally:
            _advisory_unlock(conn)


def _advisory_unlock(conn: Connection) -> None:
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
        conn.commit()
    except DBAPIError:
        conn.invalidate()  # a broken session is closed, and closing it releases the lock


@contextmanager
def _database_errors(engine: Engine) -> Iterator[None]:
    """Driver and Alembic errors as one line naming the database (password hidden), never a traceback."""
    try:
        yield
    except DBAPIError as exc:
        detail = str(exc.orig or exc).strip().splitlines()[0]
        raise MigrationError(f"database {_shown(engine)}: {detail}") from exc
    except CommandError as exc:
        raise MigrationError(f"database {_shown(engine)}: {exc}") from exc


def _shown(engine: Engine) -> str:
    return db.shown_url(engine.url)
