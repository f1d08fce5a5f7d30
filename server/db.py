"""SQLAlchemy tables and engine set-up.

Storage is SQLAlchemy Core on any SQLAlchemy URL; SQLite (the default) gets WAL mode and a busy timeout so
that concurrent writers - threads of one server or several server processes on one file - wait instead of
failing, and every write transaction starts with `BEGIN IMMEDIATE` so a read-then-update never needs a lock
upgrade (the classic SQLITE_BUSY_SNAPSHOT trap). Exactly-once claiming does not rely on that lock alone: state
updates are conditional UPDATEs on the version read (see `server.states`), which also holds on PostgreSQL.

Migrations are Alembic revisions (`server/migrations`, applied by `server.migrate`); the tables below are
what the newest revision creates, and a test compares the two. To change the schema: edit the tables AND add a
revision.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    false,
    select,
    true,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError

from server.write_gate import FairGate, gate_for, register_gate


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: one representation on every backend, sortable in SQLite."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


JsonType = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
Id = String(36)

metadata = MetaData()


def _id() -> Column[str]:
    return Column("id", Id, primary_key=True)


def _created() -> Column[datetime]:
    return Column("created", UTCDateTime, nullable=False, default=lambda: utcnow())


tenant = Table(
    "tenant", metadata, _id(),
    Column("name", Text, nullable=False),
    Column("slug", String(255), nullable=False, unique=True),
    _created(),
)

api_token = Table(
    "api_token", metadata, _id(),
    Column("tenant_id", Id, ForeignKey("tenant.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("scope", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("last_used", UTCDateTime),
    _created(),
    # FLOW_RUN tokens only: the one flow run the token is for, and its maximum lifetime.
    Column("flow_run_id", Id),
    Column("expires_at", UTCDateTime),
    Index("ix_api_token_flow_run", "flow_run_id"),  # retention deletes a run's tokens with it
)

project = Table(
    "project", metadata, _id(),
    Column("tenant_id", Id, ForeignKey("tenant.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text),
    _created(),
    UniqueConstraint("tenant_id", "name", name="uq_project_tenant_name"),
)

flow_group = Table(
    "flow_group", metadata, _id(),
    Column("tenant_id", Id, ForeignKey("tenant.id"), nullable=False),
    Column("name", Text),
    Column("idempotency_key", Text),
    Column("labels", JsonType),
    Column("run_config", JsonType),
    Column("default_parameters", JsonType),
    Column("settings", JsonType),
    Column("schedule_active", Boolean, nullable=False, default=False),
    _created(),
)

flow = Table(
    "flow", metadata, _id(),
    Column("tenant_id", Id, ForeignKey("tenant.id"), nullable=False),
    Column("project_id", Id, ForeignKey("project.id"), nullable=False),
    Column("flow_group_id", Id, ForeignKey("flow_group.id"), nullable=False),
    Column("version_group_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("core_version", String(64)),
    Column("description", Text),
    Column("storage", JsonType),
    Column("environment", JsonType),
    Column("run_config", JsonType),
    Column("parameters", JsonType),
    Column("serialized_flow", JsonType),
    # serialized_flow["schedule"], apart: the scheduler reads it every round, never the whole flow.
    Column("schedule", JsonType),
    Column("settings", JsonType),
    Column("archived", Boolean, nullable=False, default=False),
    # False while a registration writes its tasks and edges in batches: such a flow is invisible.
    Column("ready", Boolean, nullable=False, default=True, server_default=true()),
    _created(),
    Index("ix_flow_project_name", "project_id", "name"),
    Index("ix_flow_version_group", "tenant_id", "version_group_id"),
)

task = Table(
    "task", metadata, _id(),
    Column("tenant_id", Id, ForeignKey("tenant.id"), nullable=False),
    Column("flow_id", Id, ForeignKey("flow.id"), nullable=False),
    Column("slug", Text, nullable=False),
    Column("name", Text),
    Column("type", Text),
    Column("cache_key", Text),
    _created(),
    UniqueConstraint("flow_id", "slug", name="uq_task_flow_slug"),
)

edge = Table(
    "edge", metadata, _id(),
    Column("flow_id", Id, ForeignKey("flow.id"), nullable=False, index=True),
    Column("upstream_task_id", Id, ForeignKey("task.id"), nullable=False),
    Column("downstream_task_id", Id, ForeignKey("task.id"), nullable=False),
    Column("key", Text),
    Column("mapped", Boolean, nullable=False, default=False),
)

flow_run = Table(
    "flow_run", metadata, _id(),
    Column("tenant_id", Id, ForeignKey("tenant.id"), nullable=False),
    Column("flow_id", Id, ForeignKey("flow.id"), nullable=False),
    Column("name", Text),
    Column("version", Integer, nullable=False, default=0),
    Column("state", String(32)),
    Column("serialized_state", JsonType),
    Column("state_start_time", UTCDateTime),
    Column("state_timestamp", UTCDateTime),
    Column("state_message", Text),
    Column("scheduled_start_time", UTCDateTime, nullable=False),
    Column("start_time", UTCDateTime),
    Column("end_time", UTCDateTime),
    Column("heartbeat", UTCDateTime),
    Column("parameters", JsonType),
    Column("context", JsonType),
    Column("labels", JsonType, nullable=False),
    Column("run_config", JsonType),
    Column("agent_id", Id),
    Column("idempotency_key", Text),
    Column("times_resurrected", Integer, nullable=False, default=0),
    # True for the runs the scheduler created (server.scheduler): it counts, extends and removes only those.
    Column("auto_scheduled", Boolean, nullable=False, server_default=false()),
    _created(),
    # The queue index: one range scan per queue state, already in state_start_time order.
    Index("ix_flow_run_queue", "tenant_id", "state", "state_start_time"),
    # Unique: two replicas creating a run with one key at once cannot both insert (NULL keys never clash).
    Index("uq_flow_run_idempotency", "flow_id", "idempotency_key", unique=True),
    Index("ix_flow_run_heartbeat", "state", "heartbeat"),
    # The web UI's runs page: newest first (keyset on scheduled start time, then id), all runs, or one
    # flow's, or one state's.
    Index("ix_flow_run_scheduled", "scheduled_start_time", "id"),
    Index("ix_flow_run_flow_scheduled", "flow_id", "scheduled_start_time", "id"),
    Index("ix_flow_run_state_scheduled", "state", "scheduled_start_time", "id"),
    # Retention (server.retention): the finished runs whose state is older than the cutoff.
    Index("ix_flow_run_state_timestamp", "state", "state_timestamp"),
)

task_run = Table(
    "task_run", metadata, _id(),
    Column("tenant_id", Id, ForeignKey("tenant.id"), nullable=False),
    Column("flow_run_id", Id, ForeignKey("flow_run.id"), nullable=False),
    Column("task_id", Id, ForeignKey("task.id"), nullable=False),
    Column("map_index", Integer, nullable=False, default=-1),
    Column("name", Text),
    Column("version", Integer, nullable=False, default=0),
    Column("state", String(32)),
    Column("serialized_state", JsonType),
    Column("state_start_time", UTCDateTime),
    Column("state_timestamp", UTCDateTime),
    Column("state_message", Text),
    Column("cache_key", Text),
    Column("heartbeat", UTCDateTime),
    _created(),
    UniqueConstraint("flow_run_id", "task_id", "map_index", name="uq_task_run_identity"),
    Index("ix_task_run_queue", "tenant_id", "state", "state_start_time"),
    Index("ix_task_run_task_state", "task_id", "state", "state_timestamp"),
    Index("ix_task_run_cache_key", "cache_key", "state"),
)


def _state_history(name: str, parent: str) -> Table:
    return Table(
        name, metadata, _id(),
        Column("tenant_id", Id, nullable=False),
        Column(f"{parent}_id", Id, ForeignKey(f"{parent}.id"), nullable=False, index=True),
        Column("version", Integer, nullable=False),
        Column("state", String(32), nullable=False),
        Column("serialized_state", JsonType),
        Column("start_time", UTCDateTime),
        Column("message", Text),
        Column("timestamp", UTCDateTime, nullable=False),
    )


flow_run_state = _state_history("flow_run_state", "flow_run")
task_run_state = _state_history("task_run_state", "task_run")

log = Table(
    "log", metadata, _id(),
    Column("tenant_id", Id, nullable=False),
    Column("flow_run_id", Id, ForeignKey("flow_run.id"), nullable=False),
    Column("task_run_id", Id),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("name", Text),
    Column("level", String(16)),
    Column("message", Text),
    Column("info", JsonType),
    _created(),
    Index("ix_log_flow_run_time", "flow_run_id", "timestamp"),
)

agent = Table(
    "agent", metadata, _id(),
    Column("tenant_id", Id, nullable=False),
    Column("name", Text),
    Column("type", Text),
    Column("core_version", String(64)),
    Column("labels", JsonType, nullable=False),
    Column("agent_config_id", Id),
    Column("last_queried", UTCDateTime),
    _created(),
)

agent_config = Table(
    "agent_config", metadata, _id(),
    Column("tenant_id", Id, nullable=False),
    Column("name", Text),
    Column("settings", JsonType, nullable=False),
    _created(),
)

lease = Table(
    # A time-limited claim on a job only one server replica may do at a time (the zombie sweep): a replica
    # holds it while `expires` is in the future and renews it each round; a dead replica's lease runs out.
    "lease", metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expires", UTCDateTime, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------- engine


POSTGRES_CONNECT_TIMEOUT_S = 10
SECRET_QUERY_KEYS = frozenset({"password", "passfile", "sslpassword", "sslkey"})


def shown_url(url: str | URL) -> str:
    """The database URL for a log line or an error: no password, neither `user:password@` nor `?password=`."""
    parsed = make_url(url)
    hidden = {key: "hidden" for key in parsed.query if key.lower() in SECRET_QUERY_KEYS}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def create_db_engine(url: str, *, pool_size: int = 16, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine whose SQLite connections use WAL + busy_timeout and explicit BEGIN (see module doc)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        # A database host that drops packets (instead of refusing) must give a quick 503, not a hung request.
        parsed = parsed.update_query_dict({"connect_timeout": str(POSTGRES_CONNECT_TIMEOUT_S)})
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:":
        from pathlib import Path

        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, connect_args={"check_same_thread": False}
    )
    _install_sqlite_hooks(engine, busy_timeout_ms)
    register_gate(engine, FairGate(busy_timeout_ms / 1000))
    return engine


def _install_sqlite_hooks(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A short read transaction (concurrent with writers under WAL)."""
    with engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction: takes SQLite's write lock up front (in arrival order within this process)."""
    gate = gate_for(engine)
    with gate.turn() if gate is not None else nullcontext():
        with engine.connect().execution_options(immediate=True) as conn, conn.begin():
            yield conn


def ensure_default_tenant(engine: Engine) -> str:
    """Prefect clients need >= 1 tenant (`tenant[0].id`); the first start creates `default`.

    Replicas starting together on a fresh database may both try: the unique slug lets one insert, and the
    other (its savepoint rolled back) reads the winner's row.
    """
    first = select(tenant.c.id).order_by(tenant.c.created, tenant.c.id).limit(1)
    with write_tx(engine) as conn:
        row = conn.execute(first).first()
        if row is not None:
            return row.id
        tenant_id = new_id()
        try:
            with conn.begin_nested():
                conn.execute(tenant.insert().values(id=tenant_id, name="default", slug="default",
                                                    created=utcnow()))
        except IntegrityError:
            return conn.execute(first).scalar_one()
        return tenant_id
