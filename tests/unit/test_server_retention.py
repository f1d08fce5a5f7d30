"""Retention: finished runs older than the cutoff go with every row that hangs off them, in bounded batches;
unfinished, recent and restarted runs stay. On both stores, and through a real server process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from server import db, retention
from tests.support import api
from tests.support.server_fixtures import InProcessServer, start_server

WRITE_LOGS = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"
CHILD_TABLES = (db.task_run, db.flow_run_state, db.log)


@pytest.fixture
def store(tmp_path: Path, database_url: str) -> Iterator[InProcessServer]:
    handle = InProcessServer(tmp_path, database_url=database_url, retention_days=1.0, retention_batch_runs=2)
    yield handle
    handle.close()


def make_run(server: InProcessServer, flow_id: str, final: str | None, *, age_days: float = 0) -> str:
    """A run with a task run, a log line and a state history, ending in `final` set `age_days` ago."""
    run_id = api.create_flow_run(server, flow_id)
    api.call(server, WRITE_LOGS, {"input": {"logs": [{"flow_run_id": run_id, "message": "hello"}]}})
    task_run = api.flow_run(server, run_id)["task_runs"][0]["id"]
    api.set_task_run_state(server, task_run, {"type": "Success"})
    if final is not None:
        api.set_flow_run_state(server, run_id, {"type": final})
    if age_days:
        with db.write_tx(server.services.engine) as conn:
            conn.execute(update(db.flow_run).where(db.flow_run.c.id == run_id)
                         .values(state_timestamp=db.utcnow() - timedelta(days=age_days)))
    return run_id


def rows_of(server: InProcessServer, run_id: str) -> dict[str, int]:
    """How many rows each table holds for the run (its task runs' states counted too)."""
    with db.read_tx(server.services.engine) as conn:
        counts = {t.name: conn.execute(select(func.count()).select_from(t).where(t.c.flow_run_id == run_id))
                  .scalar_one() for t in CHILD_TABLES}
        counts["flow_run"] = conn.execute(select(func.count()).where(db.flow_run.c.id == run_id)).scalar_one()
        task_runs = select(db.task_run.c.id).where(db.task_run.c.flow_run_id == run_id)
        counts["task_run_state"] = conn.execute(select(func.count()).select_from(db.task_run_state)
                                                .where(db.task_run_state.c.task_run_id.in_(task_runs))
                                                ).scalar_one()
    return counts


def test_old_finished_runs_go_with_all_their_rows_and_the_rest_stays(store: InProcessServer) -> None:
    flow_id = api.register_docker_flow(store, name="f", image_name="i", image_tag="1")
    expired = [make_run(store, flow_id, final, age_days=2) for final in ("Success", "Failed", "Cancelled")]
    kept = [make_run(store, flow_id, "Success", age_days=0.5),
            make_run(store, flow_id, "Running", age_days=5), make_run(store, flow_id, None, age_days=5)]
    before = {run_id: rows_of(store, run_id) for run_id in expired + kept}
    assert all(min(counts.values()) >= 1 for counts in before.values())  # each table holds rows to delete

    assert retention.sweep_if_due(store.services) == 3

    for run_id in expired:
        assert set(rows_of(store, run_id).values()) == {0}, run_id
    for run_id in kept:
        assert rows_of(store, run_id) == before[run_id], run_id


def test_deletion_goes_in_batches_and_stops_when_asked(store: InProcessServer) -> None:
    flow_id = api.register_docker_flow(store, name="f", image_name="i", image_tag="1")
    runs = [make_run(store, flow_id, "Success", age_days=3) for _ in range(5)]
    cutoff = db.utcnow() - timedelta(days=1)
    assert retention.delete_batch(store.services, cutoff, 2) == 2  # retention_batch_runs
    assert retention.sweep(store.services, cutoff, stopping=lambda: True) == 2  # one batch, then it stops
    assert retention.sweep(store.services, cutoff) == 1
    assert sum(rows_of(store, run_id)["flow_run"] for run_id in runs) == 0


def test_a_pass_out_of_time_goes_on_at_the_next_round(store: InProcessServer) -> None:
    flow_id = api.register_docker_flow(store, name="f", image_name="i", image_tag="1")
    for _ in range(5):
        make_run(store, flow_id, "Success", age_days=3)
    now = [0.0]

    def clock() -> float:  # every reading a minute later: one batch per pass, then its time is up
        now[0] += 60.0
        return now[0]

    assert store.services.settings.lease_ttl_s / 3 < 120  # the budget is spent after the first batch
    deleted = [retention.sweep_if_due(store.services, clock=clock) for _ in range(4)]
    assert deleted == [2, 2, 1, 0]


def test_a_restarted_run_is_kept(store: InProcessServer) -> None:
    flow_id = api.register_docker_flow(store, name="f", image_name="i", image_tag="1")
    run_id = make_run(store, flow_id, "Failed", age_days=3)
    api.set_flow_run_state(store, run_id, {"type": "Scheduled"})  # a restart sets a new state timestamp
    assert retention.sweep_if_due(store.services) == 0
    assert rows_of(store, run_id)["flow_run"] == 1


def test_passes_are_spaced_by_the_interval_and_off_by_default(tmp_path: Path) -> None:
    now = [1000.0]
    with_retention = InProcessServer(tmp_path / "a", retention_days=1.0, retention_interval_s=60)
    without = InProcessServer(tmp_path / "b")
    try:
        flow_id = api.register_docker_flow(with_retention, name="f", image_name="i", image_tag="1")
        make_run(with_retention, flow_id, "Success", age_days=2)
        assert retention.sweep_if_due(with_retention.services, clock=lambda: now[0]) == 1
        make_run(with_retention, flow_id, "Success", age_days=2)
        now[0] += 59
        assert retention.sweep_if_due(with_retention.services, clock=lambda: now[0]) == 0
        now[0] += 2
        assert retention.sweep_if_due(with_retention.services, clock=lambda: now[0]) == 1
        other = api.register_docker_flow(without, name="f", image_name="i", image_tag="1")
        make_run(without, other, "Success", age_days=400)
        assert retention.sweep_if_due(without.services) == 0
    finally:
        with_retention.close()
        without.close()


def test_a_server_process_with_retention_deletes_expired_runs_in_its_sweep(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"LOCAL_AGENT_SERVER_RETENTION_DAYS": "1",
                                         "LOCAL_AGENT_SERVER_RETENTION_INTERVAL_S": "0.2",
                                         "LOCAL_AGENT_SERVER_ZOMBIES_ENABLED": "false",
                                         "LOCAL_AGENT_SERVER_ZOMBIE_CHECK_INTERVAL_S": "0.2"})
    try:
        flow_id = api.register_docker_flow(server, name="f", image_name="i", image_tag="1")
        old, recent = api.create_flow_run(server, flow_id), api.create_flow_run(server, flow_id)
        for run_id in (old, recent):
            api.set_flow_run_state(server, run_id, {"type": "Success"})
        engine = db.create_db_engine(server.database_url)
        try:
            with db.write_tx(engine) as conn:
                conn.execute(update(db.flow_run).where(db.flow_run.c.id == old)
                             .values(state_timestamp=db.utcnow() - timedelta(days=2)))
            deadline = time.monotonic() + 20
            while runs_left(server, old) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert runs_left(server, old) == [] and runs_left(server, recent) == [recent]
        finally:
            engine.dispose()
    finally:
        server.stop()
    assert "retention: deleted 1 flow runs" in server.log_path.read_text()


def runs_left(server: Any, run_id: str) -> list[str]:
    found = api.call(server, "query($id: uuid!) { flow_run(where: {id: {_eq: $id}}) { id } }", {"id": run_id})
    return [run["id"] for run in found["flow_run"]]
