"""get_runs_in_queue rules (contract §4.1), the agent's claimable-runs query (§3.3b), long polls."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support import api
from tests.support.server_fixtures import InProcessServer

FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


def iso(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@pytest.fixture
def flow_id(inproc_server: InProcessServer) -> str:
    return api.register_docker_flow(inproc_server, name="q", image_name="img", image_tag="1")


@pytest.fixture
def tenant(inproc_server: InProcessServer) -> str:
    return api.tenant_id(inproc_server)


def test_labels_must_be_a_subset_of_the_agents(
    inproc_server: InProcessServer, flow_id: str, tenant: str
) -> None:
    a = api.create_flow_run(inproc_server, flow_id, labels=["a"])
    ab = api.create_flow_run(inproc_server, flow_id, labels=["b", "a"])
    plain = api.create_flow_run(inproc_server, flow_id, labels=[])
    assert api.queue(inproc_server, tenant, ["a"], FUTURE) == [a]
    assert api.queue(inproc_server, tenant, ["a", "b", "c"], FUTURE) == [a, ab]
    assert api.queue(inproc_server, tenant, ["c"], FUTURE) == []
    assert api.queue(inproc_server, tenant, [], FUTURE) == [plain]  # unlabelled run -> unlabelled agent only


def test_tenant_scope(inproc_server: InProcessServer, flow_id: str, tenant: str) -> None:
    run = api.create_flow_run(inproc_server, flow_id, labels=[])
    other = api.call(inproc_server, 'mutation { create_tenant(input: {name: "B", slug: "b"}) { id } }')
    assert api.queue(inproc_server, other["create_tenant"]["id"], [], FUTURE) == []
    assert api.queue(inproc_server, tenant, [], FUTURE) == [run]


def test_order_by_start_time_and_due_only(inproc_server: InProcessServer, flow_id: str, tenant: str) -> None:
    late = api.create_flow_run(inproc_server, flow_id, labels=[], scheduled_start_time=iso(-10))
    early = api.create_flow_run(inproc_server, flow_id, labels=[], scheduled_start_time=iso(-20))
    future = api.create_flow_run(inproc_server, flow_id, labels=[], scheduled_start_time=iso(3600))
    assert api.queue(inproc_server, tenant, []) == [early, late]  # before defaults to now
    assert api.queue(inproc_server, tenant, [], FUTURE) == [early, late, future]


def test_limit_is_25(inproc_server: InProcessServer, flow_id: str, tenant: str) -> None:
    runs = [
        api.create_flow_run(inproc_server, flow_id, labels=[], scheduled_start_time=iso(-100 + i))
        for i in range(30)
    ]
    assert api.queue(inproc_server, tenant, [], FUTURE) == runs[:25]


def test_only_queue_states_qualify(inproc_server: InProcessServer, flow_id: str, tenant: str) -> None:
    runs = {
        kind: api.create_flow_run(inproc_server, flow_id, labels=[])
        for kind in (
            "Scheduled",
            "Paused",
            "Resume",
            "Queued",
            "Retrying",
            "Submitted",
            "Running",
            "Success",
            "Pending",
        )
    }
    for kind, run_id in runs.items():
        if kind != "Scheduled":
            api.set_flow_run_state(inproc_server, run_id, {"type": kind, "start_time": iso(-5)})
    expected = {runs[k] for k in ("Scheduled", "Paused", "Resume", "Queued", "Retrying")}
    assert set(api.queue(inproc_server, tenant, [], FUTURE)) == expected


def test_paused_without_start_time_never_qualifies(
    inproc_server: InProcessServer, flow_id: str, tenant: str
) -> None:
    """Paused keeps a null start_time (Prefect's Paused() does); a Scheduled one would get now instead."""
    run_id = api.create_flow_run(inproc_server, flow_id, labels=[])
    api.set_flow_run_state(inproc_server, run_id, {"type": "Paused", "message": "no start"})
    assert api.queue(inproc_server, tenant, [], FUTURE) == []


def test_running_run_with_a_retrying_task_run_qualifies(
    inproc_server: InProcessServer, flow_id: str, tenant: str
) -> None:
    run_id = api.create_flow_run(inproc_server, flow_id, labels=[])
    api.set_flow_run_state(inproc_server, run_id, {"type": "Running"})
    assert api.queue(inproc_server, tenant, [], FUTURE) == []
    task_run = api.flow_run(inproc_server, run_id)["task_runs"][0]["id"]
    retrying = {"type": "Retrying", "start_time": iso(60), "run_count": 1}
    assert "errors" not in api.set_task_run_state(inproc_server, task_run, retrying)
    assert api.queue(inproc_server, tenant, []) == []  # not due yet
    assert api.queue(inproc_server, tenant, [], iso(120)) == [run_id]


CLAIMABLE = """query {
    flow_run(where: { id: { _in: [%s] }, _or: [{ state: { _eq: "Scheduled" } }, { state: { _eq: "Running" },
      task_runs: { state_start_time: { _lte: "%s" } } }] }) {
        id version state serialized_state parameters scheduled_start_time run_config name
        flow { storage version name core_version id environment }
        task_runs(where: { state_start_time: { _lte: "%s" } }) { serialized_state version id task_id }
    }
}"""


def test_agent_metadata_query_filters_claimable_runs(inproc_server: InProcessServer, flow_id: str) -> None:
    scheduled, submitted, running, retrying = (api.create_flow_run(inproc_server, flow_id) for _ in range(4))
    api.set_flow_run_state(inproc_server, submitted, {"type": "Submitted"}, 1)
    for run_id in (running, retrying):
        api.set_flow_run_state(inproc_server, run_id, {"type": "Running"})
    task_run = api.flow_run(inproc_server, retrying)["task_runs"][0]["id"]
    retry_state = {"type": "Retrying", "start_time": iso(-60)}
    assert "errors" not in api.set_task_run_state(inproc_server, task_run, retry_state)
    ids = ", ".join(f'"{r}"' for r in (scheduled, submitted, running, retrying))
    cutoff = iso(-3)
    rows = api.call(inproc_server, CLAIMABLE % (ids, cutoff, cutoff))["flow_run"]
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {scheduled, retrying}
    assert by_id[scheduled]["task_runs"] == []  # Pending task runs have no start time
    assert [t["id"] for t in by_id[retrying]["task_runs"]] == [task_run]
    assert by_id[scheduled]["flow"]["core_version"] == "1.4.1"
    assert by_id[scheduled]["flow"]["storage"]["type"] == "Docker"
    assert isinstance(by_id[scheduled]["serialized_state"], dict)


def test_agent_last_queried_is_updated(inproc_server: InProcessServer, tenant: str) -> None:
    query = "mutation($input: register_agent_input!) { register_agent(input: $input) { id } }"
    agent_input = {
        "input": {
            "type": "DockerAgent",
            "name": "a",
            "labels": ["y", "x"],
            "tenant_id": tenant,
            "agent_config_id": None,
        }
    }
    first = api.call(inproc_server, query, agent_input)["register_agent"]["id"]
    again = api.call(inproc_server, query, {"input": {**agent_input["input"], "labels": ["x", "y"]}})
    assert again["register_agent"]["id"] == first  # de-duplicated like Prefect Server
    other = api.call(inproc_server, query, {"input": {**agent_input["input"], "name": "b"}})
    assert other["register_agent"]["id"] != first
    from sqlalchemy import select

    from server import db

    def last_queried() -> Any:
        with db.read_tx(inproc_server.services.engine) as conn:
            return conn.execute(select(db.agent.c.last_queried).where(db.agent.c.id == first)).scalar()

    before = last_queried()
    time.sleep(0.01)
    inproc_server.graphql(
        "mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) { flow_run_ids } }",
        {"input": {"tenant_id": tenant}},
        headers={"X-PREFECT-AGENT-ID": first},
    )
    assert last_queried() > before


def _long_poll(server: InProcessServer, tenant: str, wait: float, out: dict[str, Any]) -> None:
    started = time.monotonic()
    out["ids"] = api.queue(server, tenant, [], wait_seconds=wait)
    out["elapsed"] = time.monotonic() - started
    out["done"] = time.monotonic()


def test_long_poll_wakes_on_create(inproc_server: InProcessServer, flow_id: str, tenant: str) -> None:
    out: dict[str, Any] = {}
    poller = threading.Thread(target=_long_poll, args=(inproc_server, tenant, 10, out))
    poller.start()
    time.sleep(0.3)
    run_id = api.create_flow_run(inproc_server, flow_id, labels=[])
    created_at = time.monotonic()
    poller.join(15)
    assert out["ids"] == [run_id]
    assert out["done"] - created_at < 0.25


def test_long_poll_returns_a_run_when_it_becomes_due(
    inproc_server: InProcessServer, flow_id: str, tenant: str
) -> None:
    due, start = time.monotonic() + 1.0, iso(1.0)  # together: creating the run takes longer on PostgreSQL
    run_id = api.create_flow_run(inproc_server, flow_id, labels=[], scheduled_start_time=start)
    out: dict[str, Any] = {}
    _long_poll(inproc_server, tenant, 5, out)
    assert out["ids"] == [run_id]
    assert -0.05 < out["done"] - due < 0.25


def test_long_poll_returns_empty_after_wait_seconds(inproc_server: InProcessServer, tenant: str) -> None:
    out: dict[str, Any] = {}
    _long_poll(inproc_server, tenant, 0.5, out)
    assert out["ids"] == [] and 0.45 < out["elapsed"] < 1.0


def test_long_poll_ends_on_shutdown(inproc_server: InProcessServer, tenant: str) -> None:
    out: dict[str, Any] = {}
    poller = threading.Thread(target=_long_poll, args=(inproc_server, tenant, 20, out))
    poller.start()
    time.sleep(0.2)
    inproc_server.services.events.close()
    poller.join(2)
    assert out["ids"] == [] and out["elapsed"] < 1.0


def test_seeded_runs_and_the_queue_index(inproc_server: InProcessServer, tenant: str) -> None:
    from server.queue import queued_run_ids
    from server.seed import seed_flow_runs

    info = seed_flow_runs(inproc_server.services.engine, 3000, due=30, labels=["bench"])
    assert (info["runs"], info["due"], info["tenant_id"]) == (3000, 30, tenant)
    assert len(api.queue(inproc_server, tenant, ["bench"], FUTURE)) == 25
    assert api.queue(inproc_server, tenant, [], FUTURE) == []
    from server import db

    with db.read_tx(inproc_server.services.engine) as conn:
        if conn.dialect.name == "sqlite":  # SQLite's plan is fixed; PostgreSQL's depends on its statistics
            plan = " ".join(
                str(row)
                for row in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT id FROM flow_run WHERE tenant_id = 'x' "
                    "AND state = 'Scheduled' AND state_start_time <= '2100-01-01' "
                    "ORDER BY state_start_time LIMIT 75"
                )
            )
            assert "ix_flow_run_queue" in plan and "TEMP B-TREE" not in plan
        assert len(queued_run_ids(conn, tenant, ["bench"], datetime.now(UTC), limit=100)) == 30
