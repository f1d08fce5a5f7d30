"""The same request means the same on SQLite and PostgreSQL: filters select the same rows, and input one store
cannot hold is a clear client error there, never an INTERNAL_SERVER_ERROR (in process, both backends)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from server.filters import like_to_glob
from tests.support import api
from tests.support.server_fixtures import InProcessServer

NAMES = ["Alpha", "alpha", "al%pha", "al_pha", "a\\lpha", "[a]*?", "beta"]
RUNS_NAMED = "query($w: flow_run_bool_exp) { flow_run(where: $w, order_by: {name: asc}) { name } }"


@pytest.fixture
def named_runs(inproc_server: InProcessServer) -> InProcessServer:
    flow_id = api.register_docker_flow(inproc_server, name="f", image_name="i", image_tag="1")
    for name in NAMES:
        api.create_flow_run(inproc_server, flow_id, name=name)
    return inproc_server


def names(server: InProcessServer, where: dict[str, Any]) -> set[str]:
    return {run["name"] for run in api.call(server, RUNS_NAMED, {"w": where})["flow_run"]}


@pytest.mark.parametrize(("operator", "pattern", "expected"), [
    ("_like", "alpha", {"alpha"}),  # case-sensitive, as on Hasura's PostgreSQL
    ("_like", "Al%", {"Alpha"}),
    ("_like", "al_pha", {"al%pha", "al_pha"}),  # `_` is the one-character wildcard
    ("_like", "a\\lpha", {"a\\lpha"}),  # a backslash matches itself: no escape character
    ("_like", "[a]*?", {"[a]*?"}),  # GLOB's own wildcards are plain characters
    ("_like", "%", set(NAMES)),
    ("_ilike", "ALPHA", {"Alpha", "alpha"}),
    ("_ilike", "%\\%", {"a\\lpha"}),
    ("_ilike", "b%", {"beta"}),
])
def test_like_and_ilike_select_the_same_rows_on_every_store(
    named_runs: InProcessServer, operator: str, pattern: str, expected: set[str]
) -> None:
    assert names(named_runs, {"name": {operator: pattern}}) == expected


def test_like_to_glob_quotes_globs_wildcards() -> None:
    assert like_to_glob("a%b_c*d?e[f]") == "a*b?c[*]d[?]e[[]f]"


def test_an_empty_in_list_matches_nothing_and_an_empty_nin_everything(named_runs: InProcessServer) -> None:
    assert names(named_runs, {"name": {"_in": []}}) == set()
    assert names(named_runs, {"name": {"_nin": []}}) == set(NAMES)


@pytest.mark.parametrize(("direction", "null_first"), [
    ("asc", False), ("desc", True), ("asc_nulls_first", True), ("desc_nulls_last", False)])
def test_nulls_sort_as_on_hasuras_postgres(
    named_runs: InProcessServer, direction: str, null_first: bool
) -> None:
    query = "query($o: [flow_run_order_by!]) { flow_run(order_by: $o) { name state_start_time } }"
    api.set_flow_run_state(named_runs, _run_id(named_runs, "beta"), {"type": "Success"})
    runs = api.call(named_runs, query, {"o": [{"state_start_time": direction}]})["flow_run"]
    nulls = [run["name"] for run in runs if run["state_start_time"] is None]
    assert nulls == ["beta"]
    assert runs[0 if null_first else -1]["name"] == "beta"


def _run_id(server: InProcessServer, name: str) -> str:
    query = "query($n: String) { flow_run(where: {name: {_eq: $n}}) { id } }"
    return str(api.call(server, query, {"n": name})["flow_run"][0]["id"])


def _code(body: dict[str, Any]) -> str:
    assert body.get("errors"), body
    return str(body["errors"][0]["extensions"]["code"])


CREATE_PROJECT = "mutation($input: create_project_input!) { create_project(input: $input) { id } }"
REGISTER_AGENT = "mutation($input: register_agent_input!) { register_agent(input: $input) { id } }"


def _nul_in_a_name(server: InProcessServer) -> dict[str, Any]:
    return server.graphql(CREATE_PROJECT, {"input": {"name": "a\u0000b", "tenant_id": api.tenant_id(server)}})


def _nul_in_json(server: InProcessServer) -> dict[str, Any]:
    flow_id = api.register_docker_flow(server, name="f", image_name="i", image_tag="1")
    create = "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }"
    return server.graphql(create, {"input": {"flow_id": flow_id, "parameters": {"k": "\u0000"}}})


def _long_agent_type(server: InProcessServer) -> dict[str, Any]:
    return server.graphql(REGISTER_AGENT, {"input": {"type": "T" * 300, "tenant_id": api.tenant_id(server)}})


def _long_core_version(server: InProcessServer) -> dict[str, Any]:
    agent = {"type": "DockerAgent", "tenant_id": api.tenant_id(server)}
    return server.graphql(REGISTER_AGENT, {"input": agent}, headers={"X-PREFECT-CORE-VERSION": "1." * 100})


HOSTILE_CASES = {"nul in a name": _nul_in_a_name, "nul in json": _nul_in_json,
                 "long agent type": _long_agent_type, "long core version": _long_core_version}


@pytest.mark.parametrize("case", list(HOSTILE_CASES.values()), ids=list(HOSTILE_CASES))
def test_input_a_store_cannot_hold_is_stored_or_refused_clearly(
    inproc_server: InProcessServer, db_backend: str, case: Callable[[InProcessServer], dict[str, Any]],
) -> None:
    """PostgreSQL refuses NUL in text and jsonb: that is the client's bad input, not a server fault."""
    body = case(inproc_server)
    assert "data" in body, body  # the request itself was well-formed
    assert "errors" not in body or _code(body) in ("BAD_USER_INPUT", "LIMIT_EXCEEDED"), body
