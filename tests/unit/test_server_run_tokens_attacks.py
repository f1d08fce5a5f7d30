"""A FLOW_RUN token holder attacks the real GraphQL service (in process, hypothesis-generated operations).

The world: tenant A with the token's run and a second run of the same flow, tenant B with a run of its own
flow, each with task runs, states and logs. Every root field of the schema is tried with ids drawn from all
of them and from random UUIDs; `where` filters on flow_run / task_run / log are generated with `_or`,
`_not` and `_and`. After each attempt: nothing outside the token's run changed in the database, no id
outside it appears in `data`, every error is a clean one, and naming another run reads exactly like naming
an unknown id.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from server import db, run_scope
from server.auth import create_tenant, create_token
from server.schema import build
from tests.support import api
from tests.support.server_fixtures import InProcessServer

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CLEAN_CODES = {"FORBIDDEN", "NOT_FOUND", "BAD_REQUEST", "BAD_USER_INPUT", "STATE_UPDATE_FAILED",
               "VERSION_LOCKING_ERROR", "LIMIT_EXCEEDED"}
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class World:
    server: InProcessServer
    token: str
    admin: str
    ids: dict[str, str]  # role -> id ("own_run", "same_tenant_run", "foreign_run", ...)
    foreign: set[str]  # ids of everything outside the token's run


def _seed_run(server: InProcessServer, token: str, flow_id: str, running: bool = True) -> tuple[str, str]:
    """A run with a task run and a log; Running, or left Scheduled (then it is in the queue)."""
    run_id = api.create_flow_run(server, flow_id, token=token)
    task_run = api.flow_run(server, run_id, token)["task_runs"][0]["id"]
    if running:
        api.call(server, api.SET_STATES, {"input": {"states": [
            {"flow_run_id": run_id, "state": {"type": "Running"}}]}}, token)
    api.call(server, "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }",
             {"input": {"logs": [{"flow_run_id": run_id, "task_run_id": task_run, "message": "secret"}]}},
             token)
    return run_id, task_run


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, module_database_url_factory: Callable[..., str]
) -> Iterator[World]:
    server = InProcessServer(tmp_path_factory.mktemp("attacks"), auth="token",
                             database_url=module_database_url_factory())
    engine = server.services.engine
    admin, user = server.create_token("ADMIN"), server.create_token("USER")
    flow_a = api.register_docker_flow(server, name="a", image_name="i", image_tag="1", token=user)
    own_run, own_task_run = _seed_run(server, user, flow_a)
    same_run, same_task_run = _seed_run(server, user, flow_a, running=False)
    tenant_b = create_tenant(engine, "b", "b")
    user_b = create_token(engine, "USER", "b", tenant_slug="b")
    flow_b = api.register_docker_flow(server, name="b", image_name="i", image_tag="1", token=user_b)
    foreign_run, foreign_task_run = _seed_run(server, user_b, flow_b)
    token = api.create_flow_run_token(server, own_run, user)
    ids = {"own_run": own_run, "own_task_run": own_task_run, "own_flow": flow_a,
           "same_tenant_run": same_run, "same_tenant_task_run": same_task_run, "foreign_run": foreign_run,
           "foreign_task_run": foreign_task_run, "foreign_flow": flow_b,
           "tenant_a": api.tenant_id(server, user), "tenant_b": tenant_b,
           "own_task": api.flow_run(server, own_run, user)["task_runs"][0]["task"]["id"],
           "foreign_task": api.flow_run(server, foreign_run, user_b)["task_runs"][0]["task"]["id"],
           "project_b": api.ensure_project(server, "tests", user_b)}
    with db.read_tx(engine) as conn:
        foreign = {row.id for t in (db.flow_run, db.task_run, db.log, db.flow, db.task, db.project)
                   for row in conn.execute(select(t.c.id))}
    foreign -= _own_ids(server, own_run) | {flow_a}
    foreign.add(tenant_b)
    yield World(server, token, admin, ids, foreign)
    server.close()


def _own_ids(server: InProcessServer, run_id: str) -> set[str]:
    with db.read_tx(server.services.engine) as conn:
        rows = [conn.execute(select(t.c.id).where(t.c.flow_run_id == run_id)).scalars().all()
                for t in (db.task_run, db.log)]
        flow_id = conn.execute(select(db.flow_run.c.flow_id).where(db.flow_run.c.id == run_id)).scalar_one()
        tasks = conn.execute(select(db.task.c.id).where(db.task.c.flow_id == flow_id)).scalars().all()
        project = conn.execute(select(db.flow.c.project_id).where(db.flow.c.id == flow_id)).scalar_one()
    return {run_id, project, *tasks, *rows[0], *rows[1]}


def outside_snapshot(world: World) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table except those of the token's run (its run, task runs, their states, logs)."""
    own_run = world.ids["own_run"]
    with db.read_tx(world.server.services.engine) as conn:
        own_task_runs = set(conn.execute(select(db.task_run.c.id).where(
            db.task_run.c.flow_run_id == own_run)).scalars())
        snapshot = {}
        for table in db.metadata.sorted_tables:
            rows = conn.execute(select(table)).all()
            snapshot[table.name] = sorted(tuple(map(str, row)) for row in rows
                                           if not _is_own(table.name, row._mapping, own_run, own_task_runs))
    return snapshot


def _is_own(table: str, row: Any, own_run: str, own_task_runs: set[str]) -> bool:
    if table == "flow_run":
        return bool(row["id"] == own_run)
    if table in ("task_run", "flow_run_state", "log"):
        return bool(row["flow_run_id"] == own_run)
    if table == "task_run_state":
        return row["task_run_id"] in own_task_runs
    return False


# ------------------------------------------------------------------------------------ one call per root field
Call = tuple[str, dict[str, Any]]
STATE = {"type": "Running", "message": "attack"}


def _input(field: str, kind: str, fields: str = "success") -> Callable[[dict[str, Any]], Call]:
    return lambda value: (f"mutation($input: {kind}!) {{ {field}(input: $input) {{ {fields} }} }}",
                          {"input": value})


def _by_id(field: str, arg: str = "id", kind: str = "uuid") -> Callable[[str], Call]:
    return lambda value: (f"query($v: {kind}!) {{ {field}({arg}: $v) {{ id }} }}", {"v": value})


FLOW = {"__version__": "1.4.1", "name": "x", "tasks": [], "edges": []}
ROOT_CALLS: dict[str, Callable[[dict[str, str], str], Call]] = {
    "hello": lambda ids, x: ("query { hello }", {}),
    "api": lambda ids, x: ("query { api { capabilities } }", {}),
    "auth_info": lambda ids, x: ("query { auth_info { tenant_id } }", {}),
    "tenant": lambda ids, x: ("query { tenant { id } }", {}),
    "project": lambda ids, x: ("query { project { id tenant_id } }", {}),
    "flow": lambda ids, x: ("query { flow { id tenant_id tasks { id } project { id } } }", {}),
    "agent_config": lambda ids, x: ("query { agent_config { id } }", {}),
    "agent": lambda ids, x: ("query($v: uuid) { agent(where: {id: {_neq: $v}}) { id name } }", {"v": x}),
    "flow_by_pk": lambda ids, x: _by_id("flow_by_pk")(x),
    "flow_run": lambda ids, x: (
        "query($v: uuid) { flow_run(where: {id: {_neq: $v}}) { id flow { id } task_runs { id } } }",
        {"v": x}),
    "flow_run_by_pk": lambda ids, x: _by_id("flow_run_by_pk")(x),
    "task_run": lambda ids, x: (
        "query($v: uuid) { task_run(where: {id: {_neq: $v}}) { id flow_run { id } } }", {"v": x}),
    "task_run_by_pk": lambda ids, x: _by_id("task_run_by_pk")(x),
    "log": lambda ids, x: ("query($v: uuid) { log(where: {flow_run_id: {_neq: $v}}) { id flow_run_id } }",
                           {"v": x}),
    "get_task_run_info": lambda ids, x: _by_id("get_task_run_info", "task_run_id", "UUID")(x),
    "create_tenant": lambda ids, x: _input("create_tenant", "create_tenant_input", "id")(
        {"name": x, "slug": x}),
    "create_project": lambda ids, x: _input("create_project", "create_project_input", "id")(
        {"tenant_id": x, "name": x}),
    "create_flow_from_compressed_string": lambda ids, x: _input(
        "create_flow_from_compressed_string", "create_flow_from_compressed_string_input", "id")(
        {"serialized_flow": "H4sI", "project_id": x}),
    "create_flow": lambda ids, x: _input("create_flow", "create_flow_input", "id")(
        {"serialized_flow": FLOW, "project_id": x}),
    "register_tasks": lambda ids, x: _input("register_tasks", "register_tasks_input")(
        {"serialized_tasks": [{"slug": "evil"}], "flow_id": x}),
    "register_edges": lambda ids, x: _input("register_edges", "register_edges_input")(
        {"serialized_edges": [], "flow_id": x}),
    "set_schedule_active": lambda ids, x: _input("set_schedule_active", "set_schedule_active_input")(
        {"flow_id": x}),
    "set_schedule_inactive": lambda ids, x: _input("set_schedule_inactive", "set_schedule_inactive_input")(
        {"flow_id": x}),
    "create_flow_run": lambda ids, x: _input("create_flow_run", "create_flow_run_input", "id")(
        {"flow_id": x}),
    "cancel_flow_run": lambda ids, x: _input("cancel_flow_run", "cancel_flow_run_input", "state")(
        {"flow_run_id": x}),
    "set_flow_run_name": lambda ids, x: _input("set_flow_run_name", "set_flow_run_name_input")(
        {"flow_run_id": x, "name": "evil"}),
    "set_task_run_name": lambda ids, x: _input("set_task_run_name", "set_task_run_name_input")(
        {"task_run_id": x, "name": "evil"}),
    "register_agent": lambda ids, x: _input("register_agent", "register_agent_input", "id")(
        {"tenant_id": x, "type": "DockerAgent"}),
    "get_runs_in_queue": lambda ids, x: _input(
        "get_runs_in_queue", "get_runs_in_queue_input", "flow_run_ids")({"tenant_id": x}),
    "set_flow_run_states": lambda ids, x: _input("set_flow_run_states", "set_flow_run_states_input",
                                                 "states { id status }")(
        {"states": [{"flow_run_id": ids["own_run"], "state": STATE}, {"flow_run_id": x, "state": STATE}]}),
    "set_task_run_states": lambda ids, x: _input("set_task_run_states", "set_task_run_states_input",
                                                 "states { id status }")(
        {"states": [{"task_run_id": x, "state": {"type": "Success"}}]}),
    "get_or_create_task_run_info": lambda ids, x: _input(
        "get_or_create_task_run_info", "get_or_create_task_run_info_input", "id")(
        {"flow_run_id": x, "task_id": ids["foreign_task"], "map_index": 7}),
    "update_flow_run_heartbeat": lambda ids, x: _input(
        "update_flow_run_heartbeat", "update_flow_run_heartbeat_input")({"flow_run_id": x}),
    "update_task_run_heartbeat": lambda ids, x: _input(
        "update_task_run_heartbeat", "update_task_run_heartbeat_input")({"task_run_id": x}),
    "write_run_logs": lambda ids, x: _input("write_run_logs", "write_run_logs_input")(
        {"logs": [{"flow_run_id": ids["own_run"], "task_run_id": x, "message": "m"},
                  {"flow_run_id": x, "message": "m"}]}),
    "create_flow_run_token": lambda ids, x: _input("create_flow_run_token", "create_flow_run_token_input",
                                                   "token")({"flow_run_id": x}),
}
ROLES = ("own_run", "own_task_run", "own_flow", "same_tenant_run", "same_tenant_task_run", "foreign_run",
         "foreign_task_run", "foreign_flow", "tenant_a", "tenant_b", "own_task", "foreign_task", "project_b")
FOREIGN_ROLES = ("same_tenant_run", "same_tenant_task_run", "foreign_run", "foreign_task_run", "foreign_flow")


def test_every_root_field_of_the_schema_is_attacked() -> None:
    schema = build()
    assert schema.query_type is not None and schema.mutation_type is not None
    assert set(ROOT_CALLS) == {*schema.query_type.fields, *schema.mutation_type.fields}


def assert_contained(world: World, body: dict[str, Any]) -> None:
    """No foreign id in `data`; every error clean (a known code, no traceback, no internal error)."""
    leaked = set(UUID_RE.findall(json.dumps(body.get("data")))) & world.foreign
    assert not leaked, body
    for error in body.get("errors") or []:
        code = error.get("extensions", {}).get("code")
        assert code in CLEAN_CODES, error
        assert "Traceback" not in error["message"] and "Internal" not in error["message"], error


def attempt(world: World, call: Call) -> dict[str, Any]:
    before = outside_snapshot(world)
    body = world.server.graphql(call[0], call[1], token=world.token)
    assert world.server.last_status in (200, 400), body
    assert_contained(world, body)
    assert outside_snapshot(world) == before, call
    return body


REFUSED = sorted(set(ROOT_CALLS) - set(run_scope.ROOT_FIELDS))
NAMING_RUNS = ("flow_by_pk", "flow_run_by_pk", "task_run_by_pk", "get_task_run_info", "set_flow_run_states",
               "set_task_run_states", "get_or_create_task_run_info", "update_flow_run_heartbeat",
               "update_task_run_heartbeat", "set_task_run_name", "write_run_logs")


@pytest.mark.parametrize("field", REFUSED)
def test_fields_outside_the_allow_list_are_refused_by_name(world: World, field: str) -> None:
    expected = (f"FORBIDDEN: this API token is for flow run {world.ids['own_run']} only; "
                f"{field} is not allowed with it.")
    for role in ("own_run", "tenant_a", "own_flow"):
        body = attempt(world, ROOT_CALLS[field](world.ids, world.ids[role]))
        assert [(e["extensions"]["code"], e["message"]) for e in body["errors"]] == [("FORBIDDEN", expected)]


@pytest.mark.parametrize("field", NAMING_RUNS)
@pytest.mark.parametrize("role", FOREIGN_ROLES)
def test_naming_anything_outside_the_run_is_forbidden(world: World, field: str, role: str) -> None:
    body = attempt(world, ROOT_CALLS[field](world.ids, world.ids[role]))
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    assert body["errors"][0]["message"].endswith(f" {world.ids[role]} is outside it."), body


targets = st.one_of(st.sampled_from(ROLES), st.uuids().map(str))


@HYPOTHESIS
@given(field=st.sampled_from(sorted(ROOT_CALLS)), target=targets)
def test_no_root_field_reaches_outside_the_run(world: World, field: str, target: str) -> None:
    value = world.ids.get(target, target)
    attempt(world, ROOT_CALLS[field](world.ids, value))


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(sorted(ROOT_CALLS)), role=st.sampled_from(FOREIGN_ROLES), unknown=st.uuids())
def test_naming_another_run_reads_like_naming_an_unknown_id(
    world: World, field: str, role: str, unknown: uuid.UUID
) -> None:
    """Existence never leaks: the answer for a real foreign id equals the one for a random id."""
    real, fake = world.ids[role], str(unknown)
    answers = [attempt(world, ROOT_CALLS[field](world.ids, value)) for value in (real, fake)]
    assert json.dumps(answers[0]).replace(real, fake) == json.dumps(answers[1])


# ----------------------------------------------------------------------------------------- where filters
def literal(value: Any) -> str:
    """A Python value as a GraphQL input literal (keys unquoted, strings JSON-quoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return json.dumps(value)


def bool_exps(ids: st.SearchStrategy[str], run_key: str) -> st.SearchStrategy[dict[str, Any]]:
    leaves = st.one_of(
        st.builds(lambda i: {"id": {"_eq": i}}, ids), st.builds(lambda i: {"id": {"_neq": i}}, ids),
        st.builds(lambda i: {run_key: {"_in": [i]}}, ids), st.builds(lambda i: {run_key: {"_nin": [i]}}, ids),
        st.builds(lambda b: {"id": {"_is_null": b}}, st.booleans()), st.just({}),
    )
    return st.recursive(leaves, lambda inner: st.one_of(
        st.builds(lambda a: {"_or": a}, st.lists(inner, max_size=3)),
        st.builds(lambda a: {"_and": a}, st.lists(inner, max_size=3)),
        st.builds(lambda a: {"_not": a}, inner)), max_leaves=6)


FILTERED = {"flow_run": ("id", "id flow { id } task_runs { id }"),
            "task_run": ("flow_run_id", "id flow_run_id"), "log": ("flow_run_id", "id flow_run_id message")}


@HYPOTHESIS
@given(data=st.data(), kind=st.sampled_from(sorted(FILTERED)))
def test_where_filters_never_list_another_run(world: World, data: st.DataObject, kind: str) -> None:
    ids = st.one_of(st.sampled_from(ROLES).map(lambda r: world.ids[r]), st.uuids().map(str))
    run_key, fields = FILTERED[kind]
    where = data.draw(bool_exps(ids, run_key))
    body = attempt(world, (f"query {{ {kind}(where: {literal(where)}) {{ {fields} }} }}", {}))
    rows = body["data"][kind]
    own = world.ids["own_run"]
    assert all((row["id"] if kind == "flow_run" else row["flow_run_id"]) == own for row in rows), rows
