"""Helpers for tests of several server replicas on one database and of database outages.

`post` returns the HTTP status with the body (ServerHandle.graphql returns the body only). Outages use a
private cluster's `stop()` and `start()` (`tests.support.postgres.private_postgres_cluster`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from sqlalchemy import Engine, create_engine, select

from server import db
from tests.support import api
from tests.support.server_fixtures import ServerHandle

CREATE_RUN = "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }"
SET_STATES = ("mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) "
              "{ states { id status message } } }")


def post(server: ServerHandle, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection (thread-safe), as the Prefect client sends it."""
    sent = {"Content-Type": "application/json", "X-PREFECT-CORE-VERSION": "1.4.1", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    body = {"query": query, "variables": json.dumps(variables)}
    response = requests.post(server.url + "/", data=json.dumps(body), headers=sent, timeout=timeout)
    return response.status_code, response.json()


def wait_until(condition: Callable[[], Any], deadline_s: float = 30.0, what: str = "condition") -> Any:
    """Poll until `condition()` is truthy; a deadline against a hang, not a timing assertion."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {deadline_s} s")
        time.sleep(0.05)


def lease_holder(engine: Engine, name: str = "lazarus") -> Any:
    with db.read_tx(engine) as conn:
        return conn.execute(select(db.lease).where(db.lease.c.name == name)).first()


def direct_engine(url: str) -> Engine:
    """The test's own view of the database (small pool, no server code in the way)."""
    return create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True)


def long_poll_then_create(waiting: ServerHandle, writing: ServerHandle, flow_id: str, tenant: str,
                          agent_id: str, token: str | None = None) -> bool:
    """A long poll (30 s) on `waiting`, a run created on `writing`: True when the poll returned that run.

    If the poll was not woken within 10 s the run is claimed, so a poll that only returns at the end of its
    wait finds nothing. Prints the wake-up latency (for the report, not asserted).
    """
    query = "mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) { flow_run_ids } }"
    answer: list[Any] = []
    before = last_queried(writing, agent_id)
    poll = threading.Thread(target=lambda: answer.append(post(
        waiting, query, {"input": {"tenant_id": tenant, "labels": [], "wait_seconds": 30}}, token=token,
        headers={"X-Prefect-Agent-Id": agent_id})))
    poll.start()
    wait_until(lambda: last_queried(writing, agent_id) != before, what="the long poll to start")
    time.sleep(0.5)  # past the poll's first read, into its wait (sequencing, not a measurement)
    created = time.monotonic()
    run_id = api.create_flow_run(writing, flow_id, token=token)
    poll.join(10)
    latency = time.monotonic() - created
    if poll.is_alive():
        run = api.flow_run(writing, run_id, token=token)
        api.set_flow_run_state(writing, run_id, {"type": "Submitted"}, run["version"], token=token)
        poll.join(60)
    print(f"cross-replica long-poll wake-up: {latency * 1000:.0f} ms")
    status, body = answer[0]
    return status == 200 and body["data"]["get_runs_in_queue"]["flow_run_ids"] == [run_id]


def last_queried(server: ServerHandle, agent_id: str) -> Any:
    engine = direct_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(db.agent.c.last_queried).where(db.agent.c.id == agent_id)).scalar()
    finally:
        engine.dispose()
