"""The database goes away under running servers (a private PostgreSQL cluster, stopped and started again).

While it is down every request that needs it gets HTTP 503 `SERVICE_UNAVAILABLE` ("database unavailable:
..."), never a traceback or a 200 with INTERNAL_SERVER_ERROR; when it is back the same requests succeed
without restarting the servers, and the zombie sweep and the LISTEN thread carry on by themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from server import db
from tests.support import api
from tests.support.postgres import PostgresCluster
from tests.support.replicas import (
    CREATE_RUN,
    direct_engine,
    lease_holder,
    long_poll_then_create,
    post,
    wait_until,
)
from tests.support.server_fixtures import ServerHandle, start_server

pytestmark = pytest.mark.postgres
SERVER_ENV = {"LOCAL_AGENT_SERVER_ZOMBIE_CHECK_INTERVAL_S": "0.2",
              "LOCAL_AGENT_SERVER_ZOMBIE_LEASE_TTL_S": "2", "LOCAL_AGENT_SERVER_LONG_POLL_RECHECK_S": "300",
              "LOCAL_AGENT_SERVER_TOKEN_CACHE_TTL_S": "0"}


@pytest.fixture
def cluster(private_postgres_cluster: PostgresCluster) -> PostgresCluster:
    return private_postgres_cluster


@pytest.fixture
def pair(cluster: PostgresCluster, tmp_path: Path) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    """Two replicas on one database of the private cluster: one with --auth token, one with --auth none."""
    url = cluster.create_database()
    first = start_server(tmp_path / "a", auth="token", database_url=url, env=SERVER_ENV)
    second = start_server(tmp_path / "b", auth="none", database_url=url, env=SERVER_ENV)
    yield first, second
    for server in (first, second):
        server.stop()


def requests_that_need_the_database(server: ServerHandle, token: str | None, flow_id: str,
                                    tenant: str) -> list[tuple[int, dict[str, Any]]]:
    """A read, a create (idempotency key), a claim, a long poll: each (status, body)."""
    run_input = {"input": {"flow_id": flow_id, "idempotency_key": "during-outage"}}
    claim = {"input": {"states": [{"flow_run_id": flow_id, "version": 1, "state": {"type": "Submitted"}}]}}
    poll = {"input": {"tenant_id": tenant, "labels": [], "wait_seconds": 1}}
    return [
        post(server, "query { flow { id } }", token=token),
        post(server, CREATE_RUN, run_input, token=token),
        post(server, "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) "
                     "{ states { status } } }", claim, token=token),
        post(server, "mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) "
                     "{ flow_run_ids } }", poll, token=token),
    ]


def assert_unavailable(answers: list[tuple[int, dict[str, Any]]]) -> None:
    for status, body in answers:
        assert status == 503, body
        [err] = body["errors"]
        assert err["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        assert err["message"].startswith("database unavailable: ")
        assert "Traceback" not in err["message"] and "data" not in body


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_requests_get_503_while_the_database_is_down_and_succeed_when_it_is_back(
    cluster: PostgresCluster, pair: tuple[ServerHandle, ServerHandle], mode: str
) -> None:
    token_server, open_server = pair
    token = token_server.create_token("USER")
    flow_id = api.register_docker_flow(open_server, name="f", image_name="i", image_tag="1")
    tenant = api.tenant_id(open_server)
    assert "errors" not in post(token_server, "query { flow { id } }", token=token)[1]

    cluster.stop(mode)
    assert_unavailable(requests_that_need_the_database(open_server, None, flow_id, tenant))
    # the token is checked before the body is read: that path answers the same way
    assert_unavailable(requests_that_need_the_database(token_server, token, flow_id, tenant)[:1])
    assert post(open_server, "query { hello }")[0] == 200  # health checks need no database

    cluster.start()
    run_id = api.create_flow_run(open_server, flow_id, idempotency_key="during-outage")
    assert api.create_flow_run(token_server, flow_id, idempotency_key="during-outage", token=token) == run_id
    assert "errors" not in post(token_server, "query { flow { id } }", token=token)[1]
    engine = direct_engine(open_server.database_url)
    try:
        with engine.connect() as conn:
            keyed = conn.execute(select(func.count()).where(db.flow_run.c.idempotency_key == "during-outage"))
            assert keyed.scalar() == 1  # the refused creations left nothing half-written behind
        renewed_after = db.utcnow()
        wait_until(lambda: (row := lease_holder(engine)) and row.expires > renewed_after,
                   what="the zombie sweep's lease renewed after the outage")
    finally:
        engine.dispose()
    for server in pair:
        wait_until(lambda server=server: "LISTEN local_agent_queue: reconnected" in server.logs(),
                   what="the LISTEN thread back")
        assert "Traceback" not in server.logs()
    api.set_flow_run_state(open_server, run_id, {"type": "Submitted"}, 1)  # out of the queue
    woke = wake_across(open_server, token_server, flow_id, tenant, token)
    assert woke


def wake_across(writing: ServerHandle, waiting: ServerHandle, flow_id: str, tenant: str,
                token: str) -> bool:
    """After the outage a run created on one replica still wakes a long poll on the other at once."""
    agent_id = api.register_agent(waiting, token=token)
    return long_poll_then_create(waiting, writing, flow_id, tenant, agent_id, token=token)


def test_connections_reset_under_a_running_server_are_replaced_transparently(
    cluster: PostgresCluster, pair: tuple[ServerHandle, ServerHandle]
) -> None:
    _, server = pair
    flow_id = api.register_docker_flow(server, name="f", image_name="i", image_tag="1")
    with cluster.engine.connect() as conn:  # every session of the test database, the LISTEN one included
        database = server.database_url.rsplit("/", 1)[1]
        ended = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database})
        assert ended.scalar() >= 1
    for _ in range(5):  # the pool pings each connection before use and replaces the dead ones
        status, body = post(server, CREATE_RUN, {"input": {"flow_id": flow_id}})
        assert status == 200 and "errors" not in body, body
    wait_until(lambda: "LISTEN local_agent_queue: reconnected" in server.logs(), what="LISTEN back")
