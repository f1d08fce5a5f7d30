"""FLOW_RUN tokens (in process, `--auth token`): minting, scope order, what the runner may do, expiry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from server import db, run_scope
from server.auth import create_tenant, create_token, hash_token
from server.context import SCOPES, RequestContext
from server.errors import ForbiddenError
from server.schema import build
from tests.support import api
from tests.support.server_fixtures import InProcessServer

LOG = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"


@dataclass
class World:
    server: InProcessServer
    user: str
    runner: str
    flow_id: str
    run_id: str
    other_run_id: str


def make_world(tmp_path: Path, database_url: str, **settings: Any) -> World:
    server = InProcessServer(tmp_path, auth="token", database_url=database_url, **settings)
    user, runner = server.create_token("USER"), server.create_token("RUNNER")
    flow_id = api.register_docker_flow(server, name="f", image_name="i", image_tag="1", token=user)
    runs = [api.create_flow_run(server, flow_id, token=user) for _ in range(2)]
    return World(server, user, runner, flow_id, runs[0], runs[1])


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    handle = make_world(tmp_path, database_url, token_cache_ttl_s=0)
    yield handle
    handle.server.close()


def code_of(body: dict[str, Any]) -> str:
    assert body.get("errors"), body
    return str(body["errors"][0]["extensions"]["code"])


def mint(world: World, run_id: str, token: str | None = None) -> dict[str, Any]:
    return world.server.graphql(api.CREATE_FLOW_RUN_TOKEN, {"input": {"flow_run_id": run_id}},
                                token=token or world.runner)


def log(world: World, token: str, run_id: str, task_run_id: str | None = None) -> dict[str, Any]:
    item = {"flow_run_id": run_id, "task_run_id": task_run_id, "message": "hi", "level": "INFO"}
    return world.server.graphql(LOG, {"input": {"logs": [item]}}, token=token)


def finish(world: World, run_id: str, state: str = "Success") -> None:
    assert "errors" not in api.set_flow_run_state(world.server, run_id, {"type": state}, token=world.runner)


# ------------------------------------------------------------------------------------------ scope and storage


def test_flow_run_scope_is_below_runner() -> None:
    assert SCOPES.index("FLOW_RUN") < SCOPES.index("RUNNER")
    ctx = RequestContext(services=None, scope="FLOW_RUN")  # type: ignore[arg-type]
    with pytest.raises(ForbiddenError, match="needs an API token with scope RUNNER"):
        ctx.require("RUNNER", "x")
    ctx.require("FLOW_RUN", "x")
    RequestContext(services=None, scope="RUNNER").require("FLOW_RUN", "x")  # type: ignore[arg-type]


def test_every_allowed_root_field_exists_in_the_schema() -> None:
    schema = build()
    assert schema.query_type is not None and schema.mutation_type is not None
    roots = {*schema.query_type.fields, *schema.mutation_type.fields}
    assert set(run_scope.ROOT_FIELDS) <= roots
    assert not {"get_runs_in_queue", "register_agent", "create_flow_run", "create_flow_run_token",
                "cancel_flow_run", "create_tenant"} & set(run_scope.ROOT_FIELDS)


def test_minted_token_is_stored_hashed_with_its_run_and_lifetime(world: World) -> None:
    body = mint(world, world.run_id)
    token, expires = body["data"]["create_flow_run_token"]["token"], body["data"]["create_flow_run_token"]
    with db.read_tx(world.server.services.engine) as conn:
        row = conn.execute(select(db.api_token).where(db.api_token.c.scope == "FLOW_RUN")).one()
    assert row.token_hash == hash_token(token) and token not in {str(v) for v in row}
    assert row.flow_run_id == world.run_id
    assert row.expires_at - row.created == timedelta(hours=72)
    assert expires["expires_at"] == row.expires_at.isoformat()
    assert api.call(world.server, "query { auth_info { api_token_scope } }", token=token) == {
        "auth_info": {"api_token_scope": "FLOW_RUN"}}


def test_cli_path_refuses_to_create_a_flow_run_token_without_a_run(world: World) -> None:
    with pytest.raises(ValueError, match="create_flow_run_token"):
        create_token(world.server.services.engine, "FLOW_RUN", "x")


# -------------------------------------------------------------------------------------------------- minting


def test_runner_user_and_admin_may_mint_and_tokens_coexist(world: World) -> None:
    admin = world.server.create_token("ADMIN")
    tokens = [api.create_flow_run_token(world.server, world.run_id, t)
              for t in (world.runner, world.user, admin)]
    assert len(set(tokens)) == 3
    for token in tokens:
        assert api.flow_run(world.server, world.run_id, token)["id"] == world.run_id


def test_a_flow_run_token_may_not_mint(world: World) -> None:
    token = api.create_flow_run_token(world.server, world.run_id, world.runner)
    body = mint(world, world.run_id, token)
    assert code_of(body) == "FORBIDDEN" and "is for flow run" in body["errors"][0]["message"]


def test_minting_for_an_unknown_or_foreign_run_reads_the_same(world: World) -> None:
    create_tenant(world.server.services.engine, "other", "other")
    outsider = create_token(world.server.services.engine, "USER", "o", tenant_slug="other")
    random_id = "00000000-0000-4000-8000-000000000001"
    foreign, unknown = mint(world, world.run_id, outsider), mint(world, random_id, outsider)
    assert code_of(foreign) == code_of(unknown) == "NOT_FOUND"
    assert foreign["errors"][0]["message"].replace(world.run_id, random_id) == unknown["errors"][0]["message"]


def test_minting_for_a_finished_run_is_refused(world: World) -> None:
    finish(world, world.run_id, "Failed")
    body = mint(world, world.run_id)
    assert code_of(body) == "FLOW_RUN_FINISHED"
    assert body["errors"][0]["message"] == (
        f"Flow run {world.run_id} is already finished (Failed); no token is minted for it.")


def test_minting_without_a_token_is_unauthenticated(world: World) -> None:
    body = world.server.graphql(api.CREATE_FLOW_RUN_TOKEN, {"input": {"flow_run_id": world.run_id}})
    assert code_of(body) == "UNAUTHENTICATED"


def test_auth_none_refuses_to_mint_and_does_not_advertise(tmp_path: Path, database_url: str) -> None:
    server = InProcessServer(tmp_path, auth="none", database_url=database_url)
    try:
        flow_id = api.register_docker_flow(server, name="f", image_name="i", image_tag="1")
        run_id = api.create_flow_run(server, flow_id)
        body = server.graphql(api.CREATE_FLOW_RUN_TOKEN, {"input": {"flow_run_id": run_id}})
        assert code_of(body) == "AUTH_DISABLED" and "--auth none" in body["errors"][0]["message"]
        capabilities = api.call(server, "query { api { capabilities } }")["api"]["capabilities"]
        assert "flow_run_tokens" not in capabilities and "long_poll" in capabilities
    finally:
        server.close()


def test_auth_token_advertises_the_capability(world: World) -> None:
    capabilities = api.call(world.server, "query { api { capabilities } }")["api"]["capabilities"]
    assert "flow_run_tokens" in capabilities


# ------------------------------------------------------------------------------------- what the token may do


def test_the_runner_operations_work_on_its_own_run(world: World) -> None:
    token, server = api.create_flow_run_token(world.server, world.run_id, world.runner), world.server
    assert "errors" not in api.set_flow_run_state(server, world.run_id, {"type": "Running"}, token=token)
    run = api.flow_run(server, world.run_id, token)
    task_run, task_id = run["task_runs"][0]["id"], run["task_runs"][0]["task"]["id"]
    child = api.call(server, "mutation($r: UUID!, $t: UUID!) { get_or_create_task_run_info(input: "
                     "{flow_run_id: $r, task_id: $t, map_index: 0}) { id version } }",
                     {"r": world.run_id, "t": task_id}, token)["get_or_create_task_run_info"]
    assert "errors" not in api.set_task_run_state(server, child["id"], {"type": "Running"}, token=token)
    for query, value in (
        ("mutation($i: UUID!) { update_flow_run_heartbeat(input: {flow_run_id: $i}) { success } }",
         world.run_id),
        ("mutation($i: UUID!) { update_task_run_heartbeat(input: {task_run_id: $i}) { success } }", task_run),
        ("mutation($i: UUID!) { set_task_run_name(input: {task_run_id: $i, name: \"n\"}) { success } }",
         task_run),
        ("query($i: UUID!) { get_task_run_info(task_run_id: $i) { id } }", task_run),
        ("query($i: uuid!) { task_run_by_pk(id: $i) { id } }", task_run),
        ("query($i: uuid!) { flow_by_pk(id: $i) { id settings } }", world.flow_id),
    ):
        assert api.call(server, query, {"i": value}, token)
    assert "errors" not in log(world, token, world.run_id, task_run)
    assert "errors" not in api.set_flow_run_state(server, world.run_id, {"type": "Success"}, token=token)


def test_logs_naming_another_runs_task_run_are_refused(world: World) -> None:
    token = api.create_flow_run_token(world.server, world.run_id, world.runner)
    foreign_task_run = api.flow_run(world.server, world.other_run_id, world.user)["task_runs"][0]["id"]
    assert code_of(log(world, token, world.run_id, foreign_task_run)) == "FORBIDDEN"
    assert code_of(log(world, token, world.other_run_id)) == "FORBIDDEN"
    assert api.run_logs(world.server, world.run_id, world.user) == []


def test_lists_return_only_its_own_run(world: World) -> None:
    token = api.create_flow_run_token(world.server, world.run_id, world.runner)
    query = "query { flow_run { id } task_run { flow_run_id } flow { id } }"
    data = api.call(world.server, query, token=token)
    assert data["flow_run"] == [{"id": world.run_id}] and data["flow"] == [{"id": world.flow_id}]
    assert {row["flow_run_id"] for row in data["task_run"]} == {world.run_id}


def test_an_agent_id_header_is_ignored_for_a_flow_run_token(world: World) -> None:
    agent_id = api.register_agent(world.server, world.runner)
    token = api.create_flow_run_token(world.server, world.run_id, world.runner)
    body = world.server.graphql(api.SET_STATES, {"input": {"states": [
        {"flow_run_id": world.run_id, "state": {"type": "Running"}}]}}, token=token,
        headers={"X-Prefect-Agent-Id": agent_id})
    assert "errors" not in body
    with db.read_tx(world.server.services.engine) as conn:
        assert conn.execute(select(db.flow_run.c.agent_id).where(db.flow_run.c.id == world.run_id)).scalar() \
            is None


# ---------------------------------------------------------------------------------------------------- expiry


def age_finished_states(world: World, run_id: str, seconds: float) -> None:
    """Move the run's recorded states back in time (the clock the grace period is measured on)."""
    history, tokens = db.flow_run_state, db.api_token
    with db.write_tx(world.server.services.engine) as conn:
        for table, key, column in ((history, history.c.flow_run_id, "timestamp"),
                                   (tokens, tokens.c.flow_run_id, "created")):
            rows = conn.execute(select(table.c.id, table.c[column]).where(key == run_id)).all()
            for row_id, stamp in rows:
                conn.execute(update(table).where(table.c.id == row_id).values(
                    {column: stamp - timedelta(seconds=seconds)}))


def test_token_works_during_the_grace_period_then_is_rejected(world: World) -> None:
    token = api.create_flow_run_token(world.server, world.run_id, world.runner)
    finish(world, world.run_id)
    assert "errors" not in log(world, token, world.run_id)  # final logs still go through
    age_finished_states(world, world.run_id, 59)
    assert "errors" not in log(world, token, world.run_id)
    age_finished_states(world, world.run_id, 2)
    body = log(world, token, world.run_id)
    assert code_of(body) == "UNAUTHENTICATED" and world.server.last_status == 200
    assert len(api.run_logs(world.server, world.run_id, world.user)) == 2


def test_a_requeued_run_does_not_revive_a_dead_token(world: World) -> None:
    token = api.create_flow_run_token(world.server, world.run_id, world.runner)
    finish(world, world.run_id, "Failed")
    age_finished_states(world, world.run_id, 61)
    finish(world, world.run_id, "Scheduled")
    assert code_of(log(world, token, world.run_id)) == "UNAUTHENTICATED"
    fresh = api.create_flow_run_token(world.server, world.run_id, world.runner)
    assert "errors" not in log(world, fresh, world.run_id)


def test_a_token_of_a_finished_run_with_zero_grace_is_rejected_at_once(
    tmp_path: Path, database_url: str
) -> None:
    world = make_world(tmp_path, database_url, token_cache_ttl_s=0, flow_run_token_grace_s=0)
    try:
        token = api.create_flow_run_token(world.server, world.run_id, world.runner)
        assert "errors" not in log(world, token, world.run_id)
        finish(world, world.run_id, "Cancelled")
        assert code_of(log(world, token, world.run_id)) == "UNAUTHENTICATED"
    finally:
        world.server.close()


def test_max_lifetime_ends_the_token_even_while_cached(tmp_path: Path, database_url: str) -> None:
    """The identity cache (5 s here) never keeps a token past its known end."""
    world = make_world(tmp_path, database_url, token_cache_ttl_s=5, flow_run_token_max_lifetime_s=1)
    try:
        body = mint(world, world.run_id)["data"]["create_flow_run_token"]
        assert "errors" not in log(world, body["token"], world.run_id)  # now cached
        time.sleep(1.2)
        assert code_of(log(world, body["token"], world.run_id)) == "UNAUTHENTICATED"
        assert world.server.service.identities.cached(body["token"]) is None
    finally:
        world.server.close()
