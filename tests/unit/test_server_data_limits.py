"""Data limits: each refused with LIMIT_EXCEEDED naming its setting, nothing stored; at the limit accepted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import api
from tests.support.server_fixtures import InProcessServer

LIMITS: dict[str, Any] = {
    "max_tasks_per_flow": 5, "max_edges_per_flow": 3, "max_states_per_request": 2, "max_logs_per_request": 3,
    "max_log_message_bytes": 10, "list_default_limit": 3, "list_max_limit": 4, "max_name_chars": 8,
    "max_labels": 2, "max_label_chars": 4, "max_json_bytes": 20, "max_key_chars": 6, "write_batch_rows": 2,
    "max_rows_per_request": 1000,
}
CREATE_FLOW = "mutation($input: create_flow_input!) { create_flow(input: $input) { id } }"
CREATE_RUN = "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }"
WRITE_LOGS = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"
SET_TASKS = ("mutation($input: set_task_run_states_input!) "
             "{ set_task_run_states(input: $input) { states { id } } }")


@pytest.fixture
def srv(tmp_path: Path, database_url: str) -> Iterator[InProcessServer]:
    handle = InProcessServer(tmp_path, database_url=database_url, **LIMITS)
    yield handle
    handle.close()


def refused(body: dict[str, Any], setting: str) -> str:
    """The one error's message; asserts the code and that it names the setting's variable."""
    assert body.get("errors"), body
    error = body["errors"][0]
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED", error
    assert f"LOCAL_AGENT_SERVER_{setting.upper()}" in error["message"], error
    return str(error["message"])


def serialized_flow(tasks: int, edges: int = 0, name: str = "f") -> dict[str, Any]:
    task_list = [{"name": f"t{i}", "slug": f"t{i}-1", "type": "x", "__version__": "1.4.1"}
                 for i in range(tasks)]
    edge_list = [{"upstream_task": {"slug": "t0-1"}, "downstream_task": {"slug": f"t{i + 1}-1"}}
                 for i in range(edges)]
    return {"__version__": "1.4.1", "name": name, "type": "prefect.core.flow.Flow", "parameters": [],
            "storage": None, "run_config": None, "tasks": task_list, "edges": edge_list}


def create_flow(srv: InProcessServer, flow: dict[str, Any]) -> dict[str, Any]:
    project = api.ensure_project(srv, "p")
    return srv.graphql(CREATE_FLOW, {"input": {"project_id": project, "serialized_flow": flow}})


def flow_count(srv: InProcessServer) -> int:
    return len(api.call(srv, "query { flow { id } }")["flow"])


def test_a_flow_at_the_task_limit_is_stored_with_every_task_and_edge(srv: InProcessServer) -> None:
    body = create_flow(srv, serialized_flow(5, edges=3))
    flow_id = body["data"]["create_flow"]["id"]
    rows = api.call(srv, "query($id: uuid!) { flow_by_pk(id: $id) { tasks { slug } } }", {"id": flow_id})
    assert len(rows["flow_by_pk"]["tasks"]) == 5  # written in batches of 2
    run_id = api.create_flow_run(srv, flow_id)
    assert len(api.flow_run(srv, run_id)["task_runs"]) == 5


def test_one_task_over_the_limit_is_refused_and_nothing_is_stored(srv: InProcessServer) -> None:
    message = refused(create_flow(srv, serialized_flow(6)), "max_tasks_per_flow")
    assert "(6)" in message and "limit of 5" in message
    refused(create_flow(srv, serialized_flow(2, edges=4) | {"tasks": serialized_flow(5)["tasks"]}),
            "max_edges_per_flow")
    assert flow_count(srv) == 0


def test_register_tasks_counts_the_tasks_already_stored(srv: InProcessServer) -> None:
    flow_id = create_flow(srv, serialized_flow(4))["data"]["create_flow"]["id"]
    query = "mutation($input: register_tasks_input!) { register_tasks(input: $input) { success } }"
    extra = [{"slug": "new-1", "name": "new"}, {"slug": "new-2", "name": "new"}]
    over = srv.graphql(query, {"input": {"flow_id": flow_id, "serialized_tasks": extra}})
    refused(over, "max_tasks_per_flow")
    at_limit = extra[:1] + [{"slug": "t0-1"}]  # a repeated slug is ignored, not counted
    ok = srv.graphql(query, {"input": {"flow_id": flow_id, "serialized_tasks": at_limit}})
    assert ok["data"]["register_tasks"]["success"] is True


@pytest.fixture
def run_id(srv: InProcessServer) -> str:
    flow_id = create_flow(srv, serialized_flow(3))["data"]["create_flow"]["id"]
    return api.create_flow_run(srv, flow_id)


def test_states_per_request(srv: InProcessServer, run_id: str) -> None:
    task_runs = [t["id"] for t in api.flow_run(srv, run_id)["task_runs"]]
    states = [{"task_run_id": t, "state": {"type": "Failed", "message": "x"}} for t in task_runs]
    refused(srv.graphql(SET_TASKS, {"input": {"states": states}}), "max_states_per_request")
    assert {t["state"] for t in api.flow_run(srv, run_id)["task_runs"]} == {"Pending"}
    assert "errors" not in srv.graphql(SET_TASKS, {"input": {"states": states[:2]}})


def test_log_lines_and_message_size(srv: InProcessServer, run_id: str) -> None:
    def logs(*messages: str) -> dict[str, Any]:
        return {"input": {"logs": [{"flow_run_id": run_id, "message": m, "level": "INFO"} for m in messages]}}

    refused(srv.graphql(WRITE_LOGS, logs("a", "b", "c", "d")), "max_logs_per_request")
    refused(srv.graphql(WRITE_LOGS, logs("ok", "é" * 6)), "max_log_message_bytes")  # 12 bytes, 6 characters
    assert api.run_logs(srv, run_id) == []
    assert "errors" not in srv.graphql(WRITE_LOGS, logs("a", "b", "x" * 10))
    assert len(api.run_logs(srv, run_id)) == 3


def test_list_queries_have_a_default_and_are_capped_at_the_maximum(srv: InProcessServer) -> None:
    flow_id = create_flow(srv, serialized_flow(5))["data"]["create_flow"]["id"]
    for _ in range(6):
        api.create_flow_run(srv, flow_id)
    counts = {limit: len(api.call(srv, f"query {{ flow_run{limit} {{ id }} }}")["flow_run"])
              for limit in ("", "(limit: 2)", "(limit: 4)", "(limit: 500)")}
    assert counts == {"": 3, "(limit: 2)": 2, "(limit: 4)": 4, "(limit: 500)": 4}
    assert len(api.call(srv, "query { task_run(limit: 100) { id } }")["task_run"]) == 4
    # A flow run's own task runs: all of them by default (the runner reads them in one query).
    run = api.call(srv, "query { flow_run(limit: 1) { task_runs { id } } }")["flow_run"][0]
    assert len(run["task_runs"]) == 5
    negative = srv.graphql("query { flow_run(limit: -1) { id } }")
    assert negative["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize(("field", "value", "setting"), [
    ("flow_run_name", "n" * 9, "max_name_chars"),
    ("labels", ["a", "b", "c"], "max_labels"),
    ("labels", ["abcde"], "max_label_chars"),
    ("parameters", {"p": "x" * 20}, "max_json_bytes"),
    ("context", {"c": "x" * 20}, "max_json_bytes"),
    ("idempotency_key", "k" * 7, "max_key_chars"),
])
def test_run_input_strings(srv: InProcessServer, field: str, value: Any, setting: str) -> None:
    flow_id = create_flow(srv, serialized_flow(1))["data"]["create_flow"]["id"]
    refused(srv.graphql(CREATE_RUN, {"input": {"flow_id": flow_id, field: value}}), setting)
    assert api.call(srv, "query { flow_run { id } }")["flow_run"] == []


def nested_runs(depth: int) -> str:
    """flow_run -> flow -> flow_runs -> flow -> ...: each level of lists multiplies the rows."""
    inner = "id"
    for _ in range(depth - 1):
        inner = f"id flow {{ flow_runs(limit: 4) {{ {inner} }} }}"
    return f"query {{ flow_run(limit: 4) {{ {inner} }} }}"


def test_nested_lists_share_one_row_budget_per_request(srv: InProcessServer) -> None:
    """4 runs of one flow: 4 + 16 + 64 + 256 rows pass; one level more (1,024 more) is over 1,000 rows."""
    flow_id = create_flow(srv, serialized_flow(1))["data"]["create_flow"]["id"]
    for _ in range(4):
        api.create_flow_run(srv, flow_id)
    assert len(api.call(srv, nested_runs(4))["flow_run"]) == 4
    message = refused(srv.graphql(nested_runs(5)), "max_rows_per_request")
    assert "Rows read by this request" in message
    assert len(api.call(srv, "query { flow_run { id } }")["flow_run"]) == 3  # the next request starts afresh


def test_run_input_at_the_limits_is_accepted(srv: InProcessServer) -> None:
    flow_id = create_flow(srv, serialized_flow(1))["data"]["create_flow"]["id"]
    run_id = api.create_flow_run(srv, flow_id, name="n" * 8, labels=["abcd", "ef"],
                                 parameters={"p": "x" * 11}, idempotency_key="k" * 6)  # 20 bytes of JSON
    run = api.flow_run(srv, run_id)
    assert (run["name"], run["labels"]) == ("n" * 8, ["abcd", "ef"])


def test_names(srv: InProcessServer) -> None:
    refused(create_flow(srv, serialized_flow(1, name="f" * 9)), "max_name_chars")
    query = 'mutation($t: UUID!) { create_project(input: {tenant_id: $t, name: "ppppppppp"}) { id } }'
    project = srv.graphql(query, {"t": api.tenant_id(srv)})
    assert "too long" in refused(project, "max_name_chars")
    run_id = api.create_flow_run(srv, create_flow(srv, serialized_flow(1))["data"]["create_flow"]["id"])
    rename = ("mutation($id: UUID!, $n: String!) "
              "{ set_flow_run_name(input: {flow_run_id: $id, name: $n}) { success } }")
    refused(srv.graphql(rename, {"id": run_id, "n": "n" * 9}), "max_name_chars")
    assert api.call(srv, rename, {"id": run_id, "n": "n" * 8})["set_flow_run_name"]["success"] is True
