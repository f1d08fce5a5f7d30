"""Bulk seeding for benchmarks and tests: N flow runs (mostly finished, `due` of them Scheduled and due).

    from server.seed import seed_flow_runs
    info = seed_flow_runs(engine, 100_000, due=50, labels=["bench"])

or `local-agent-server seed --runs 100000 --due 50 --database-url sqlite:///...`. Rows go in with
executemany in large batches inside one transaction (about 2-4 s for 100,000 runs on SQLite), through the
same tables and indexes the server uses, so measurements reflect the real queue query.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select

from server import db
from server.states import scheduled_state

BATCH = 10_000
SUCCESS = {"type": "Success", "message": "All reference tasks succeeded.", "context": {}, "cached_inputs": {},
           "_result": {"type": "Result", "location": None, "__version__": "1.4.1"}, "__version__": "1.4.1"}


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


def _rows(n: int, due: int, tenant_id: str, flow_id: str, labels: list[str]) -> Iterator[dict[str, Any]]:
    now = db.utcnow()
    for i in range(n):
        scheduled = i >= n - due
        start = now - timedelta(seconds=i % 86_400 + 1)
        state = scheduled_state(start, "Flow run scheduled.") if scheduled else SUCCESS
        yield {
            "id": db.new_id(), "tenant_id": tenant_id, "flow_id": flow_id, "name": f"seed-{i}",
            "version": 1 if scheduled else 4, "state": state["type"], "serialized_state": state,
            "state_start_time": start if scheduled else None, "state_timestamp": now,
            "state_message": state["message"], "scheduled_start_time": start, "start_time": None,
            "end_time": None if scheduled else now, "heartbeat": None, "parameters": {}, "context": {},
            "labels": labels, "run_config": None, "agent_id": None, "idempotency_key": None,
            "times_resurrected": 0, "created": now,
        }


def seed_flow_runs(engine: Engine, n: int, *, due: int = 50, labels: Sequence[str] = (),
                   tenant_id: str | None = None, task_runs: bool = True) -> dict[str, Any]:
    """Insert `n` flow runs (the last `due` Scheduled with a past start time) plus one task run each."""
    due = min(due, n)
    with db.write_tx(engine) as conn:
        tenant_id = tenant_id or conn.execute(select(db.tenant.c.id).order_by(db.tenant.c.created)).scalar()
        assert tenant_id is not None, "run migrations / ensure_default_tenant first"
        project_id, flow_id, task_id = _flow(conn, tenant_id, labels)
        batch: list[dict[str, Any]] = []
        for row in _rows(n, due, tenant_id, flow_id, sorted(labels)):
            batch.append(row)
            if len(batch) >= BATCH:
                _insert(conn, batch, task_id, task_runs)
                batch = []
        if batch:
            _insert(conn, batch, task_id, task_runs)
    return {"tenant_id": tenant_id, "project_id": project_id, "flow_id": flow_id, "runs": n, "due": due}


def _insert(conn: Any, rows: list[dict[str, Any]], task_id: str, task_runs: bool) -> None:
    conn.execute(db.flow_run.insert(), rows)
    if task_runs:
        conn.execute(db.task_run.insert(), [{
            "id": db.new_id(), "tenant_id": r["tenant_id"], "flow_run_id": r["id"], "task_id": task_id,
            "map_index": -1, "version": 0 if r["state"] == "Scheduled" else 2,
            "state": "Pending" if r["state"] == "Scheduled" else "Success",
            "serialized_state": {"type": "Pending", "message": "Task run created"}, "created": r["created"],
        } for r in rows])
