"""Bad and hostile input: a clear GraphQL error, the right status, and an unchanged database."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from server import db
from server.app import parse_body
from tests.support import api
from tests.support.server_fixtures import InProcessServer

HOSTILE = [
    "'; DROP TABLE flow_run; --",
    'quote " and \\ backslash',
    pytest.param("emoji 🚀🔥 and \u0000 nul", marks=pytest.mark.sqlite_only(
        reason="PostgreSQL text cannot hold NUL; test_server_store_parity checks the error it gives there")),
    "%_%",
    "x" * 250,
]


def total_rows(server: InProcessServer) -> int:
    with db.read_tx(server.services.engine) as conn:
        return sum(
            conn.execute(select(func.count()).select_from(t)).scalar_one() for t in db.metadata.sorted_tables
        )


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        ("query { nope }", None),
        ("query { flow_run { id nope } }", None),
        ("mutation { create_project(input: {name: 1}) { id } }", None),
        ("query {", None),
        (
            "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }",
            {"input": {"flow_id": 5}},
        ),
        (
            "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }",
            {"input": {"x": 1}},
        ),
        ("mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }", None),
        ('query { flow_run(where: {scheduled_start_time: {_lte: "yesterday"}}) { id } }', None),
        ("subscription { hello }", None),
    ],
)
def test_invalid_documents_and_variables_are_400(
    inproc_server: InProcessServer, query: str, variables: dict[str, object] | None
) -> None:
    before = total_rows(inproc_server)
    body = inproc_server.graphql(query, variables)
    assert inproc_server.last_status == 400, body
    assert body["errors"] and all(e["message"] for e in body["errors"])
    assert body["errors"][0]["extensions"]["code"] in {"GRAPHQL_VALIDATION_FAILED", "BAD_USER_INPUT"}
    assert total_rows(inproc_server) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b'{"query": 5}',
        b'{"query": "{ hello }", "variables": "{"}',
        b'{"query": "{ hello }", "variables": "[1]"}',
        b"\xff\xfe",
    ],
)
def test_malformed_bodies_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_body(raw)


def test_variables_may_be_a_string_null_or_an_object() -> None:
    assert parse_body(b'{"query": "{ hello }", "variables": "null"}')["variables"] is None
    assert parse_body(b'{"query": "{ hello }", "variables": {"a": 1}}')["variables"] == {"a": 1}
    assert parse_body(json.dumps({"query": "q", "variables": '{"a": 2}'}).encode())["variables"] == {"a": 2}


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_are_stored_verbatim(inproc_server: InProcessServer, text: str) -> None:
    project = api.create_project(inproc_server, text)
    found = api.call(
        inproc_server, "query($n: String) { project(where: {name: {_eq: $n}}) { id name } }", {"n": text}
    )
    assert found["project"] == [{"id": project, "name": text}]
    flow_id = api.register_docker_flow(
        inproc_server, name=text, image_name="i", image_tag="1", project_id=project
    )
    run_id = api.create_flow_run(inproc_server, flow_id, name=text, labels=[text], parameters={text: text})
    run = api.flow_run(inproc_server, run_id)
    assert (run["name"], run["labels"], run["parameters"]) == (text, [text], {text: text})
    like = api.call(
        inproc_server, "query($n: String) { flow_run(where: {name: {_like: $n}}) { id } }", {"n": text}
    )
    assert {"id": run_id} in like["flow_run"]
    assert len(api.call(inproc_server, "query { flow_run { id } }")["flow_run"]) == 1


def test_overlong_names_are_rejected(inproc_server: InProcessServer) -> None:
    with pytest.raises(AssertionError, match="too long"):
        api.create_project(inproc_server, "x" * 5000)
    assert api.call(inproc_server, "query { project { id } }") == {"project": []}


def test_unknown_ids_are_clear_errors_with_no_change(inproc_server: InProcessServer) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    before = total_rows(inproc_server)
    for query in (
        f'mutation {{ update_flow_run_heartbeat(input: {{ flow_run_id: "{unknown}" }}) {{ success }} }}',
        f'mutation {{ cancel_flow_run(input: {{ flow_run_id: "{unknown}" }}) {{ state }} }}',
        f'mutation {{ get_or_create_task_run_info(input: {{ flow_run_id: "{unknown}", '
        f'task_id: "{unknown}" }}) '
        "{ id } }",
        f'query {{ get_task_run_info(task_run_id: "{unknown}") {{ id }} }}',
        f'mutation {{ set_flow_run_name(input: {{ flow_run_id: "{unknown}", name: "x" }}) {{ success }} }}',
        f'mutation {{ register_tasks(input: {{ flow_id: "{unknown}", serialized_tasks: [] }}) '
        "{ success } }",
        f'mutation {{ create_project(input: {{ tenant_id: "{unknown}", name: "x" }}) {{ id }} }}',
    ):
        body = inproc_server.graphql(query)
        assert inproc_server.last_status == 200
        assert body["errors"][0]["message"] and body["errors"][0]["path"], body
        assert unknown in body["errors"][0]["message"] or "Invalid" in body["errors"][0]["message"]
        assert "API_ERROR" not in json.dumps(body)
    assert inproc_server.graphql(f'query {{ flow_run_by_pk(id: "{unknown}") {{ id }} }}') == {
        "data": {"flow_run_by_pk": None}
    }
    assert total_rows(inproc_server) == before


def test_every_selected_field_is_present(inproc_server: InProcessServer) -> None:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1")
    api.create_flow_run(inproc_server, flow_id)
    fields = (
        "id name flow_id tenant_id version state serialized_state state_start_time state_timestamp "
        "state_message scheduled_start_time start_time end_time heartbeat parameters context labels "
        "run_config agent_id"
    )
    row = api.call(inproc_server, f"query {{ flow_run {{ {fields} flow {{ environment settings }} }} }}")[
        "flow_run"
    ][0]
    assert set(row) == {*fields.split(), "flow"}
    assert row["flow"] == {"environment": None, "settings": {}}
