"""`--auth token`: UNAUTHENTICATED without a valid token, scopes, tenant scoping (in process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from server import db
from server.auth import create_token, hash_token
from tests.support import api
from tests.support.server_fixtures import InProcessServer


@pytest.fixture
def token_inproc(tmp_path: Path, database_url: str) -> Iterator[InProcessServer]:
    handle = InProcessServer(tmp_path, auth="token", database_url=database_url)
    yield handle
    handle.close()


def counts(server: InProcessServer) -> tuple[int, ...]:
    with db.read_tx(server.services.engine) as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (db.project, db.flow, db.flow_run, db.flow_run_state, db.log)
        )


def test_tokens_are_stored_hashed(token_inproc: InProcessServer) -> None:
    token = token_inproc.create_token("USER", "me")
    with db.read_tx(token_inproc.services.engine) as conn:
        stored = conn.execute(select(db.api_token.c.token_hash)).scalars().all()
    assert stored == [hash_token(token)] and token not in stored


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_missing_or_wrong_token_is_unauthenticated_and_changes_nothing(
    token_inproc: InProcessServer, token: str | None
) -> None:
    user = token_inproc.create_token("USER")
    flow_id = api.register_docker_flow(token_inproc, name="f", image_name="i", image_tag="1", token=user)
    before = counts(token_inproc)
    body = token_inproc.graphql(
        "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }",
        {"input": {"flow_id": flow_id}},
        token=token,
    )
    assert "UNAUTHENTICATED" in str(body["errors"])
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert token_inproc.last_status == 200
    assert counts(token_inproc) == before
    malformed = token_inproc.graphql("query { flow_run { id } }", headers={"Authorization": "Basic abc"})
    assert "UNAUTHENTICATED" in str(malformed)


def test_hello_needs_no_token(token_inproc: InProcessServer) -> None:
    assert token_inproc.graphql("query { hello }") == {"data": {"hello": "👋"}}


def test_auth_info_returns_tenant_and_scope(token_inproc: InProcessServer) -> None:
    runner = token_inproc.create_token("RUNNER")
    info = api.call(token_inproc, "query { auth_info { tenant_id api_token_scope } }", token=runner)[
        "auth_info"
    ]
    tenant = api.call(token_inproc, "query { tenant { id } }", token=runner)["tenant"]
    assert info == {"tenant_id": tenant[0]["id"], "api_token_scope": "RUNNER"}


def test_runner_scope_cannot_create_but_can_run(token_inproc: InProcessServer) -> None:
    user, runner = token_inproc.create_token("USER"), token_inproc.create_token("RUNNER")
    flow_id = api.register_docker_flow(token_inproc, name="f", image_name="i", image_tag="1", token=user)
    before = counts(token_inproc)
    for attempt in (
        lambda: api.create_flow_run(token_inproc, flow_id, token=runner),
        lambda: api.create_project(token_inproc, "p2", token=runner),
        lambda: api.register_docker_flow(
            token_inproc,
            name="g",
            image_name="i",
            image_tag="1",
            token=runner,
            project_id="00000000-0000-4000-8000-0000000000aa",
        ),
    ):
        with pytest.raises(AssertionError, match="FORBIDDEN") as excinfo:
            attempt()
        assert "'code': 'FORBIDDEN'" in str(excinfo.value)
    assert counts(token_inproc) == before
    run_id = api.create_flow_run(token_inproc, flow_id, token=user)
    tenant = api.tenant_id(token_inproc, runner)
    assert api.queue(token_inproc, tenant, [], "2100-01-01T00:00:00+00:00", token=runner) == [run_id]
    assert "errors" not in api.set_flow_run_state(
        token_inproc, run_id, {"type": "Submitted"}, 1, token=runner
    )
    with pytest.raises(AssertionError, match="FORBIDDEN"):
        api.cancel_flow_run(token_inproc, run_id, token=runner)
    assert api.cancel_flow_run(token_inproc, run_id, token=user) == "Cancelled"


def test_queries_are_scoped_to_the_tokens_tenant(token_inproc: InProcessServer) -> None:
    user = token_inproc.create_token("USER")
    flow_id = api.register_docker_flow(token_inproc, name="f", image_name="i", image_tag="1", token=user)
    run_id = api.create_flow_run(token_inproc, flow_id, token=user)
    with db.write_tx(token_inproc.services.engine) as conn:
        conn.execute(
            db.tenant.insert().values(id=db.new_id(), name="other", slug="other", created=db.utcnow())
        )
    outsider = create_token(token_inproc.services.engine, "USER", "outsider", tenant_slug="other")
    assert api.call(token_inproc, "query { flow_run { id } flow { id } project { id } }", token=outsider) == {
        "flow_run": [],
        "flow": [],
        "project": [],
    }
    assert api.call(token_inproc, f'query {{ flow_run_by_pk(id: "{run_id}") {{ id }} }}', token=outsider) == {
        "flow_run_by_pk": None
    }
    body = api.set_flow_run_state(token_inproc, run_id, {"type": "Running"}, token=outsider)
    assert body["errors"] and api.flow_run(token_inproc, run_id, user)["state"] == "Scheduled"
    with pytest.raises(AssertionError, match="not found"):
        api.create_flow_run(token_inproc, flow_id, token=outsider)
    own_tenant = api.tenant_id(token_inproc, user)
    with pytest.raises(AssertionError, match="FORBIDDEN"):
        api.queue(token_inproc, own_tenant, [], token=outsider)


def _other_tenant(server: InProcessServer, slug: str = "other") -> str:
    from server.auth import create_tenant

    return create_tenant(server.services.engine, slug, slug)


def test_tenant_query_lists_only_the_callers_tenant(token_inproc: InProcessServer) -> None:
    runner = token_inproc.create_token("RUNNER")
    _other_tenant(token_inproc)
    outsider = create_token(token_inproc.services.engine, "RUNNER", "outsider", tenant_slug="other")
    mine = api.call(token_inproc, "query { tenant { id slug } }", token=runner)["tenant"]
    theirs = api.call(token_inproc, "query { tenant { id slug } }", token=outsider)["tenant"]
    assert [t["slug"] for t in mine] == ["default"] and [t["slug"] for t in theirs] == ["other"]
    where = f'query {{ tenant(where: {{id: {{_eq: "{theirs[0]["id"]}"}}}}) {{ id }} }}'
    assert api.call(token_inproc, where, token=runner)["tenant"] == []


def test_tenant_query_without_auth_lists_the_default_tenant_only(inproc_server: InProcessServer) -> None:
    _other_tenant(inproc_server)
    assert [t["slug"] for t in api.call(inproc_server, "query { tenant { slug } }")["tenant"]] == ["default"]


@pytest.mark.parametrize("scope", ["RUNNER", "USER"])
def test_only_admin_creates_tenants(token_inproc: InProcessServer, scope: str) -> None:
    create = 'mutation { create_tenant(input: {name: "x", slug: "x"}) { id } }'
    body = token_inproc.graphql(create, token=token_inproc.create_token(scope))
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN" and "ADMIN" in body["errors"][0]["message"]
    with db.read_tx(token_inproc.services.engine) as conn:
        assert conn.execute(select(func.count()).select_from(db.tenant)).scalar_one() == 1
    admin = token_inproc.create_token("ADMIN")
    assert api.call(token_inproc, create, token=admin)["create_tenant"]["id"]


def test_agent_id_header_of_another_tenant_is_ignored(token_inproc: InProcessServer) -> None:
    from server.app import Caller
    from server.auth import Identity

    _other_tenant(token_inproc)
    victim_agent = api.register_agent(token_inproc, token_inproc.create_token("RUNNER"))
    outsider = create_token(token_inproc.services.engine, "RUNNER", "o", tenant_slug="other")
    own_agent = api.register_agent(token_inproc, outsider)
    service = token_inproc.service
    default = api.tenant_id(token_inproc, token_inproc.create_token("RUNNER"))
    other = api.tenant_id(token_inproc, outsider)
    assert service.agent_id(victim_agent, other) is None
    assert service.agent_id(own_agent, other) == own_agent
    assert service.agent_id(victim_agent, default) == victim_agent
    assert service.agent_id("not-a-uuid", default) is None
    assert isinstance(Caller(Identity(other, "RUNNER")).trusted, bool)


@pytest.mark.parametrize("header", ["Bearer las_\udcff\udcfe", "Bearer " + "x" * 10_000, "Bearer a\tb"])
def test_undecodable_or_absurd_tokens_are_unauthenticated(token_inproc: InProcessServer, header: str) -> None:
    body = token_inproc.graphql("query { flow_run { id } }", headers={"Authorization": header})
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_a_cached_token_is_checked_without_leaving_the_event_loop(token_inproc: InProcessServer) -> None:
    service, token = token_inproc.service, token_inproc.create_token("RUNNER")
    headers = {"authorization": f"Bearer {token}"}
    assert service.quick_caller(headers) is None  # not yet known: the caller goes to a worker thread
    identity = service.caller(headers).identity
    assert identity is not None and service.quick_caller(headers) == service.caller(headers)
    assert service.quick_caller({"authorization": "Bearer las_wrong"}) is None


@pytest.mark.parametrize("header", ["Bearer las_\udcff\udcfe", "Bearer café", "\udce2\udc82"])
def test_a_non_ascii_authorization_header_is_malformed(token_inproc: InProcessServer, header: str) -> None:
    assert token_inproc.service.quick_caller({"authorization": header}).problem == "malformed"  # type: ignore[union-attr]
    body = token_inproc.graphql("query { flow_run { id } }", headers={"Authorization": header})
    assert "not valid ASCII" in body["errors"][0]["message"]


def test_tenant_names_follow_the_name_limit_and_slugs_stay_unique(tmp_path: Path, database_url: str) -> None:
    server = InProcessServer(tmp_path, auth="token", max_name_chars=8, database_url=database_url)
    try:
        admin = server.create_token("ADMIN")
        create = "mutation($n: String!, $s: String!) { create_tenant(input: {name: $n, slug: $s}) { id } }"
        long_name = server.graphql(create, {"n": "x" * 9, "s": "ok"}, token=admin)
        assert long_name["errors"][0]["extensions"]["code"] == "LIMIT_EXCEEDED"
        assert api.call(server, create, {"n": "t", "s": "taken"}, token=admin)["create_tenant"]["id"]
        again = server.graphql(create, {"n": "t", "s": "taken"}, token=admin)
        assert again["errors"][0]["extensions"]["code"] == "UNIQUENESS_VIOLATION"
    finally:
        server.close()
