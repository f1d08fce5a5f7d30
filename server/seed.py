"""Bulk seeding for benchmarks and tests: N flow runs (mostly finished, `due` of them Scheduled and due).

    from server.seed import seed_flow_runs
    info = seed_flow_runs(engine, 1_000_000, due=50, labels=["bench"])
    seed_logs(engine, 10)  # then 10 log lines per run, the same way

or `local-agent-server seed --runs 100000 --due 50 --database-url ...`. The rows go through the same tables
and indexes the server uses, so measurements reflect the real queue query, but not through SQLAlchemy's
per-row processing, which would cost most of the time at a million runs: each row is built once as a tuple
in column order with its JSON already encoded, then written with PostgreSQL's `COPY ... FROM STDIN` (psycopg,
on the raw connection) or with the sqlite3 driver's `executemany`, all in one transaction. Run `ANALYZE`
afterwards (`analyze(engine)`) so PostgreSQL's planner knows the table's new size.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError

from server import db
from server.states import scheduled_state

BATCH = 20_000
SQLITE_CACHE_KIB = 256 * 1024  # the indexes' hot pages stay in memory during the load
SUCCESS = {"type": "Success", "message": "All reference tasks succeeded.", "context": {}, "cached_inputs": {},
           "_result": {"type": "Result", "location": None, "__version__": "1.4.1"}, "__version__": "1.4.1"}
RUN_COLUMNS = ("id", "tenant_id", "flow_id", "name", "version", "state", "serialized_state",
               "state_start_time", "state_timestamp", "state_message", "scheduled_start_time", "start_time",
               "end_time", "heartbeat", "parameters", "context", "labels", "run_config", "agent_id",
               "idempotency_key", "times_resurrected", "created")
TASK_RUN_COLUMNS = ("id", "tenant_id", "flow_run_id", "task_id", "map_index", "version", "state",
                    "serialized_state", "created")
LOG_COLUMNS = ("id", "tenant_id", "flow_run_id", "task_run_id", "timestamp", "name", "level", "message",
               "info", "created")
LOG_MESSAGE = "Task 'say': Finished task run for task with final state: 'Success'"
EMPTY_JSON = "{}"
SUCCESS_JSON = json.dumps(SUCCESS)
PENDING_JSON = json.dumps({"type": "Pending", "message": "Task run created"})

NODE_MASK = (1 << 48) - 1

Row = tuple[Any, ...]


def _flow(conn: Any, tenant_id: str, labels: Sequence[str]) -> tuple[str, str, str]:
    project_id, group_id, flow_id, task_id = db.new_id(), db.new_id(), db.new_id(), db.new_id()
    now = db.utcnow()
    conn.execute(db.project.insert().values(id=project_id, tenant_id=tenant_id, name=f"seed-{project_id[:8]}",
                                            created=now))
    conn.execute(db.flow_group.insert().values(
        id=group_id, tenant_id=tenant_id, name="seed-flow", settings={}, created=now))
    conn.execute(db.flow.insert().values(
        id=flow_id, tenant_id=tenant_id, project_id=project_id, flow_group_id=group_id,
        version_group_id=group_id, name="seed-flow", version=1, core_version="1.4.1", settings={},
        parameters=[], archived=False,
        storage={"type": "Docker", "image_name": "seed", "image_tag": "latest", "registry_url": None,
                 "flows": {"seed-flow": "/opt/prefect/flows/seed-flow.prefect"}, "prefect_version": "1.4.1",
                 "__version__": "1.4.1"},
        run_config={"type": "DockerRun", "labels": list(labels), "__version__": "1.4.1"}, created=now))
    conn.execute(db.task.insert().values(id=task_id, tenant_id=tenant_id, flow_id=flow_id, slug="say-1",
                                         name="say", created=now))
    return project_id, flow_id, task_id


def sequential_ids() -> Iterator[str]:
    """Valid version-4 UUID strings with a random prefix and a counter in the last 48 bits: each seed call's
    ids are unique, and they arrive in key order, so every primary-key and foreign-key index grows at its end
    instead of touching a random page per row (twice as fast at a million runs on PostgreSQL)."""
    base = uuid.uuid4().int & ~NODE_MASK
    for i in itertools.count():
        yield str(uuid.UUID(int=base | (i & NODE_MASK)))


def _rows(n: int, due: int, tenant_id: str, flow_id: str, labels: list[str]) -> Iterator[Row]:
    """flow_run rows in `RUN_COLUMNS` order; datetimes naive UTC (what `db.UTCDateTime` stores)."""
    now = db.utcnow().astimezone(UTC).replace(tzinfo=None)
    labels_json = json.dumps(labels)
    ids = sequential_ids()
    for i in range(n):
        start = now - timedelta(seconds=i % 86_400 + 1)
        if i >= n - due:
            state = scheduled_state(start.replace(tzinfo=UTC), "Flow run scheduled.")
            yield (next(ids), tenant_id, flow_id, f"seed-{i}", 1, "Scheduled", json.dumps(state),
                   start, now, state["message"], start, None, None, None, EMPTY_JSON, EMPTY_JSON,
                   labels_json, None, None, None, 0, now)
        else:
            yield (next(ids), tenant_id, flow_id, f"seed-{i}", 4, "Success", SUCCESS_JSON,
                   None, now, SUCCESS["message"], start, None, now, None, EMPTY_JSON, EMPTY_JSON,
                   labels_json, None, None, None, 0, now)


def _task_rows(runs: list[Row], task_id: str, ids: Iterator[str]) -> list[Row]:
    """One task run per flow run, in `TASK_RUN_COLUMNS` order."""
    return [(next(ids), r[1], r[0], task_id, -1, 0 if r[5] == "Scheduled" else 2,
             "Pending" if r[5] == "Scheduled" else "Success",
             PENDING_JSON, r[21]) for r in runs]


def seed_flow_runs(engine: Engine, n: int, *, due: int = 50, labels: Sequence[str] = (),
                   tenant_id: str | None = None, task_runs: bool = True) -> dict[str, Any]:
    """Insert `n` flow runs (the last `due` Scheduled with a past start time) plus one task run each."""
    due = min(due, n)
    with db.write_tx(engine) as conn:
        tenant_id = tenant_id or conn.execute(select(db.tenant.c.id).order_by(db.tenant.c.created)).scalar()
        assert tenant_id is not None, "run migrations / ensure_default_tenant first"
        project_id, flow_id, task_id = _flow(conn, tenant_id, labels)
        writer = _Writer(conn)
        batch: list[Row] = []
        for row in _rows(n, due, tenant_id, flow_id, sorted(labels)):
            batch.append(row)
            if len(batch) >= BATCH:
                writer.write(batch, task_id if task_runs else None)
                batch = []
        if batch:
            writer.write(batch, task_id if task_runs else None)
    return {"tenant_id": tenant_id, "project_id": project_id, "flow_id": flow_id, "runs": n, "due": due}


def seed_logs(engine: Engine, per_run: int, *, flow_id: str | None = None, message: str = LOG_MESSAGE) -> int:
    """`per_run` log lines for each flow run (of `flow_id`, or all), written like the runs: the runs are read
    back in key order a batch at a time, so the log's indexes also grow at their end. Returns the count."""
    written, last, ids = 0, "", sequential_ids()
    fr = db.flow_run
    of_flow = [fr.c.flow_id == flow_id] if flow_id else []
    while True:  # a transaction per batch keeps SQLite's WAL from growing to the size of all the lines
        with db.write_tx(engine) as conn:
            runs = conn.execute(select(fr.c.id, fr.c.tenant_id, fr.c.state_timestamp)
                                .where(fr.c.id > last, *of_flow).order_by(fr.c.id)
                                .limit(BATCH * 5 // max(per_run, 1) + 1)).all()
            if not runs:
                return written
            rows = [(next(ids), tenant, run_id, None, at.replace(tzinfo=None) + timedelta(milliseconds=k),
                     "prefect.CloudTaskRunner", "INFO", message, None, at.replace(tzinfo=None))
                    for run_id, tenant, at in runs for k in range(per_run)]
            _Writer(conn)._table("log", LOG_COLUMNS, rows)
        written, last = written + len(rows), runs[-1][0]


def analyze(engine: Engine) -> None:
    """Refresh the planner's statistics after a bulk load (PostgreSQL's autovacuum would do it later)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


class _Writer:
    """Writes row tuples through the driver of the transaction's own connection: COPY or executemany."""

    def __init__(self, conn: Connection) -> None:
        self.raw = conn.connection.dbapi_connection
        self.postgres = conn.dialect.name == "postgresql"
        self.task_ids = sequential_ids()
        if self.postgres:
            _skip_foreign_key_checks(conn)
        else:
            conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")

    def write(self, runs: list[Row], task_id: str | None) -> None:
        self._table("flow_run", RUN_COLUMNS, runs)
        if task_id is not None:
            self._table("task_run", TASK_RUN_COLUMNS, _task_rows(runs, task_id, self.task_ids))

    def _table(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        assert self.raw is not None
        cursor = self.raw.cursor()
        try:
            if self.postgres:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" for _ in columns)
                cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                                   [_sqlite_row(row) for row in rows])
        finally:
            cursor.close()


def _skip_foreign_key_checks(conn: Connection) -> None:
    """Every row refers to the flow, tenant and flow run written in this very transaction, so PostgreSQL's
    per-row foreign-key triggers (most of COPY's time) are switched off for it when the role may do so
    (a superuser, as in benchmarks and tests); otherwise the checks run."""
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
    except DBAPIError:
        savepoint.rollback()
    else:
        savepoint.commit()


def _sqlite_row(row: Row) -> Row:
    """Datetimes as SQLAlchemy's SQLite DATETIME text (always with microseconds), the rest as it is."""
    return tuple(v.isoformat(sep=" ", timespec="microseconds") if type(v) is datetime else v for v in row)
