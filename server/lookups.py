"""`local-agent-server runs` and `logs`: what happened, read straight from the database, no GraphQL needed.

Both open their own engine on the server's database and only read: SQLite connections are `query_only`,
PostgreSQL transactions `READ ONLY`, so a look-up can never change what a running server sees. Unlike
`token create` they do not migrate either: a database that is not at this code's schema revision is refused
in one line instead.

`runs` is one `ORDER BY scheduled_start_time DESC, id DESC LIMIT n` (newest first, so the scheduler's
upcoming runs lead). `logs --follow` polls by the server's insert time (`log.created`) with an overlap and the
ids already printed, because a run's log timestamps are the flow container's, sent late and in batches.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection, Engine, Select, event, func, literal, select, type_coerce
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from server import db
from server.states import FINISHED_STATES, STATE_TYPES

LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}
POLL_S = 1.0
QUIET_S = 2.0
# How far behind the newest `created` seen a poll looks again: a write transaction that started earlier (or a
# replica with a slightly different clock) may commit rows older than what was already printed.
FOLLOW_OVERLAP = timedelta(seconds=10)
NAME_CHARS = 40
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
ANSI = {"green": "32", "red": "31", "yellow": "33", "blue": "34", "cyan": "36", "dim": "2"}
STATE_COLOURS = {
    **dict.fromkeys(("Success", "Cached", "Skipped", "Mapped", "Finished"), "green"),
    **dict.fromkeys(("Failed", "TimedOut", "TriggerFailed", "ValidationFailed", "ClientFailed"), "red"),
    **dict.fromkeys(("Cancelled", "Cancelling"), "yellow"), "Running": "blue",
    **dict.fromkeys(("Submitted", "Scheduled"), "cyan"),
}
LEVEL_COLOURS = {"DEBUG": "dim", "WARNING": "yellow", "WARN": "yellow", "ERROR": "red", "CRITICAL": "red"}
CANONICAL_STATES = {name.lower(): name for name in STATE_TYPES}


class LookupFailed(ValueError):
    """A look-up that cannot answer; the message is one line for the user (the CLI prints it, exit 1)."""


@dataclass(frozen=True)
class RunQuery:
    states: Sequence[str] = ()
    flow: str | None = None
    labels: Sequence[str] = ()
    limit: int = 20
    upcoming: int = 3  # without a state filter: at most this many runs not due yet, so the past shows


# ---------------------------------------------------------------- the database, read-only


def open_reader(database_url: str, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine that only reads, on a database at this code's schema; never creates a SQLite file."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database).expanduser()
        if not path.exists():
            raise LookupFailed(f"no database at {path}: start the server (`local-agent-server start`) or "
                               "pass --database-url / LOCAL_AGENT_SERVER_DATABASE_URL")
    engine = db.create_db_engine(database_url, pool_size=1, busy_timeout_ms=busy_timeout_ms)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_query_only)
    try:
        _check_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _sqlite_query_only(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA query_only = ON")
    cursor.close()


def _check_schema(engine: Engine) -> None:
    from server import migrate

    found, head = migrate.current(engine), migrate.head()
    if found is None:
        raise LookupFailed(f"database {db.shown_url(engine.url)} has no schema yet: `local-agent-server db "
                           "upgrade` (or `start`) creates it")
    if found != head:
        raise LookupFailed(f"database {db.shown_url(engine.url)} is at schema revision {found}, this "
                           f"local-agent-server reads {head}: `local-agent-server db upgrade` if it is older")


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    with db.read_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        yield conn


# ---------------------------------------------------------------- runs


def state_name(text: str) -> str:
    """A state as typed (any case) -> its canonical name; argparse shows the ValueError's text."""
    try:
        return CANONICAL_STATES[text.lower()]
    except KeyError:
        raise ValueError(f"unknown state {text!r} (one of {', '.join(sorted(STATE_TYPES))})") from None


def runs_statement(query: RunQuery, dialect: str) -> Select[Any]:
    fr, fl, ag = db.flow_run, db.flow, db.agent
    stmt = (
        select(fr.c.id, fr.c.name, fr.c.state, fr.c.scheduled_start_time, fr.c.start_time, fr.c.end_time,
               fr.c.labels, fr.c.auto_scheduled, fr.c.agent_id, fl.c.name.label("flow_name"),
               fl.c.version.label("flow_version"), ag.c.name.label("agent_name"))
        .join(fl, fl.c.id == fr.c.flow_id)
        .outerjoin(ag, ag.c.id == fr.c.agent_id)
        .order_by(fr.c.scheduled_start_time.desc(), fr.c.id.desc())
        .limit(query.limit)
    )
    if query.states:
        stmt = stmt.where(fr.c.state.in_(list(query.states)))
    if query.flow is not None:
        stmt = stmt.where(fl.c.name == query.flow)
    for label in query.labels:
        stmt = stmt.where(_has_label(label, dialect))
    return stmt


def _has_label(label: str, dialect: str) -> Any:
    labels = db.flow_run.c.labels
    if dialect == "postgresql":
        return type_coerce(labels, postgresql.JSONB).contains([label])
    each = func.json_each(labels).table_valued("value")
    return select(literal(1)).select_from(each).where(each.c.value == label).exists()


def list_runs(engine: Engine, query: RunQuery, now: datetime | None = None) -> list[dict[str, Any]]:
    """Newest scheduled start first. Without a state filter, runs not due yet are at most `upcoming` of
    them (the soonest): a scheduler keeps many runs created ahead, and they must not hide what happened."""
    fr = db.flow_run
    with reading(engine) as conn:
        if query.states:
            rows = conn.execute(runs_statement(query, conn.dialect.name)).mappings().all()
            return [dict(row) for row in rows]
        now = now or db.utcnow()
        ahead = fr.c.scheduled_start_time > now
        not_due = fr.c.start_time.is_(None) & ahead
        soonest = (runs_statement(replace(query, limit=min(query.upcoming, query.limit)), conn.dialect.name)
                   .where(not_due).order_by(None).order_by(fr.c.scheduled_start_time, fr.c.id))
        upcoming = list(reversed(conn.execute(soonest).mappings().all())) if query.upcoming else []
        past = (runs_statement(replace(query, limit=query.limit - len(upcoming)), conn.dialect.name)
                .where(~not_due))
        rows = [*upcoming, *conn.execute(past).mappings().all()]
    return [dict(row) for row in rows]


def runs_json(rows: Sequence[dict[str, Any]], now: datetime) -> str:
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return json.dumps([{
        "id": r["id"], "name": r["name"], "flow_name": r["flow_name"], "flow_version": r["flow_version"],
        "state": r["state"], "scheduled_start_time": iso(r["scheduled_start_time"]),
        "start_time": iso(r["start_time"]), "end_time": iso(r["end_time"]),
        "duration_s": _duration_s(r, now), "agent_id": r["agent_id"], "agent_name": r["agent_name"],
        "labels": r["labels"] or [], "auto_scheduled": bool(r["auto_scheduled"]),
    } for r in rows], indent=2)


RUN_HEADERS = ("ID", "NAME", "FLOW", "STATE", "SCHEDULED (UTC)", "STARTED", "ENDED", "DURATION", "AGENT",
               "LABELS")


def runs_table(rows: Sequence[dict[str, Any]], now: datetime, colour: bool) -> str:
    """One aligned line per run; the state coloured when `colour` (a terminal)."""
    if not rows:
        return "no flow runs"
    cells = [RUN_HEADERS] + [_run_cells(r, now) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(RUN_HEADERS))]
    state_column = RUN_HEADERS.index("STATE")
    lines = []
    for number, line in enumerate(cells):
        padded = [text.ljust(width) for text, width in zip(line, widths, strict=True)]
        if colour and number > 0:
            padded[state_column] = paint(padded[state_column], STATE_COLOURS.get(line[state_column]))
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _run_cells(r: dict[str, Any], now: datetime) -> tuple[str, ...]:
    name = _short(r["name"] or "-")
    if r["auto_scheduled"]:
        name += " (schedule)"
    flow = f"{_short(r['flow_name'])} (v{r['flow_version']})"
    duration = _duration_s(r, now)
    return (r["id"], name, flow, r["state"] or "-", _time(r["scheduled_start_time"]), _time(r["start_time"]),
            _time(r["end_time"]), "-" if duration is None else human_duration(duration),
            _short(r["agent_name"] or (r["agent_id"] or "-")[:8]),
            _printable(",".join(str(label) for label in r["labels"] or [])) or "-")


def _duration_s(r: dict[str, Any], now: datetime) -> float | None:
    """End - start; for a run still going, the time so far."""
    start, end = r["start_time"], r["end_time"]
    if start is None:
        return None
    if end is None:
        if r["state"] in FINISHED_STATES:
            return None
        end = now
    elapsed: timedelta = end - start
    return round(max(elapsed.total_seconds(), 0.0), 3)


def human_duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str) -> str:
    text = _printable(text)
    return text if len(text) <= NAME_CHARS else text[:NAME_CHARS - 1] + "…"


def _printable(text: str, keep_newlines: bool = False) -> str:
    """Control characters (a flow's name or log may carry terminal escapes) shown as `?`."""
    if keep_newlines:
        return CONTROL.sub("?", text)
    return CONTROL.sub("?", text.replace("\n", " ").replace("\t", " "))


def paint(text: str, colour: str | None) -> str:
    return text if colour is None else f"\x1b[{ANSI[colour]}m{text}\x1b[0m"


# ---------------------------------------------------------------- logs


def level_name(text: str) -> str:
    upper = text.upper()
    if upper not in LEVELS:
        raise ValueError(f"unknown level {text!r} (one of DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return upper


def levels_from(minimum: str | None) -> list[str] | None:
    """The level names at or above `minimum` (None: every log, whatever its level)."""
    if minimum is None:
        return None
    return [name for name, rank in LEVELS.items() if rank >= LEVELS[minimum]]


def _log_statement(run_id: str, levels: list[str] | None, since: datetime | None) -> Select[Any]:
    lg = db.log
    stmt = (select(lg.c.id, lg.c.timestamp, lg.c.level, lg.c.name, lg.c.message, lg.c.created)
            .where(lg.c.flow_run_id == run_id).order_by(lg.c.timestamp, lg.c.id))
    if levels is not None:
        stmt = stmt.where(lg.c.level.in_(levels))
    if since is not None:
        stmt = stmt.where(lg.c.created >= since)
    return stmt.execution_options(yield_per=1000)  # fetched in batches, not in one result set


def _run_state(conn: Connection, run_id: str) -> tuple[bool, str | None]:
    row = conn.execute(select(db.flow_run.c.state).where(db.flow_run.c.id == run_id)).first()
    return (False, None) if row is None else (True, row.state)


def log_line(row: Any, colour: bool) -> str:
    stamp = row.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    level = (row.level or "-").ljust(8)
    if colour:
        level = paint(level, LEVEL_COLOURS.get((row.level or "").upper()))
    message = _printable(row.message or "", keep_newlines=True)
    return f"{stamp} {level} {_printable(row.name or '-')} | {message}"


@dataclass
class LogFollower:
    """Prints a run's logs; with `follow`, keeps polling until the run is finished and quiet for `quiet_s`."""

    engine: Engine
    run_id: str
    out: TextIO
    levels: list[str] | None = None
    colour: bool = False
    poll_s: float = POLL_S
    quiet_s: float = QUIET_S
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._seen: dict[str, datetime] = {}
        self._newest: datetime | None = None
        self._printed = 0

    def run(self, follow: bool) -> None:
        exists, state = self._print_new()
        if not exists:
            raise LookupFailed(f"flow run {self.run_id} not found")
        last_line = self.clock()
        while follow:
            if state in FINISHED_STATES and self.clock() - last_line >= self.quiet_s:
                return
            self.sleep(self.poll_s)
            exists, state = self._print_new()
            if not exists:
                raise LookupFailed(f"flow run {self.run_id} no longer exists (deleted)")
            if self._printed:
                last_line = self.clock()

    def _print_new(self) -> tuple[bool, str | None]:
        """One read transaction: the run's state first (so a finished state implies its logs so far are
        visible), then every log not printed yet, in time order; printed after the transaction ended, so a
        slow reader (a pager) never holds the database's snapshot."""
        since = None if self._newest is None else self._newest - FOLLOW_OVERLAP
        lines: list[str] = []
        with reading(self.engine) as conn:
            exists, state = _run_state(conn, self.run_id)
            if not exists:
                return False, None
            for row in conn.execute(_log_statement(self.run_id, self.levels, since)):
                if row.id in self._seen:
                    continue
                self._seen[row.id] = row.created
                self._newest = row.created if self._newest is None else max(self._newest, row.created)
                lines.append(log_line(row, self.colour))
        for line in lines:
            print(line, file=self.out)
        self._printed = len(lines)
        self.out.flush()
        self._forget_old()
        return True, state

    def _forget_old(self) -> None:
        if self._newest is None:
            return
        cutoff = self._newest - FOLLOW_OVERLAP
        self._seen = {log_id: created for log_id, created in self._seen.items() if created >= cutoff}
