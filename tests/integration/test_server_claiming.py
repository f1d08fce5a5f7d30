"""Exactly-once claiming across server processes, and durability across restarts (issue done-when 3 and 4)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, func, select

from server import db
from tests.support import api
from tests.support.server_fixtures import ServerHandle

CLAIMERS = 20


def claim_concurrently(servers: list[ServerHandle], run_id: str, version: int) -> list[dict[str, Any]]:
    """CLAIMERS threads released together, alternating between the servers, each sending Submitted."""
    barrier = threading.Barrier(CLAIMERS)
    results: list[dict[str, Any]] = [{} for _ in range(CLAIMERS)]

    def claim(index: int) -> None:
        server = servers[index % len(servers)]
        submitted = {"type": "Submitted", "message": f"claimer {index}", "state": {"type": "Scheduled"}}
        barrier.wait()
        results[index] = api.set_flow_run_state(server, run_id, submitted, version)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_exactly_one_of_twenty_claimers_wins_across_two_processes(
    server_factory: Callable[..., ServerHandle], tmp_path: Any
) -> None:
    first = server_factory(auth="none")
    second = server_factory(auth="none", database_url=first.database_url)
    flow_id = api.register_docker_flow(first, name="claim", image_name="i", image_tag="1")
    for _ in range(3):
        run_id = api.create_flow_run(second, flow_id)
        results = claim_concurrently([first, second], run_id, 1)
        winners = [r for r in results if "errors" not in r]
        losers = [r["errors"][0] for r in results if "errors" in r]
        assert len(winners) == 1, results
        assert winners[0]["data"]["set_flow_run_states"]["states"][0]["status"] == "SUCCESS"
        assert len(losers) == CLAIMERS - 1
        assert Counter(e["extensions"]["code"] for e in losers) == {"VERSION_LOCKING_ERROR": CLAIMERS - 1}
        assert all(e["message"].startswith("State update failed") for e in losers)
        run = api.flow_run(first, run_id)
        assert (run["state"], run["version"]) == ("Submitted", 2)
        engine = create_engine(first.database_url)
        with engine.connect() as conn:
            submitted = conn.execute(
                select(func.count())
                .select_from(db.flow_run_state)
                .where(db.flow_run_state.c.flow_run_id == run_id, db.flow_run_state.c.state == "Submitted")
            ).scalar()
        engine.dispose()
        assert submitted == 1
    assert "Traceback" not in first.logs() + second.logs()


def test_restart_in_the_middle_loses_nothing(token_server: ServerHandle) -> None:
    user = token_server.create_token("USER", "restart")
    project = api.create_project(token_server, "durable", token=user)
    flow_id = api.register_docker_flow(
        token_server,
        name="durable-flow",
        image_name="i",
        image_tag="1",
        project_id=project,
        token=user,
        tasks=("a", "b"),
    )
    run_id = api.create_flow_run(token_server, flow_id, token=user, labels=["x"], parameters={"p": 1})
    token_server.stop()
    token_server.start()
    run = api.flow_run(token_server, run_id, user)
    assert (run["state"], run["version"], run["labels"], run["parameters"]) == (
        "Scheduled",
        1,
        ["x"],
        {"p": 1},
    )
    assert "errors" not in api.set_flow_run_state(token_server, run_id, {"type": "Submitted"}, 1, token=user)
    token_server.stop()
    token_server.start()
    assert "errors" not in api.set_flow_run_state(token_server, run_id, {"type": "Running"}, 2, token=user)
    logs = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"
    api.call(token_server, logs, {"input": {"logs": [{"flow_run_id": run_id, "message": "kept"}]}}, user)
    token_server.stop()
    token_server.start()
    run = api.flow_run(token_server, run_id, user)
    assert (run["state"], run["version"]) == ("Running", 3)
    assert sorted(t["task"]["slug"] for t in run["task_runs"]) == ["a-1", "b-1"]
    assert [log["message"] for log in api.run_logs(token_server, run_id, user)] == ["kept"]
    assert api.call(
        token_server, 'query { project(where: {name: {_eq: "durable"}}) { id } }', token=user
    ) == {"project": [{"id": project}]}
    with_key = api.create_flow_run(token_server, flow_id, token=user, idempotency_key="same")
    token_server.stop()
    token_server.start()
    assert api.create_flow_run(token_server, flow_id, token=user, idempotency_key="same") == with_key
