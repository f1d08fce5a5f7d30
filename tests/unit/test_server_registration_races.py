"""Registrations that overlap or die half-way: one runs in a thread, paused between its steps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from server import db
from server.abandoned import discard_stale_registrations
from server.context import RequestContext
from server.errors import ApiError
from server.resolvers import flows
from tests.support import api
from tests.support.server_fixtures import InProcessServer


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[InProcessServer]:
    handle = InProcessServer(tmp_path, write_batch_rows=2, max_tasks_per_flow=5, database_url=database_url)
    yield handle
    handle.close()


def flow_doc(tasks: int = 3) -> dict[str, Any]:
    return {"__version__": "1.4.1", "name": "same", "storage": api.docker_storage("same", "img", "1"),
            "tasks": [{"slug": f"t{i}"} for i in range(tasks)],
            "edges": [{"upstream_task": {"slug": "t0"}, "downstream_task": {"slug": "t1"}}]}


def flows_by_id(server: InProcessServer) -> dict[str, Any]:
    with db.read_tx(server.services.engine) as conn:
        return {row.id: row for row in conn.execute(select(db.flow))}


def count(server: InProcessServer, table: Any) -> int:
    with db.read_tx(server.services.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_overlapping_registrations_share_a_group_and_the_last_published_is_live(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B writes its row, A registers completely, then B publishes: B is the newest, unarchived version."""
    project = api.create_project(server, "p")
    ctx = RequestContext(server.services)
    b_inserted, a_done = threading.Event(), threading.Event()
    original = flows._store_tasks_and_edges

    def store_then_pause(*args: Any) -> None:
        original(*args)
        if threading.current_thread().name == "b":
            b_inserted.set()
            assert a_done.wait(60)

    monkeypatch.setattr(flows, "_store_tasks_and_edges", store_then_pause)
    result: dict[str, str] = {}
    b = threading.Thread(name="b", target=lambda: result.update(
        b=flows.create_flow(ctx, flow_doc(), {"project_id": project})))
    b.start()
    assert b_inserted.wait(60)
    a_id = flows.create_flow(RequestContext(server.services), flow_doc(), {"project_id": project})
    a_done.set()
    b.join(60)
    rows = flows_by_id(server)
    a, b_row = rows[a_id], rows[result["b"]]
    assert a.flow_group_id == b_row.flow_group_id and count(server, db.flow_group) == 1
    assert (a.version, a.archived, a.ready) == (1, True, True)
    assert (b_row.version, b_row.archived, b_row.ready) == (2, False, True)


def test_a_retry_after_a_crash_reuses_the_orphaned_group(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = api.create_project(server, "p")
    ctx = RequestContext(server.services)

    def crash(*_args: Any) -> None:
        raise RuntimeError("the process died here")

    with monkeypatch.context() as patch:
        patch.setattr(flows, "_store_tasks_and_edges", crash)
        with pytest.raises(RuntimeError):
            flows.create_flow(ctx, flow_doc(), {"project_id": project})
    (orphan,) = flows_by_id(server).values()
    retried = flows.create_flow(ctx, flow_doc(), {"project_id": project})
    live = flows_by_id(server)[retried]
    assert live.flow_group_id == orphan.flow_group_id and (live.version, live.archived) == (1, False)
    assert count(server, db.flow_group) == 1


def age(server: InProcessServer, flow_id: str, seconds: float) -> None:
    with db.write_tx(server.services.engine) as conn:
        conn.execute(update(db.flow).where(db.flow.c.id == flow_id).values(
            created=db.utcnow() - timedelta(seconds=seconds)))


def test_stale_unfinished_registrations_are_removed_in_batches(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = api.create_project(server, "p")
    ctx = RequestContext(server.services)
    live = flows.create_flow(ctx, {**flow_doc(), "name": "live"}, {"project_id": project})
    with monkeypatch.context() as patch:  # an abandoned one: tasks and edges written, never published
        patch.setattr(flows, "_publish", lambda *_args: None)
        stale = flows.create_flow(ctx, flow_doc(5), {"project_id": project})
        recent = flows.create_flow(ctx, {**flow_doc(), "name": "recent"}, {"project_id": project})
    age(server, stale, server.services.settings.stale_registration_s + 60)
    assert count(server, db.task) == 3 + 5 + 3
    assert discard_stale_registrations(server.services) == 1
    assert set(flows_by_id(server)) == {live, recent}
    assert count(server, db.task) == 3 + 3 and count(server, db.edge) == 2
    assert count(server, db.flow_group) == 2  # the stale flow's own group went with it
    assert discard_stale_registrations(server.services) == 0


def test_a_registration_removed_as_stale_cannot_publish(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = api.create_project(server, "p")
    ctx = RequestContext(server.services)
    original = flows._store_tasks_and_edges

    def store_slowly(ctx: RequestContext, tenant_id: str, flow_id: str, *rest: Any) -> None:
        original(ctx, tenant_id, flow_id, *rest)
        age(server, flow_id, server.services.settings.stale_registration_s + 60)
        assert discard_stale_registrations(server.services) == 1

    monkeypatch.setattr(flows, "_store_tasks_and_edges", store_slowly)
    with pytest.raises(ApiError, match="register it again") as raised:
        flows.create_flow(ctx, flow_doc(), {"project_id": project})
    assert raised.value.code == "CONFLICT" and flows_by_id(server) == {}


def test_an_over_limit_task_list_is_refused_before_anything_is_written(server: InProcessServer) -> None:
    project = api.create_project(server, "p")
    with pytest.raises(ApiError, match="MAX_TASKS_PER_FLOW") as raised:
        flows.create_flow(RequestContext(server.services), flow_doc(6), {"project_id": project})
    assert raised.value.code == "LIMIT_EXCEEDED"
    assert (count(server, db.flow), count(server, db.flow_group), count(server, db.task)) == (0, 0, 0)
