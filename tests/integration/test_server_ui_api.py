"""The web UI against the real server over HTTP, on SQLite and PostgreSQL: the page and its headers, and the
UI's own GraphQL documents - read out of app.js between its GRAPHQL-QUERIES markers, so what is tested is
exactly what the browser sends - answered as the UI needs, within the token's tenant and run.

The runs page with 100,000 runs stored: the SQL its query becomes is read by the database's EXPLAIN, which
must show an index serving the order (no sort), for the newest page and for each filter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import event

from server import db
from server.auth import create_tenant, create_token
from server.seed import analyze, seed_flow_runs
from tests.support import api
from tests.support.server_fixtures import InProcessServer, ServerHandle, start_server

APP_JS = files("server.ui").joinpath("static", "app.js").read_text(encoding="utf-8")
HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def ui_queries() -> dict[str, str]:
    block = re.search(r"// GRAPHQL-QUERIES-BEGIN(.*?)// GRAPHQL-QUERIES-END", APP_JS, re.S)
    assert block is not None, "the query markers are missing in app.js"
    found = dict(re.findall(r"(\w+): `([^`]*)`", block.group(1)))
    assert found and not any("${" in q for q in found.values())
    return found


Q = ui_queries()


@dataclass
class World:
    server: ServerHandle
    user: str
    other: str  # a USER token of another tenant
    run_token: str  # a FLOW_RUN token of `run`
    flow: str
    run: str
    failed: str
    second: str  # another run of `flow`, same tenant
    agent: str
    other_run: str
    other_agent: str


def ui(world: World, name: str, variables: dict[str, Any] | None = None, token: str | None = None,
       ) -> dict[str, Any]:
    """One of the UI's documents, sent as the browser sends it (JSON body, variables an object)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"query": Q[name], "variables": variables or {}}
    response = requests.post(world.server.url + "/graphql", json=body,
                             headers=headers, timeout=30)
    return response.json()  # type: ignore[no-any-return]


def data(world: World, name: str, variables: dict[str, Any] | None = None, token: str | None = None,
         ) -> dict[str, Any]:
    body = ui(world, name, variables, token or world.user)
    assert "errors" not in body, body
    return body["data"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          module_database_url_factory: Callable[..., str]) -> Iterator[World]:
    url = module_database_url_factory()
    server = start_server(tmp_path_factory.mktemp("ui-api"), auth="token", database_url=url,
                          env={"LOCAL_AGENT_SERVER_ZOMBIES_ENABLED": "false"})
    engine = db.create_db_engine(url, pool_size=1)
    try:
        user = create_token(engine, "USER", "ui")
        create_tenant(engine, "other", "other")
        other = create_token(engine, "USER", "other", tenant_slug="other")
    finally:
        engine.dispose()
    flow = api.register_docker_flow(server, name=HOSTILE, image_name="i", image_tag="1", token=user)
    run = api.create_flow_run(server, flow, token=user, labels=["red", HOSTILE], name=HOSTILE,
                              parameters={"x": HOSTILE})
    failed = api.create_flow_run(server, flow, token=user, labels=["blue"])
    api.set_flow_run_state(server, failed, {"type": "Failed", "message": "boom " + HOSTILE}, token=user)
    second = api.create_flow_run(server, flow, token=user)
    agent = api.register_agent(server, user, name=HOSTILE)
    other_flow = api.register_docker_flow(server, name="theirs", image_name="i", image_tag="1", token=other)
    other_run = api.create_flow_run(server, other_flow, token=other)
    api.set_flow_run_state(server, other_run, {"type": "Running", "message": "theirs"}, token=other)
    other_agent = api.register_agent(server, other, name="theirs")
    logs = [{"flow_run_id": run, "message": f"line {i} {HOSTILE}", "level": "INFO", "name": "t",
             "timestamp": f"2026-01-01T00:00:0{i}+00:00"} for i in range(3)]
    api.call(server, "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }",
             {"input": {"logs": logs}}, user)
    run_token = api.create_flow_run_token(server, run, user)
    yield World(server, user, other, run_token, flow, run, failed, second, agent, other_run, other_agent)
    server.stop()


# ------------------------------------------------------------------------------------------ HTTP


def test_the_ui_is_served_with_its_policy_and_browsers_are_sent_there(world: World) -> None:
    page = requests.get(world.server.url + "/ui/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    script = requests.get(world.server.url + "/ui/app.js", timeout=10)
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "GRAPHQL-QUERIES" in script.text
    root = requests.get(world.server.url + "/", headers={"Accept": "text/html"}, allow_redirects=False,
                        timeout=10)
    assert (root.status_code, root.headers["Location"]) == (302, "/ui/")
    api_get = requests.get(world.server.url + "/", headers={"Accept": "application/json"}, timeout=10)
    assert api_get.status_code == 405


# ------------------------------------------------------------------------------------------ the UI's queries


def test_the_auth_mode_is_readable_without_a_token(world: World) -> None:
    assert ui(world, "api")["data"]["api"]["auth_mode"] == "token"
    assert data(world, "authInfo")["auth_info"]["api_token_scope"] == "USER"
    refused = ui(world, "authInfo", token="not-a-token")
    assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def page(world: World, where: dict[str, Any], token: str | None = None) -> list[dict[str, Any]]:
    variables = {"where": where, "order_by": [{"scheduled_start_time": "desc"}, {"id": "desc"}], "limit": 50}
    return data(world, "runs", variables, token)["flow_run"]  # type: ignore[no-any-return]


def test_the_runs_page_lists_filters_and_pages_the_tenants_runs(world: World) -> None:
    rows = page(world, {})
    assert {r["id"] for r in rows} == {world.run, world.failed, world.second}
    keys = [(r["scheduled_start_time"], r["id"]) for r in rows]
    assert keys == sorted(keys, reverse=True)
    hostile = next(r for r in rows if r["id"] == world.run)
    assert (hostile["name"], hostile["flow"]["name"], hostile["labels"]) == (HOSTILE, HOSTILE,
                                                                             sorted(["red", HOSTILE]))
    assert [r["id"] for r in page(world, {"state": {"_eq": "Failed"}})] == [world.failed]
    assert [r["id"] for r in page(world, {"labels": {"_contains": ["red"]}})] == [world.run]
    assert page(world, {"labels": {"_contains": ["red", "blue"]}}) == []
    assert len(page(world, {"flow_id": {"_eq": world.flow}})) == 3
    # Keyset: the rows after the first, as app.js asks for the older page (and the newer page back).
    top = rows[0]
    older = page(world, {"_and": [{"scheduled_start_time": {"_lte": top["scheduled_start_time"]}}, {"_or": [
        {"scheduled_start_time": {"_lt": top["scheduled_start_time"]}}, {"id": {"_lt": top["id"]}}]}]})
    assert [r["id"] for r in older] == [r["id"] for r in rows[1:]]
    assert page(world, {}, world.other)[0]["id"] == world.other_run and len(page(world, {}, world.other)) == 1


def test_the_run_page_has_the_history_task_runs_and_logs(world: World) -> None:
    run = data(world, "run", {"id": world.failed})["flow_run_by_pk"]
    assert [s["state"] for s in run["states"]] == ["Scheduled", "Failed"]
    assert run["state_message"] == "boom " + HOSTILE and len(run["task_runs"]) == 1
    logs = data(world, "logs", {"where": {"flow_run_id": {"_eq": world.run}}, "limit": 1000})["log"]
    assert [line["message"] for line in logs] == [f"line {i} {HOSTILE}" for i in range(3)]
    since = {"flow_run_id": {"_eq": world.run}, "timestamp": {"_gte": logs[1]["timestamp"]}}
    newer = data(world, "logs", {"where": since, "limit": 1000})["log"]
    assert [line["id"] for line in newer] == [line["id"] for line in logs[1:]]


def test_flows_and_agents_pages(world: World) -> None:
    flows = data(world, "flows")["flow"]
    assert [f["id"] for f in flows] == [world.flow]
    assert flows[0]["is_schedule_active"] is False and len(flows[0]["flow_runs"]) == 3
    assert [f["id"] for f in data(world, "flowChoices")["flow"]] == [world.flow]
    agents = data(world, "agents")["agent"]
    assert [(a["id"], a["name"], a["type"]) for a in agents] == [(world.agent, HOSTILE, "DockerAgent")]
    assert [a["id"] for a in data(world, "agents", token=world.other)["agent"]] == [world.other_agent]


def test_another_tenant_sees_none_of_it(world: World) -> None:
    assert data(world, "run", {"id": world.run}, world.other)["flow_run_by_pk"] is None
    assert data(world, "logs", {"where": {"flow_run_id": {"_eq": world.run}}}, world.other)["log"] == []
    assert world.flow not in {f["id"] for f in data(world, "flows", token=world.other)["flow"]}


def test_a_flow_run_token_sees_no_agents_and_no_states(world: World) -> None:
    refused = ui(world, "agents", token=world.run_token)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    own = data(world, "run", {"id": world.run}, world.run_token)["flow_run_by_pk"]
    assert own["id"] == world.run and own["states"] == [] and own["agent"] is None
    assert [r["id"] for r in page(world, {}, world.run_token)] == [world.run]
    other = ui(world, "run", {"id": world.second}, token=world.run_token)
    assert other["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    flows = data(world, "flows", token=world.run_token)["flow"]
    assert [r["id"] for r in flows[0]["flow_runs"]] == [world.run]


def test_the_actions_create_and_cancel_and_their_refusals(world: World) -> None:
    created = data(world, "createRun", {"input": {"flow_id": world.flow, "parameters": {"a": 1},
                                                  "flow_run_name": "from the ui"}})["create_flow_run"]["id"]
    cancelled = data(world, "cancelRun", {"input": {"flow_run_id": created}})["cancel_flow_run"]
    assert cancelled["state"] == "Cancelled"
    refused = ui(world, "cancelRun", {"input": {"flow_run_id": world.second}}, token=world.run_token)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    wrong = ui(world, "createRun", {"input": {"flow_id": world.flow, "parameters": "[1]"}}, token=world.user)
    assert "errors" in wrong
    theirs = ui(world, "cancelRun", {"input": {"flow_run_id": world.other_run}}, token=world.user)
    assert "errors" in theirs
    untouched = data(world, "run", {"id": world.other_run}, world.other)["flow_run_by_pk"]
    assert untouched["state"] == "Running", untouched


def test_every_ui_query_is_covered_here() -> None:
    text = Path(__file__).read_text()
    assert all(f'"{name}"' in text for name in Q), set(Q)


# ------------------------------------------------------------------------------------------ 100,000 runs


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory,
              module_database_url_factory: Callable[..., str]) -> Iterator[tuple[InProcessServer, str]]:
    store = InProcessServer(tmp_path_factory.mktemp("ui-big"), auth="none",
                            database_url=module_database_url_factory())
    info = seed_flow_runs(store.services.engine, 100_000, due=50, task_runs=False)
    analyze(store.services.engine)
    yield store, info["flow_id"]
    store.close()


def runs_sql(store: InProcessServer, variables: dict[str, Any]) -> tuple[str, Any]:
    """The statement the runs page's query becomes (captured on its way to the driver)."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        if "FROM flow_run" in statement and "ORDER BY flow_run.scheduled_start_time" in statement:
            seen.append((statement, parameters))

    event.listen(store.services.engine, "before_cursor_execute", capture)
    try:
        body = store.graphql(Q["runs"], variables)
    finally:
        event.remove(store.services.engine, "before_cursor_execute", capture)
    assert "errors" not in body, body
    assert len(seen) == 1
    return seen[0]


def plan(store: InProcessServer, statement: str, parameters: Any) -> str:
    engine = store.services.engine
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return "\n".join(str(row[-1]) for row in rows)
        return "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters).all())


FILTERS: dict[str, dict[str, Any]] = {
    "newest": {},
    "state": {"state": {"_eq": "Failed"}},
    "common state": {"state": {"_eq": "Success"}},
    "flow": {"flow_id": {"_eq": "FLOW"}},
    "label": {"labels": {"_contains": ["absent"]}},
    "older page": {"_and": [{"scheduled_start_time": {"_lte": "2026-01-01T00:00:00+00:00"}}, {"_or": [
        {"scheduled_start_time": {"_lt": "2026-01-01T00:00:00+00:00"}},
        {"id": {"_lt": "80000000-0000-4000-8000-000000000000"}}]}]},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.sqlite_only(
        reason="PostgreSQL scans for `labels @>` (no GIN index; the matches are then sorted)"))
    if name == "label" else name for name in FILTERS])
def test_the_runs_page_reads_an_index_in_order(big_store: tuple[InProcessServer, str], name: str) -> None:
    store, flow_id = big_store
    where = eval_flow(FILTERS[name], flow_id)
    statement, parameters = runs_sql(store, {"where": where, "limit": 50, "order_by": [
        {"scheduled_start_time": "desc"}, {"id": "desc"}]})
    explained = plan(store, statement, parameters)
    if store.services.engine.dialect.name == "sqlite":
        assert re.search(r"(SCAN|SEARCH) flow_run USING (COVERING )?INDEX ix_flow_run_", explained), explained
        assert "TEMP B-TREE" not in explained, explained
    else:
        assert re.search(r"Index Scan( Backward)? using ix_flow_run_\w+ on flow_run", explained), explained
        assert "Seq Scan" not in explained, explained
        # A sort only of what an index found, when the planner expects a page or less (a rare state).
        sorted_rows = [int(n) for n in re.findall(r"Sort  \(cost=[\d.]+ rows=(\d+)", explained)]
        assert all(n <= 50 for n in sorted_rows), explained


def eval_flow(where: dict[str, Any], flow_id: str) -> dict[str, Any]:
    if "flow_id" in where:
        return {"flow_id": {"_eq": flow_id}}
    return where


FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
              "TEXT/PLAIN; charset=utf-8")


def test_a_cross_site_form_cannot_drive_an_open_server(server_factory: Callable[..., ServerHandle]) -> None:
    """With --auth none, a body a web page could post without a CORS preflight (a form, text) is refused
    before anything runs; JSON and a body without a content type (scripts, curl -d) still work."""
    open_server = server_factory(auth="none")
    flow_id = api.register_docker_flow(open_server, name="csrf", image_name="i", image_tag="1")
    body = json.dumps({"query": "mutation($i: create_flow_run_input!) { create_flow_run(input: $i) { id } }",
                       "variables": {"i": {"flow_id": flow_id}}})
    for content_type in FORM_TYPES:
        refused = requests.post(open_server.url, data=body, headers={"Content-Type": content_type},
                                timeout=10)
        assert refused.status_code == 415, (content_type, refused.text)
        assert "application/json" in refused.json()["errors"][0]["message"]
    assert api.call(open_server, "query { flow_run { id } }")["flow_run"] == []
    for headers in ({"Content-Type": "application/json"}, {}):
        answer = requests.post(open_server.url, data=body.encode(), headers=headers, timeout=10).json()
        assert answer["data"]["create_flow_run"]["id"], answer


def test_keyset_pages_walk_runs_that_share_a_start_time(world: World) -> None:
    """Five runs at one scheduled time, read one per page as app.js pages: the id breaks the tie, so every run
    comes exactly once and in order. (Last in the module: it adds a flow the tests above do not expect.)"""
    flow = api.register_docker_flow(world.server, name="ties", image_name="i", image_tag="1",
                                    token=world.user)
    same = "2030-01-01T00:00:00+00:00"
    made = {api.create_flow_run(world.server, flow, token=world.user, scheduled_start_time=same)
            for _ in range(5)}
    order = [{"scheduled_start_time": "desc"}, {"id": "desc"}]
    seen: list[str] = []
    where: dict[str, Any] = {"flow_id": {"_eq": flow}}
    while True:
        rows = data(world, "runs", {"where": where, "order_by": order, "limit": 1})["flow_run"]
        if not rows:
            break
        time, run_id = rows[0]["scheduled_start_time"], rows[0]["id"]
        seen.append(run_id)
        where = {"_and": [{"flow_id": {"_eq": flow}}, {"scheduled_start_time": {"_lte": time}},
                          {"_or": [{"scheduled_start_time": {"_lt": time}}, {"id": {"_lt": run_id}}]}]}
    assert seen == sorted(made, reverse=True)
