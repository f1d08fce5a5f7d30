"""Projects, flow registration (§3.6, §4.7), flow-run creation (§4.6), task runs, logs, heartbeats."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support import api
from tests.support.server_fixtures import InProcessServer

CREATE_COMPRESSED = (
    "mutation($input: create_flow_from_compressed_string_input!) "
    "{ create_flow_from_compressed_string(input: $input) { id } }"
)


def compress(value: dict[str, Any]) -> str:
    return base64.b64encode(gzip.compress(json.dumps(value).encode())).decode()


def serialized_flow(name: str = "cli-flow", **extra: Any) -> dict[str, Any]:
    return {
        "__version__": "1.4.1",
        "name": name,
        "type": "prefect.core.flow.Flow",
        "schedule": None,
        "parameters": [],
        "reference_tasks": [],
        "storage": api.docker_storage(name, "img", "1"),
        "run_config": {"type": "DockerRun", "labels": ["from-flow"], "__version__": "1.4.1"},
        "tasks": [{"slug": "say-1", "name": "say"}, {"slug": "p", "name": "p"}],
        "edges": [{"upstream_task": {"slug": "p"}, "downstream_task": {"slug": "say-1"}, "key": "x"}],
        **extra,
    }


def test_create_project_uniqueness(inproc_server: InProcessServer) -> None:
    first = api.create_project(inproc_server, "proj")
    with pytest.raises(AssertionError, match="'Uniqueness violation.'"):
        api.create_project(inproc_server, "proj")
    found = api.call(inproc_server, 'query { project(where: { name: { _eq: "proj" } }) { id } }')
    assert found["project"] == [{"id": first}]


def test_compressed_registration_versions_and_archives(inproc_server: InProcessServer) -> None:
    project = api.create_project(inproc_server, "proj")
    flow_input = {
        "project_id": project,
        "serialized_flow": compress(serialized_flow()),
        "set_schedule_active": True,
    }
    first = api.call(inproc_server, CREATE_COMPRESSED, {"input": flow_input})[
        "create_flow_from_compressed_string"
    ]
    second = api.call(inproc_server, CREATE_COMPRESSED, {"input": flow_input})[
        "create_flow_from_compressed_string"
    ]
    query = (
        'query { flow(where: { _and: { name: { _eq: "cli-flow" }, project: { id: { _eq: "PID" } } } }, '
        "order_by: { version: desc }, limit: 1) { id version } }".replace("PID", project)
    )
    assert api.call(inproc_server, query)["flow"] == [{"id": second["id"], "version": 2}]
    rows = api.call(
        inproc_server,
        "query { flow(order_by: {version: asc}) { id archived version_group_id "
        "flow_group_id core_version settings tasks { slug } } }",
    )["flow"]
    assert [r["archived"] for r in rows] == [True, False]
    assert rows[0]["flow_group_id"] == rows[1]["flow_group_id"]
    assert rows[1]["core_version"] == "1.4.1" and rows[1]["settings"] == {}
    assert sorted(t["slug"] for t in rows[1]["tasks"]) == ["p", "say-1"]
    with pytest.raises(AssertionError, match=r"Flow .* is archived\."):
        api.create_flow_run(inproc_server, first["id"])


def test_idempotency_key_returns_the_existing_flow(inproc_server: InProcessServer) -> None:
    project = api.create_project(inproc_server, "proj")
    flow_input = {
        "project_id": project,
        "serialized_flow": compress(serialized_flow()),
        "idempotency_key": "k1",
    }
    first = api.call(inproc_server, CREATE_COMPRESSED, {"input": flow_input})
    again = api.call(inproc_server, CREATE_COMPRESSED, {"input": flow_input})
    assert again == first
    changed = api.call(inproc_server, CREATE_COMPRESSED, {"input": {**flow_input, "idempotency_key": "k2"}})
    assert changed != first


def test_register_tasks_dedupes_by_slug_with_new_ids(inproc_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1", tasks=())
    query = "mutation($input: register_tasks_input!) { register_tasks(input: $input) { success } }"
    tasks = [{"slug": "add-1", "name": "add"}, {"slug": "p", "name": "p"}]
    for _ in range(2):
        assert api.call(inproc_server, query, {"input": {"flow_id": flow_id, "serialized_tasks": tasks}}) == {
            "register_tasks": {"success": True}
        }
    rows = api.call(inproc_server, f'query {{ flow_by_pk(id: "{flow_id}") {{ tasks {{ id slug }} }} }}')
    slugs = sorted(t["slug"] for t in rows["flow_by_pk"]["tasks"])
    assert slugs == ["add-1", "p"]


def test_bad_serialized_flows(inproc_server: InProcessServer) -> None:
    project = api.create_project(inproc_server, "proj")
    for bad in (
        "not base64!",
        compress({"name": "x"}),
        base64.b64encode(b"plain").decode(),
        compress(serialized_flow(__version__="0.5.0")),
    ):
        body = inproc_server.graphql(
            CREATE_COMPRESSED, {"input": {"project_id": project, "serialized_flow": bad}}
        )
        assert body["errors"] and body["data"] == {"create_flow_from_compressed_string": None}
    assert api.call(inproc_server, "query { flow { id } }") == {"flow": []}


def test_create_flow_run_defaults(inproc_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(
        inproc_server,
        name="f",
        image_name="i",
        image_tag="1",
        tasks=("a", "b"),
        run_config={"type": "DockerRun", "labels": ["z", "y"]},
        parameters=[
            {"name": "p", "default": 1, "required": False},
            {"name": "q", "default": 0, "required": False},
            {"name": "r", "default": None, "required": True},
        ],
    )
    with pytest.raises(AssertionError, match="Required parameters were not supplied"):
        api.create_flow_run(inproc_server, flow_id)
    run_id = api.create_flow_run(inproc_server, flow_id, parameters={"r": "x"})
    run = api.flow_run(inproc_server, run_id)
    assert run["parameters"] == {"p": 1, "r": "x"}  # falsy defaults are dropped, like Prefect Server
    assert run["labels"] == ["y", "z"]
    assert run["run_config"]["type"] == "DockerRun" and run["context"] == {}
    assert run["name"] and len(run["task_runs"]) == 2


@pytest.mark.parametrize(
    ("labels", "run_config", "expected"),
    [
        (["b", "a"], {"type": "DockerRun", "labels": ["rc"]}, ["a", "b"]),
        (None, {"type": "DockerRun", "labels": ["rc"]}, ["rc"]),
        (None, None, ["from-flow"]),
        ([], None, []),
    ],
)
def test_label_precedence(
    inproc_server: InProcessServer, labels: Any, run_config: Any, expected: list[str]
) -> None:
    flow_id = api.register_docker_flow(
        inproc_server,
        name="f",
        image_name="i",
        image_tag="1",
        run_config={"type": "DockerRun", "labels": ["from-flow"]},
    )
    run_id = api.create_flow_run(inproc_server, flow_id, labels=labels, run_config=run_config)
    run = api.flow_run(inproc_server, run_id)
    assert run["labels"] == expected
    assert run["run_config"]["labels"] == (run_config or {"labels": ["from-flow"]})["labels"]


def test_idempotent_flow_run_and_naive_time_is_utc(inproc_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1")
    first = api.create_flow_run(
        inproc_server, flow_id, idempotency_key="abc", scheduled_start_time="2030-01-02T03:04:05"
    )
    assert api.create_flow_run(inproc_server, flow_id, idempotency_key="abc") == first
    run = api.flow_run(inproc_server, first)
    assert datetime.fromisoformat(run["scheduled_start_time"]) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert run["serialized_state"]["start_time"].startswith("2030-01-02T03:04:05")
    assert len(api.call(inproc_server, "query { flow_run { id } }")["flow_run"]) == 1


def test_an_empty_idempotency_key_is_no_key(inproc_server: InProcessServer) -> None:
    """Two runs with key "" are two runs (the unique key index must not refuse the second)."""
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1")
    first = api.create_flow_run(inproc_server, flow_id, idempotency_key="")
    second = api.create_flow_run(inproc_server, flow_id, idempotency_key="")
    assert first != second
    assert len(api.call(inproc_server, "query { flow_run { id } }")["flow_run"]) == 2


def test_unknown_flow(inproc_server: InProcessServer) -> None:
    with pytest.raises(AssertionError, match="Flow 00000000-0000-4000-8000-000000000000 not found"):
        api.create_flow_run(inproc_server, "00000000-0000-4000-8000-000000000000")


GET_OR_CREATE = (
    'mutation {{ get_or_create_task_run_info(input: {{ flow_run_id: "{run}", task_id: "{task}", '
    "map_index: {index} }}) {{ id version serialized_state }} }}"
)


def test_get_or_create_task_run_info(inproc_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1")
    run_id = api.create_flow_run(inproc_server, flow_id)
    parent = api.flow_run(inproc_server, run_id)["task_runs"][0]
    task_id = parent["task"]["id"]
    found = api.call(inproc_server, GET_OR_CREATE.format(run=run_id, task=task_id, index=-1))
    assert found["get_or_create_task_run_info"]["id"] == parent["id"]
    children = [
        api.call(inproc_server, GET_OR_CREATE.format(run=run_id, task=task_id, index=i))[
            "get_or_create_task_run_info"
        ]
        for i in (0, 1, 0)
    ]
    assert children[0] == children[2] and children[0]["id"] != children[1]["id"]
    assert children[1]["version"] == 0 and children[1]["serialized_state"]["type"] == "Pending"
    assert len(api.flow_run(inproc_server, run_id)["task_runs"]) == 3
    other = api.register_docker_flow(inproc_server, name="g", image_name="i", image_tag="1")
    foreign = api.flow_run(inproc_server, api.create_flow_run(inproc_server, other))["task_runs"][0]["task"][
        "id"
    ]
    body = inproc_server.graphql(GET_OR_CREATE.format(run=run_id, task=foreign, index=-1))
    assert body["errors"][0]["message"] == "Invalid task ID."


LOGS = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"


def test_write_run_logs_list_or_object_and_read_back(inproc_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1")
    run_id = api.create_flow_run(inproc_server, flow_id)
    entry = {"flow_run_id": run_id, "name": "agent", "message": "hi 'quoted' \"x\" 🚀", "level": "INFO"}
    assert api.call(inproc_server, LOGS, {"input": {"logs": [entry]}}) == {
        "write_run_logs": {"success": True}
    }
    single = {
        **entry,
        "level": "ERROR",
        "message": "single",
        "timestamp": "2099-01-01T00:00:00+00:00",
        "info": {"k": [1]},
    }
    assert api.call(inproc_server, LOGS, {"input": {"logs": single}}) == {"write_run_logs": {"success": True}}
    logs = api.run_logs(inproc_server, run_id)
    assert [(log["level"], log["message"]) for log in logs] == [
        ("INFO", entry["message"]),
        ("ERROR", "single"),
    ]
    assert logs[1]["info"] == {"k": [1]} and logs[0]["timestamp"]
    unknown = {**entry, "flow_run_id": "00000000-0000-4000-8000-000000000000"}
    body = inproc_server.graphql(LOGS, {"input": {"logs": [entry, unknown]}})
    assert body["errors"] and len(api.run_logs(inproc_server, run_id)) == 2


def test_heartbeat_and_names(inproc_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1")
    run_id = api.create_flow_run(inproc_server, flow_id)
    assert api.flow_run(inproc_server, run_id)["heartbeat"] is None
    beat = api.call(
        inproc_server,
        f'mutation {{ update_flow_run_heartbeat(input: {{ flow_run_id: "{run_id}" }}) {{ success }} }}',
    )
    assert beat == {"update_flow_run_heartbeat": {"success": True}}
    assert api.flow_run(inproc_server, run_id)["heartbeat"] is not None
    rename = "mutation($input: set_flow_run_name_input!) { set_flow_run_name(input: $input) { success } }"
    api.call(inproc_server, rename, {"input": {"flow_run_id": run_id, "name": "renamed"}})
    task_run = api.flow_run(inproc_server, run_id)["task_runs"][0]["id"]
    rename_task = (
        "mutation($input: set_task_run_name_input!) { set_task_run_name(input: $input) { success } }"
    )
    api.call(inproc_server, rename_task, {"input": {"task_run_id": task_run, "name": "t-1"}})
    run = api.call(
        inproc_server, f'query {{ flow_run_by_pk(id: "{run_id}") {{ name task_runs {{ name }} }} }}'
    )
    assert run["flow_run_by_pk"] == {"name": "renamed", "task_runs": [{"name": "t-1"}]}


def test_cached_task_runs_query_is_real(inproc_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1")
    run_id = api.create_flow_run(inproc_server, flow_id)
    api.set_flow_run_state(inproc_server, run_id, {"type": "Running"})
    task_run = api.flow_run(inproc_server, run_id)["task_runs"][0]
    cached_state = {"type": "Cached", "message": "cached"}
    assert "errors" not in api.set_task_run_state(inproc_server, task_run["id"], cached_state)
    cached = (
        'query { task_run(where: { state: { _eq: "Cached" }, '
        'state_timestamp: { _gte: "2020-01-01T00:00:00+00:00" }, '
        'task_id: { _eq: "%s" } }, order_by: { state_timestamp: desc }, limit: 100) { serialized_state } }'
    )
    rows = api.call(inproc_server, cached % task_run["task"]["id"])["task_run"]
    assert rows == [{"serialized_state": {"type": "Cached", "message": "cached"}}]
