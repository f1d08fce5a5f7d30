"""State payloads and the state-update rules of Prefect Server (contract §4.3-§4.5).

Every update is a compare-and-set on the version that was read (`UPDATE ... WHERE id=:id AND version=:read`),
so two writers can never both move a run from the same version - in one process, across server processes
sharing a SQLite file, or on PostgreSQL. A `Submitted` update also requires `state <> 'Submitted'`: that is
exactly-once claiming. The client-supplied version is only enforced for Submitted/Running/Cancelling (never
for Failed: the DockerAgent sends a stale version there, §7 item 9).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, update

from server import db
from server.errors import ApiError, VersionLockError

STATE_TYPES = frozenset({
    "Pending", "Scheduled", "Paused", "Resume", "Retrying", "Queued", "Submitted", "ClientFailed", "Running",
    "Cancelling", "Success", "Skipped", "Mapped", "Cached", "Failed", "TimedOut", "TriggerFailed",
    "ValidationFailed", "Cancelled", "Looped", "Finished",
})
QUEUE_STATES = ("Scheduled", "Paused", "Queued", "Resume", "Retrying")
RUNNING_STATES = frozenset({"Running", "Cancelling"})
LOCKED_STATES = frozenset({"Submitted", "Running", "Cancelling"})
FINISHED_STATES = frozenset({
    "Success", "Skipped", "Mapped", "Cached", "Failed", "TimedOut", "TriggerFailed", "ValidationFailed",
    "Cancelled", "Looped", "Finished",
})
# State classes whose constructor sets start_time = now when none is given (Paused keeps None on purpose).
NOW_BY_DEFAULT = frozenset({"Scheduled", "Resume", "Retrying", "Queued"})
MAX_STATE_BYTES = 1_000_000
CAS_ATTEMPTS = 5


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 -> aware UTC datetime (naive means UTC); None or garbage -> None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def validate_state(state: Any) -> dict[str, Any]:
    """What StateSchema().load would reject, rejected here with a clear message."""
    if not isinstance(state, dict):
        raise ApiError("Invalid state: expected a JSON object.")
    if sys.getsizeof(json.dumps(state)) > MAX_STATE_BYTES:
        raise ApiError("State payload is too large.")
    kind = state.get("type")
    if not isinstance(kind, str) or not kind:
        raise ApiError("Invalid state: the 'type' field is required.")
    if kind not in STATE_TYPES:
        raise ApiError(f"Invalid state: unsupported state type {kind[:64]!r}.")
    if kind in NOW_BY_DEFAULT and not state.get("start_time"):
        # Prefect Server stores `StateSchema().load(state).serialize()`; these classes default to now.
        state = {**state, "start_time": db.utcnow().isoformat()}
    return state


def scheduled_state(start_time: datetime, message: str) -> dict[str, Any]:
    """The minimal Scheduled payload the 1.4.1 client loads (§4.8)."""
    return {
        "type": "Scheduled", "message": message, "start_time": start_time.isoformat(), "context": {},
        "cached_inputs": {}, "_result": {"type": "NoResultType", "__version__": "1.4.1"},
        "__version__": "1.4.1",
    }


@dataclass(frozen=True)
class Change:
    """A state change to write onto one run row."""

    state: dict[str, Any]
    version: int | None = None
    agent_id: str | None = None


def _state_columns(state: dict[str, Any], now: datetime) -> dict[str, Any]:
    message = state.get("message")
    return {
        "state": state["type"],
        "serialized_state": state,
        "state_start_time": parse_time(state.get("start_time")),
        "state_timestamp": now,
        "state_message": message if isinstance(message, str) else None,
    }


def _history_row(
    run_kind: str, row: Any, state: dict[str, Any], version: int, now: datetime
) -> dict[str, Any]:
    columns = _state_columns(state, now)
    return {
        "id": db.new_id(), "tenant_id": row.tenant_id, f"{run_kind}_id": row.id, "version": version,
        "state": columns["state"], "serialized_state": state, "start_time": columns["state_start_time"],
        "message": columns["state_message"], "timestamp": now,
    }


def _check_lock(kind: str, run_id: str, row: Any, change: Change) -> None:
    new_type = change.state["type"]
    if new_type == "Submitted" and row.state == "Submitted":
        raise VersionLockError("State update failed: this run has already been submitted.")
    if kind == "flow" and row.state in FINISHED_STATES and new_type in LOCKED_STATES:
        raise ApiError(
            f"State update failed for flow run ID {run_id}: it is finished ({row.state}) and cannot become "
            f"{new_type}; schedule it again first (e.g. Scheduled, as a restart does).",
            "STATE_UPDATE_FAILED",
        )
    if change.version is not None and new_type in LOCKED_STATES and change.version != row.version:
        raise VersionLockError(
            f"State update failed: version mismatch for {kind} run ID {run_id} "
            f"(provided {change.version}, current {row.version})."
        )


def _extra_flow_columns(row: Any, change: Change, now: datetime) -> dict[str, Any]:
    new_type = change.state["type"]
    values: dict[str, Any] = {}
    if new_type in ("Submitted", "Running"):
        values["heartbeat"] = now
    if new_type == "Submitted" and change.agent_id:
        values["agent_id"] = change.agent_id
    if new_type == "Running" and row.start_time is None:
        values["start_time"] = now
    if new_type in FINISHED_STATES:
        values["end_time"] = now
    return values


def write_state(conn: Connection, table: Table, kind: str, run_id: str, change: Change, scope: Any) -> Any:
    """Compare-and-set one run's state; returns the row as it was before. Raises on a lost race or lock."""
    for _ in range(CAS_ATTEMPTS):
        row = conn.execute(select(table).where(table.c.id == run_id, scope)).first()
        if row is None:
            raise ApiError(f"State update failed for {kind} run ID {run_id}: not found.", "NOT_FOUND")
        _check_lock(kind, run_id, row, change)
        state = change.state
        if kind == "task":
            state = _carry_cached_inputs(row, state)
        now = db.utcnow()
        values = {**_state_columns(state, now), "version": row.version + 1}
        if kind == "flow":
            values.update(_extra_flow_columns(row, change, now))
        stmt = update(table).where(table.c.id == run_id, table.c.version == row.version)
        if state["type"] == "Submitted":
            stmt = stmt.where(table.c.state.is_distinct_from("Submitted"))
        if conn.execute(stmt.values(**values)).rowcount == 1:
            history = db.flow_run_state if kind == "flow" else db.task_run_state
            entry = _history_row(f"{kind}_run", row, state, row.version + 1, now)
            conn.execute(history.insert().values(**entry))
            return row
        if change.version is not None and state["type"] in LOCKED_STATES:
            raise VersionLockError(f"State update failed: {kind} run ID {run_id} was updated concurrently.")
    raise ApiError(f"State update failed for {kind} run ID {run_id}: too much contention, try again.")


def cancel_task_runs(conn: Connection, rows: list[Any], state: dict[str, Any]) -> None:
    """The same state onto many task runs read (and row-locked) in this transaction: two statements.

    The cancel cascade's bulk form of `write_state`: one UPDATE executed for all rows (still conditional
    on each row's version) and one INSERT of their history rows.
    """
    if not rows:
        return
    tr, now = db.task_run, db.utcnow()
    stmt = update(tr).where(tr.c.id == bindparam("b_id"), tr.c.version == bindparam("b_version")).values(
        state=bindparam("b_state"), serialized_state=bindparam("b_serialized", type_=db.JsonType),
        state_start_time=bindparam("b_start", type_=db.UTCDateTime), state_timestamp=now,
        state_message=bindparam("b_message"), version=bindparam("b_version") + 1)
    params, history = [], []
    for row in rows:
        new = _carry_cached_inputs(row, state)
        columns = _state_columns(new, now)
        params.append({"b_id": row.id, "b_version": row.version, "b_state": columns["state"],
                       "b_serialized": new, "b_start": columns["state_start_time"],
                       "b_message": columns["state_message"]})
        history.append(_history_row("task_run", row, new, row.version + 1, now))
    conn.execute(stmt, params)
    conn.execute(db.task_run_state.insert(), history)


def _carry_cached_inputs(row: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Prefect Server keeps the old cached_inputs when the new state has none (§4.5)."""
    old = row.serialized_state if isinstance(row.serialized_state, dict) else {}
    if not state.get("cached_inputs") and old.get("cached_inputs"):
        return {**state, "cached_inputs": old["cached_inputs"]}
    return state


def set_flow_run_state(conn: Connection, run_id: str, change: Change, scope: Any) -> None:
    """One element of set_flow_run_states.

    A Cancelled state also cancels the run's unfinished task runs: the caller does that after this
    transaction commits, in batches (`server.batches.cascade_cancelled`), so it never holds the write lock
    for long; the run's own state is written first, so a retried cancel finds it and finishes the cascade.
    """
    write_state(conn, db.flow_run, "flow", run_id, change, scope)


def set_task_run_state(conn: Connection, task_run_id: str, change: Change, scope: Any) -> None:
    """One element of set_task_run_states: Running/Cancelling needs a Running flow run (§4.5)."""
    if change.state["type"] in RUNNING_STATES:
        row = conn.execute(
            select(db.task_run.c.flow_run_id, db.flow_run.c.state)
            .join(db.flow_run, db.flow_run.c.id == db.task_run.c.flow_run_id)
            .where(db.task_run.c.id == task_run_id, scope)
        ).first()
        if row is not None and row.state != "Running":
            raise ApiError(
                f"State update failed for task run ID {task_run_id}: provided a running state but associated "
                f"flow run {row.flow_run_id} is not in a running state.",
                "STATE_UPDATE_FAILED",
            )
    write_state(conn, db.task_run, "task", task_run_id, change, scope)
