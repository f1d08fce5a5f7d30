"""Several real server processes on one database: idempotent creation and exactly-once claims under races,
long-poll wake-ups across replicas (LISTEN/NOTIFY), and one zombie sweeper at a time (the lease)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from server import db
from tests.support import api
from tests.support.replicas import (
    CREATE_RUN,
    SET_STATES,
    direct_engine,
    lease_holder,
    long_poll_then_create,
    post,
    wait_until,
)
from tests.support.server_fixtures import ServerHandle, start_server

REPLICAS = 3


@pytest.fixture
def pg_factory(tmp_path: Path, postgres_url: str) -> Iterator[Callable[..., ServerHandle]]:
    """Servers on one PostgreSQL database (LISTEN/NOTIFY and the lease are PostgreSQL features here)."""
    started: list[ServerHandle] = []

    def factory(**kwargs: Any) -> ServerHandle:
        handle = start_server(tmp_path / f"pg{len(started)}", database_url=postgres_url, **kwargs)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()


def replicas(factory: Callable[..., ServerHandle], url: str, **env: str) -> list[ServerHandle]:
    environment = {f"LOCAL_AGENT_SERVER_{k.upper()}": v for k, v in env.items()}
    return [factory(database_url=url, env=environment) for _ in range(REPLICAS)]


def race(count: int, action: Callable[[int], Any]) -> list[Any]:
    """`count` threads released together; each result (or exception) in its slot."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = action(index)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_one_idempotency_key_creates_one_run_through_every_replica(
    server_factory: Callable[..., ServerHandle], database_url: str
) -> None:
    servers = replicas(server_factory, database_url, write_batch_rows="50")
    tasks = [f"t{i}" for i in range(120)]  # 3 batches of task runs, pre-created by whoever gets there
    flow_id = api.register_docker_flow(servers[0], name="f", image_name="i", image_tag="1", tasks=tasks)
    run_input = {"input": {"flow_id": flow_id, "idempotency_key": "one-key"}}
    answers = race(24, lambda i: post(servers[i % REPLICAS], CREATE_RUN, run_input))
    assert all(status == 200 and "errors" not in body for status, body in answers), answers
    ids = {body["data"]["create_flow_run"]["id"] for _, body in answers}
    assert len(ids) == 1
    run_id = ids.pop()
    engine = direct_engine(database_url)
    try:
        with engine.connect() as conn:
            fr = db.flow_run
            keyed = conn.execute(select(fr.c.id, fr.c.state).where(fr.c.idempotency_key == "one-key")).all()
            task_runs = conn.execute(select(func.count()).where(db.task_run.c.flow_run_id == run_id)).scalar()
            history = conn.execute(select(db.flow_run_state.c.state).where(
                db.flow_run_state.c.flow_run_id == run_id)).scalars().all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in keyed] == [(run_id, "Scheduled")]
    assert task_runs == len(tasks)
    assert history == ["Scheduled"]


def claim_forms(run_ids: list[str], version: int, index: int) -> list[dict[str, Any]]:
    """The ways a claim reaches the server: one run per call, a partial batch, an all-or-nothing pair."""
    shuffled = random.Random(index).sample(run_ids, len(run_ids))

    def element(run_id: str) -> dict[str, Any]:
        return {"flow_run_id": run_id, "version": version,
                "state": {"type": "Submitted", "message": f"claimer {index}"}}

    if index % 3 == 0:
        return [{"states": [element(run_id)]} for run_id in shuffled]
    if index % 3 == 1:
        return [{"states": [element(run_id) for run_id in shuffled], "partial": True}]
    pairs = [shuffled[i:i + 2] for i in range(0, len(shuffled), 2)]
    return [{"states": [element(run_id) for run_id in pair]} for pair in pairs]


def won(payload: dict[str, Any], body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(run ids this request moved to Submitted, error codes it got)."""
    if body.get("errors"):
        return [], [e["extensions"]["code"] for e in body["errors"]]
    outcomes = body["data"]["set_flow_run_states"]["states"]
    return ([o["id"] for o in outcomes if o["status"] == "SUCCESS"],
            [o["status"] for o in outcomes if o["status"] != "SUCCESS"])


def test_each_run_is_submitted_exactly_once_across_replicas(
    server_factory: Callable[..., ServerHandle], database_url: str
) -> None:
    servers = replicas(server_factory, database_url)
    flow_id = api.register_docker_flow(servers[0], name="f", image_name="i", image_tag="1")
    run_ids = [api.create_flow_run(servers[i % REPLICAS], flow_id) for i in range(12)]
    versions = {api.flow_run(servers[0], run_id)["version"] for run_id in run_ids}
    assert len(versions) == 1
    version = versions.pop()

    def claimer(index: int) -> list[tuple[int, list[str], list[str]]]:
        outcomes = []
        for payload in claim_forms(run_ids, version, index):
            status, body = post(servers[index % REPLICAS], SET_STATES, {"input": payload})
            outcomes.append((status, *won(payload, body)))
        return outcomes

    results = race(24, claimer)
    assert not [r for r in results if isinstance(r, Exception)], results
    flat = [outcome for result in results for outcome in result]
    assert {status for status, _, _ in flat} == {200}
    assert {code for _, _, codes in flat for code in codes} == {"VERSION_LOCKING_ERROR"}
    wins = Counter(run_id for _, ids, _ in flat for run_id in ids)
    assert wins == Counter({run_id: 1 for run_id in run_ids})
    engine = direct_engine(database_url)
    try:
        with engine.connect() as conn:
            h = db.flow_run_state
            query = select(h.c.flow_run_id).where(h.c.state == "Submitted")
            submitted = Counter(conn.execute(query).scalars())
            states = set(conn.execute(select(db.flow_run.c.state)).scalars())
    finally:
        engine.dispose()
    assert submitted == Counter({run_id: 1 for run_id in run_ids})
    assert states == {"Submitted"}


@pytest.mark.postgres
def test_a_run_created_on_one_replica_wakes_a_long_poll_on_another(
    pg_factory: Callable[..., ServerHandle]
) -> None:
    # The periodic re-check is far longer than the test: only a notification can wake the poll early.
    first, second = (pg_factory(env={"LOCAL_AGENT_SERVER_LONG_POLL_RECHECK_S": "300"}) for _ in range(2))
    flow_id = api.register_docker_flow(first, name="f", image_name="i", image_tag="1")
    tenant = api.tenant_id(first)
    agent_id = api.register_agent(first)
    woke = long_poll_then_create(first, second, flow_id, tenant, agent_id)
    assert woke


def test_one_replica_sweeps_and_hands_the_lease_over_when_it_stops(
    server_factory: Callable[..., ServerHandle], database_url: str
) -> None:
    servers = replicas(server_factory, database_url, zombie_check_interval_s="0.2", zombie_lease_ttl_s="120",
                       zombie_timeout_s="30")
    engine = direct_engine(database_url)
    try:
        holder = wait_until(lambda: lease_holder(engine), what="a lease holder").holder
        owners = [s for s in servers if f"(holder {holder}," in s.logs()]
        assert len(owners) == 1
        flow_id = api.register_docker_flow(servers[0], name="f", image_name="i", image_tag="1")
        run_id = api.create_flow_run(servers[1], flow_id)
        run = api.flow_run(servers[1], run_id)
        api.set_flow_run_state(servers[1], run_id, {"type": "Submitted"}, run["version"])
        with engine.begin() as conn:  # its agent died long ago
            conn.execute(update(db.flow_run).where(db.flow_run.c.id == run_id).values(
                heartbeat=db.utcnow().replace(year=2000)))
        api.wait_for_state(servers[2], run_id, "Scheduled", timeout=30)
        assert [s for s in servers if "lease lazarus acquired" in s.logs()] == owners  # one sweeper so far
        owners[0].stop()
        successor = lease_holder(engine)  # released on the way out: gone, or already another replica's
        assert successor is None or successor.holder != holder
        new_holder = wait_until(lambda: (row := lease_holder(engine)) and row.holder, what="a new holder")
        assert new_holder != holder
    finally:
        engine.dispose()
    alive = next(s for s in servers if s is not owners[0])
    logs = [entry["message"] for entry in api.run_logs(alive, run_id)]
    assert sum("Rescheduled by a Lazarus process" in m for m in logs) == 1
