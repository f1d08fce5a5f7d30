"""State storage, versions, locking and transition rules (contract §4.3-§4.5), in process."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import api
from tests.support.server_fixtures import InProcessServer

SET_TASK = (
    "mutation($input: set_task_run_states_input!) { set_task_run_states(input: $input) "
    "{ states { id status message } } }"
)


def state(kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "message": f"{kind} now",
        "context": {},
        "cached_inputs": {},
        "_result": {"type": "NoResultType", "__version__": "1.4.1"},
        "__version__": "1.4.1",
        **extra,
    }


@pytest.fixture
def run_id(inproc_server: InProcessServer) -> str:
    flow_id = api.register_docker_flow(
        inproc_server, name="f", image_name="img", image_tag="1", tasks=("say", "add")
    )
    return api.create_flow_run(inproc_server, flow_id)


def set_task(
    server: InProcessServer, task_run_id: str, payload: dict[str, Any], version: int | None = None
) -> dict[str, Any]:
    return server.graphql(
        SET_TASK, {"input": {"states": [{"task_run_id": task_run_id, "version": version, "state": payload}]}}
    )


def test_version_table_of_a_normal_run(inproc_server: InProcessServer, run_id: str) -> None:
    run = api.flow_run(inproc_server, run_id)
    assert (run["state"], run["version"]) == ("Scheduled", 1)
    assert run["serialized_state"]["start_time"] and run["state_start_time"]
    assert all((t["state"], t["version"]) == ("Pending", 0) for t in run["task_runs"])
    assert run["task_runs"][0]["serialized_state"] == {"type": "Pending", "message": "Task run created"}
    steps = [("Submitted", 1, 2), ("Running", 2, 3), ("Success", None, 4)]
    for kind, sent, expected in steps:
        body = api.set_flow_run_state(inproc_server, run_id, state(kind), sent)
        assert body["data"]["set_flow_run_states"]["states"] == [
            {"id": run_id, "status": "SUCCESS", "message": None}
        ]
        assert api.flow_run(inproc_server, run_id)["version"] == expected
    task_run = api.flow_run(inproc_server, run_id)["task_runs"][0]
    assert (
        set_task(inproc_server, task_run["id"], state("Running"), 0).get("errors") is not None
    )  # flow finished
    history = inproc_server.graphql("query { flow_run { id } }")
    assert history["data"]["flow_run"] == [{"id": run_id}]


def test_task_versions_and_retry(inproc_server: InProcessServer, run_id: str) -> None:
    api.set_flow_run_state(inproc_server, run_id, state("Running"), None)
    task_run = api.flow_run(inproc_server, run_id)["task_runs"][0]["id"]
    for kind, sent, expected in [
        ("Running", 0, 1),
        ("Failed", None, 2),
        ("Retrying", None, 3),
        ("Running", 3, 4),
        ("Success", None, 5),
    ]:
        extra = {"start_time": "2020-01-01T00:00:00+00:00", "run_count": 1} if kind == "Retrying" else {}
        body = set_task(inproc_server, task_run, state(kind, **extra), sent)
        assert "errors" not in body, body
        info = inproc_server.graphql(
            f'query {{ get_task_run_info(task_run_id: "{task_run}") '
            "{ id version state serialized_state } }"
        )["data"]["get_task_run_info"]
        assert (info["state"], info["version"]) == (kind, expected)


def test_failed_is_never_version_locked(inproc_server: InProcessServer, run_id: str) -> None:
    assert "errors" not in api.set_flow_run_state(inproc_server, run_id, state("Submitted"), 1)
    body = api.set_flow_run_state(inproc_server, run_id, state("Failed"), 1)  # stale, like the DockerAgent
    assert "errors" not in body
    assert api.flow_run(inproc_server, run_id)["state"] == "Failed"


def test_running_with_a_stale_version_is_a_version_locking_error(
    inproc_server: InProcessServer, run_id: str
) -> None:
    body = api.set_flow_run_state(inproc_server, run_id, state("Running"), 0)
    error = body["errors"][0]
    assert error["extensions"]["code"] == "VERSION_LOCKING_ERROR"
    assert error["message"].startswith("State update failed")
    assert error["path"] == ["set_flow_run_states"]
    assert api.flow_run(inproc_server, run_id)["state"] == "Scheduled"


def test_second_submitted_is_rejected(inproc_server: InProcessServer, run_id: str) -> None:
    assert "errors" not in api.set_flow_run_state(inproc_server, run_id, state("Submitted"), 1)
    for version in (2, None):
        error = api.set_flow_run_state(inproc_server, run_id, state("Submitted"), version)["errors"][0]
        assert error["message"] == "State update failed: this run has already been submitted."
        assert error["extensions"]["code"] == "VERSION_LOCKING_ERROR"
    assert api.flow_run(inproc_server, run_id)["version"] == 2


def test_submitted_stores_agent_and_heartbeat(inproc_server: InProcessServer, run_id: str) -> None:
    agent_id = "3452ca94-dd39-4b11-920c-12301e19a43d"
    query = (
        "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) "
        "{ states { id } } }"
    )
    inproc_server.graphql(
        query,
        {"input": {"states": [{"flow_run_id": run_id, "version": 1, "state": state("Submitted")}]}},
        headers={"X-PREFECT-AGENT-ID": agent_id},
    )
    run = api.flow_run(inproc_server, run_id)
    assert run["agent_id"] == agent_id and run["heartbeat"] is not None


def test_task_running_needs_a_running_flow_run(inproc_server: InProcessServer, run_id: str) -> None:
    task_run = api.flow_run(inproc_server, run_id)["task_runs"][0]["id"]
    error = set_task(inproc_server, task_run, state("Running"), 0)["errors"][0]
    assert error["message"] == (
        f"State update failed for task run ID {task_run}: provided a running state but "
        f"associated flow run {run_id} is not in a running state."
    )
    assert api.flow_run(inproc_server, run_id)["task_runs"][0]["state"] == "Pending"


def test_cached_inputs_are_carried_over(inproc_server: InProcessServer, run_id: str) -> None:
    api.set_flow_run_state(inproc_server, run_id, state("Running"), None)
    task_run = api.flow_run(inproc_server, run_id)["task_runs"][0]["id"]
    cached = {"x": {"type": "PrefectResult", "location": "5", "__version__": "1.4.1"}}
    set_task(inproc_server, task_run, state("Failed", cached_inputs=cached))
    set_task(inproc_server, task_run, state("Retrying", start_time="2020-01-01T00:00:00+00:00"))
    info = inproc_server.graphql(
        f'query {{ get_task_run_info(task_run_id: "{task_run}") {{ serialized_state }} }}'
    )
    assert info["data"]["get_task_run_info"]["serialized_state"]["cached_inputs"] == cached


@pytest.mark.parametrize(
    ("before", "expected"), [("Scheduled", "Cancelled"), ("Running", "Cancelling"), ("Success", "Success")]
)
def test_cancel_flow_run(inproc_server: InProcessServer, run_id: str, before: str, expected: str) -> None:
    if before != "Scheduled":
        api.set_flow_run_state(inproc_server, run_id, state(before), None)
    assert api.cancel_flow_run(inproc_server, run_id) == expected
    run = api.flow_run(inproc_server, run_id)
    assert run["state"] == expected
    tasks = {t["state"] for t in run["task_runs"]}
    assert tasks == ({"Cancelled"} if expected == "Cancelled" else {"Pending"})


def test_cancelled_cascades_to_unfinished_task_runs_only(inproc_server: InProcessServer, run_id: str) -> None:
    api.set_flow_run_state(inproc_server, run_id, state("Running"), None)
    first, second = (t["id"] for t in api.flow_run(inproc_server, run_id)["task_runs"])
    set_task(inproc_server, first, state("Success"))
    api.set_flow_run_state(inproc_server, run_id, state("Cancelled"), None)
    states = {t["id"]: t["state"] for t in api.flow_run(inproc_server, run_id)["task_runs"]}
    assert states == {first: "Success", second: "Cancelled"}


@pytest.mark.parametrize(
    "payload",
    [
        {"message": "no type"},
        {"type": "Bogus"},
        {"type": ""},
        "Running",
        [1, 2],
        {"type": "Running", "message": "x" * 1_000_001},
    ],
)
def test_invalid_states_change_nothing(inproc_server: InProcessServer, run_id: str, payload: Any) -> None:
    before = api.flow_run(inproc_server, run_id)
    body = api.set_flow_run_state(inproc_server, run_id, payload, None)
    assert body["errors"] and body["data"] == {"set_flow_run_states": None}
    assert "API_ERROR" not in str(body)
    if isinstance(payload, dict) and len(str(payload)) > 1_000_000:
        assert body["errors"][0]["message"] == "State payload is too large."
    assert api.flow_run(inproc_server, run_id) == before


def test_unknown_run_ids_are_clear_errors(inproc_server: InProcessServer, run_id: str) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    body = api.set_flow_run_state(inproc_server, unknown, state("Running"), None)
    assert body["errors"][0]["message"].startswith(f"State update failed for flow run ID {unknown}")
    body = set_task(inproc_server, unknown, state("Running"))
    assert body["errors"][0]["message"].startswith(f"State update failed for task run ID {unknown}")


def test_a_batch_is_all_or_nothing(inproc_server: InProcessServer, run_id: str) -> None:
    query = (
        "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) "
        "{ states { id } } }"
    )
    unknown = "00000000-0000-4000-8000-000000000000"
    body = inproc_server.graphql(
        query,
        {
            "input": {
                "states": [
                    {"flow_run_id": run_id, "state": state("Running")},
                    {"flow_run_id": unknown, "state": state("Running")},
                ]
            }
        },
    )
    assert body["errors"]
    assert api.flow_run(inproc_server, run_id)["state"] == "Scheduled"
