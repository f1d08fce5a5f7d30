"""Prefect Server 1.x state rules (server/README.md "State rules"), in process; a refusal changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server import db
from server.resolvers import flows, runs
from server.states import Change, write_state
from tests.support import api
from tests.support.server_fixtures import InProcessServer

SET_FLOW = ("mutation($input: set_flow_run_states_input!) "
            "{ set_flow_run_states(input: $input) { states { id status message } } }")
CANCEL = "mutation($id: UUID!) { cancel_flow_run(input: {flow_run_id: $id}) { state } }"
FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


def state(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": f"{kind} now", "context": {}, "cached_inputs": {},
            "_result": {"type": "NoResultType", "__version__": "1.4.1"}, "__version__": "1.4.1", **extra}


@pytest.fixture
def srv(tmp_path: Path, database_url: str) -> Iterator[InProcessServer]:
    # small batches: the cascade takes 3 of them
    handle = InProcessServer(tmp_path, write_batch_rows=2, database_url=database_url)
    yield handle
    handle.close()


@pytest.fixture
def flow_id(srv: InProcessServer) -> str:
    return api.register_docker_flow(srv, name="f", image_name="img", image_tag="1",
                                    tasks=("a", "b", "c", "d", "e"))


@pytest.fixture
def run_id(srv: InProcessServer, flow_id: str) -> str:
    return api.create_flow_run(srv, flow_id, labels=[])


def set_flow(srv: InProcessServer, run_id: str, payload: dict[str, Any], version: int | None = None,
             partial: bool = False) -> dict[str, Any]:
    item = {"flow_run_id": run_id, "version": version, "state": payload}
    return srv.graphql(SET_FLOW, {"input": {"states": [item], "partial": partial}})


def finish(srv: InProcessServer, run_id: str, kind: str = "Failed") -> None:
    for step in ("Submitted", "Running", kind):
        assert "errors" not in set_flow(srv, run_id, state(step)), step


@pytest.mark.parametrize("new", ["Running", "Submitted", "Cancelling"])
@pytest.mark.parametrize("old", ["Failed", "Success", "Cancelled"])
def test_a_finished_flow_run_does_not_go_back_to_running(
    srv: InProcessServer, run_id: str, old: str, new: str
) -> None:
    finish(srv, run_id, old)
    before = api.flow_run(srv, run_id)
    body = set_flow(srv, run_id, state(new), before["version"])
    error = body["errors"][0]
    assert error["extensions"]["code"] == "STATE_UPDATE_FAILED"
    assert error["message"].startswith("State update failed") and f"finished ({old})" in error["message"]
    assert api.flow_run(srv, run_id) == before
    partial = set_flow(srv, run_id, state(new), before["version"], partial=True)
    assert partial["data"]["set_flow_run_states"]["states"][0]["status"] == "STATE_UPDATE_FAILED"
    assert api.flow_run(srv, run_id) == before


def test_failed_to_scheduled_restarts_a_run(srv: InProcessServer, run_id: str) -> None:
    """The UI's restart: Failed -> Scheduled, then the normal claim and run."""
    finish(srv, run_id, "Failed")
    assert "errors" not in set_flow(srv, run_id, state("Scheduled", start_time=datetime.now(UTC).isoformat()))
    assert run_id in api.queue(srv, api.tenant_id(srv), [], FUTURE)
    finish(srv, run_id, "Success")
    assert api.flow_run(srv, run_id)["state"] == "Success"


def test_a_finished_state_may_follow_a_finished_state(srv: InProcessServer, run_id: str) -> None:
    """Prefect has no general state machine: e.g. an agent's Failed after the run was Cancelled is stored."""
    finish(srv, run_id, "Cancelled")
    assert "errors" not in set_flow(srv, run_id, state("Failed"))
    assert api.flow_run(srv, run_id)["state"] == "Failed"


@pytest.mark.parametrize("kind", ["Scheduled", "Retrying", "Resume", "Queued"])
def test_a_scheduled_state_without_start_time_starts_now(
    srv: InProcessServer, run_id: str, kind: str
) -> None:
    before = datetime.now(UTC)
    assert "errors" not in set_flow(srv, run_id, {"type": kind, "message": "no start time"})
    run = api.flow_run(srv, run_id)
    stored = datetime.fromisoformat(run["serialized_state"]["start_time"])
    assert before <= stored <= datetime.now(UTC)
    assert datetime.fromisoformat(run["state_start_time"]) == stored
    assert run_id in api.queue(srv, api.tenant_id(srv), [], FUTURE)


def test_paused_without_start_time_stays_without_one(srv: InProcessServer, run_id: str) -> None:
    assert "errors" not in set_flow(srv, run_id, {"type": "Paused", "message": "wait"})
    run = api.flow_run(srv, run_id)
    assert run["state_start_time"] is None and "start_time" not in run["serialized_state"]


def test_a_task_run_goes_running_only_while_its_flow_run_runs(srv: InProcessServer, run_id: str) -> None:
    task_run = api.flow_run(srv, run_id)["task_runs"][0]["id"]
    body = srv.graphql("mutation($input: set_task_run_states_input!) { set_task_run_states(input: $input) "
                       "{ states { id } } }", {"input": {"states": [
                           {"task_run_id": task_run, "version": 0, "state": state("Running")}]}})
    assert "not in a running state" in body["errors"][0]["message"]
    assert api.flow_run(srv, run_id)["task_runs"][0]["version"] == 0


def test_a_looped_task_run_may_run_again(srv: InProcessServer, run_id: str) -> None:
    """Looped is a finished state the task runner leaves for Running: no finished rule for task runs."""
    for step in ("Submitted", "Running"):
        assert "errors" not in set_flow(srv, run_id, state(step))
    task_run = api.flow_run(srv, run_id)["task_runs"][0]["id"]
    for kind in ("Running", "Looped", "Running", "Success"):
        payload = state(kind, loop_count=1) if kind == "Looped" else state(kind)
        assert "errors" not in api.set_task_run_state(srv, task_run, payload), kind
    assert api.flow_run(srv, run_id)["task_runs"][0]["state"] == "Success"


def test_cancel_cascades_to_unfinished_task_runs_in_batches(srv: InProcessServer, run_id: str) -> None:
    first = api.flow_run(srv, run_id)["task_runs"][0]["id"]
    assert "errors" not in api.set_task_run_state(srv, first, state("Success"))
    assert api.call(srv, CANCEL, {"id": run_id})["cancel_flow_run"]["state"] == "Cancelled"
    task_runs = {t["id"]: t["state"] for t in api.flow_run(srv, run_id)["task_runs"]}
    assert task_runs.pop(first) == "Success"
    assert set(task_runs.values()) == {"Cancelled"} and len(task_runs) == 4


@pytest.mark.parametrize("retry", ["cancel_flow_run", "set_flow_run_states"])
def test_a_retry_finishes_an_interrupted_cascade(srv: InProcessServer, run_id: str, retry: str) -> None:
    """The state of a crash after the run's own Cancelled was committed and before the cascade ran."""
    with db.write_tx(srv.services.engine) as conn:
        change = Change(state("Cancelled"))
        write_state(conn, db.flow_run, "flow", run_id, change, db.flow_run.c.id.is_not(None))
    assert {t["state"] for t in api.flow_run(srv, run_id)["task_runs"]} == {"Pending"}
    if retry == "cancel_flow_run":
        assert api.call(srv, CANCEL, {"id": run_id})["cancel_flow_run"]["state"] == "Cancelled"
    else:
        assert "errors" not in set_flow(srv, run_id, state("Cancelled"))
    assert {t["state"] for t in api.flow_run(srv, run_id)["task_runs"]} == {"Cancelled"}
    versions = [t["version"] for t in api.flow_run(srv, run_id)["task_runs"]]
    api.call(srv, CANCEL, {"id": run_id})  # once complete, a repeat changes nothing
    assert [t["version"] for t in api.flow_run(srv, run_id)["task_runs"]] == versions


def test_a_run_whose_creation_crashed_is_invisible_and_a_retry_finishes_it(
    srv: InProcessServer, flow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: Any) -> None:
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(runs, "_schedule_run", crash)
    body = srv.graphql("mutation($f: UUID!) { create_flow_run(input: {flow_id: $f, idempotency_key: \"k\"}) "
                       "{ id } }", {"f": flow_id})
    assert body["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert api.call(srv, "query { flow_run { id } }")["flow_run"] == []
    assert api.queue(srv, api.tenant_id(srv), [], FUTURE) == []
    monkeypatch.undo()
    run_id = api.create_flow_run(srv, flow_id, idempotency_key="k")
    run = api.flow_run(srv, run_id)
    assert (run["state"], run["version"], len(run["task_runs"])) == ("Scheduled", 1, 5)


def test_a_flow_whose_registration_crashed_is_invisible(
    srv: InProcessServer, flow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: Any) -> None:
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(flows, "_publish", crash)
    with pytest.raises(AssertionError, match="INTERNAL_SERVER_ERROR"):
        api.register_docker_flow(srv, name="f", image_name="img", image_tag="2")
    monkeypatch.undo()
    assert [f["id"] for f in api.call(srv, "query { flow { id archived } }")["flow"]] == [flow_id]
    second = api.register_docker_flow(srv, name="f", image_name="img", image_tag="3")
    versions = api.call(srv, "query { flow(order_by: {version: asc}) { id version archived } }")["flow"]
    assert versions == [{"id": flow_id, "version": 1, "archived": True},
                        {"id": second, "version": 2, "archived": False}]
