"""A hostile or anonymous client against the real server process over HTTP: memory stays flat, malformed
input gets a 4xx with a reason, documents over the limits get QUERY_TOO_COMPLEX, tenants stay apart."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import api
from tests.support.server_fixtures import ServerHandle, start_server

FLOOD_BYTES = 19 * 1024 * 1024
HELLO = json.dumps({"query": "{ hello }"}).encode()


@pytest.fixture(scope="module")
def hostile_server(
    tmp_path_factory: pytest.TempPathFactory, module_database_url_factory: Callable[..., str]
) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path_factory.mktemp("exhaustion"), auth="token",
                          env={"LOCAL_AGENT_SERVER_LOG_LEVEL": "INFO"},
                          database_url=module_database_url_factory())
    yield handle
    handle.stop()


def post(server: ServerHandle, data: Any, headers: dict[str, Any] | None = None,
         session: requests.Session | None = None) -> requests.Response:
    sent = {"Content-Type": "application/json", **(headers or {})}
    return (session or requests).post(server.url + "/", data=data, headers=sent, timeout=120)


def reason(response: requests.Response) -> str:
    """The first error message of a JSON error body (asserting there is one)."""
    body = response.json()
    message = body["errors"][0]["message"]
    assert isinstance(message, str) and message
    return message


def hello_answers(server: ServerHandle) -> bool:
    response = post(server, HELLO)
    return response.status_code == 200 and response.json() == {"data": {"hello": "👋"}}


def rss(server: ServerHandle) -> int:
    assert server.proc is not None
    return int(psutil.Process(server.proc.pid).memory_info().rss)


# ------------------------------------------------------------------------------------------ the flood
def test_anonymous_flood_leaves_memory_flat_and_hello_answering(hostile_server: ServerHandle) -> None:
    for _ in range(3):  # warm up: first requests allocate the executor threads, caches, etc.
        assert hello_answers(hostile_server)
        post(hostile_server, b"x" * 1024)
    before = rss(hostile_server)
    stop, answered = threading.Event(), []

    def greet() -> None:
        while not stop.is_set():
            answered.append(hello_answers(hostile_server))

    def flood(index: int) -> int:
        # A distinct 19 MB query text each time: the shape that used to fill the parsed-document cache.
        head = b'{"query": "{ hello } # %d ' % index
        payload = head + b"x" * (FLOOD_BYTES - len(head) - 2) + b'"}'
        try:
            return post(hostile_server, payload).status_code
        except requests.ConnectionError:  # the server may close before the whole upload went out
            return 413

    greeter = threading.Thread(target=greet)
    greeter.start()
    with ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(flood, range(30)))
    stop.set()
    greeter.join()
    grown = rss(hostile_server) - before
    assert statuses == [413] * 30
    assert answered and all(answered)
    assert grown < 50 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB"
    assert hello_answers(hostile_server)


def test_large_anonymous_body_is_refused_with_a_reason(hostile_server: ServerHandle) -> None:
    response = post(hostile_server, b'{"query": "{ hello }", "x": "' + b"x" * 100_000 + b'"}')
    assert response.status_code == 413
    assert "without a valid API token" in reason(response)
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


def test_large_chunked_anonymous_body_is_refused_without_reading_it_all(hostile_server: ServerHandle) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(200):  # 12.8 MB if the server kept reading
            sent.append(1)
            yield b"x" * 65_536

    try:
        response = post(hostile_server, chunks())
        assert response.status_code == 413 and "anonymous_max_body_bytes" in reason(response)
    except requests.ConnectionError:
        pass  # closed mid-upload: also a refusal
    assert hello_answers(hostile_server)


def test_authenticated_requests_keep_the_large_body_limit(hostile_server: ServerHandle) -> None:
    token = hostile_server.create_token("RUNNER")
    body = json.dumps({"query": "{ hello }", "pad": "x" * 200_000}).encode()
    response = post(hostile_server, body, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.json() == {"data": {"hello": "👋"}}


# ------------------------------------------------------------------------------------------ malformed input
@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"query": "{ hello }", "v": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "nested too deeply"),
    (b'{"query": "{ hello }", "v": "\xff\xfe"}', "not valid UTF-8"),
    (b'{"query": "{ hello }", "v": "\\ud800"}', "surrogate"),
    (b'{"query": "{ hello }", "variables": "{\\"a\\": \\"\\\\udfff\\"}"}', "surrogate"),
    (b"not json", "Malformed JSON"),
    (b"", "Malformed JSON"),
])
def test_malformed_bodies_get_400_with_a_reason(
    hostile_server: ServerHandle, raw: bytes, expected: str
) -> None:
    token = hostile_server.create_token("RUNNER")  # also with a token: the body limit is not the defence here
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
        response = post(hostile_server, raw, headers)
        assert response.status_code == 400 and expected in reason(response)


def raw_request(server: ServerHandle, header_value: bytes) -> tuple[int, dict[str, Any]]:
    """A POST whose Authorization header carries raw bytes (requests would refuse to send them)."""
    body = json.dumps({"query": "{ flow_run { id } }"}).encode()
    head = [b"POST / HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: application/json", b"Connection: close",
            b"Authorization: " + header_value, b"Content-Length: " + str(len(body)).encode()]
    request = b"\r\n".join(head) + b"\r\n\r\n" + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65_536):
            chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.mark.parametrize("value", [
    b"Bearer \xff\xfe\xfd", b"Bearer las_\xc3\x28", b"\xe2\x82", b"Bearer \x80" * 50,
])
def test_undecodable_token_is_a_401_with_a_reason(hostile_server: ServerHandle, value: bytes) -> None:
    status, body = raw_request(hostile_server, value)
    assert status == 401 and body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "the Authorization header is not valid ASCII" in body["errors"][0]["message"]


def test_wrong_but_well_formed_token_stays_http_200(hostile_server: ServerHandle) -> None:
    """The Prefect 1.4.1 client raises AuthorizationError only for UNAUTHENTICATED in an HTTP 200 body."""
    status, body = raw_request(hostile_server, b"Bearer las_not-a-real-token")
    assert status == 200 and body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "invalid API token" in body["errors"][0]["message"]


def test_lone_surrogate_in_a_header_is_not_stored(hostile_server: ServerHandle) -> None:
    token = hostile_server.create_token("RUNNER")
    response = post(hostile_server, json.dumps({"query": "{ auth_info { tenant_id } }"}).encode(),
                    {"Authorization": f"Bearer {token}", "X-Prefect-Core-Version": b"1.4.1\xff",
                     "X-Prefect-Agent-Id": b"\xff" * 36})
    assert response.status_code == 200 and response.json()["data"]["auth_info"]["tenant_id"]


# ------------------------------------------------------------------------------------------ limits
@pytest.mark.parametrize(("query", "limit"), [
    ("{ " + "__typename " * 12_000 + "}", "max_query_tokens"),
    ("{ hello " + "".join(f"a{i}: __typename " for i in range(150)) + "}", "max_query_aliases"),
    ("{ __schema { " + "types { fields { type { " * 8 + "name" + " } } }" * 8 + " } }", "max_query_depth"),
    ("{ a(x: " + "[" * 300 + "]" * 300 + ") }", "nested too deeply"),
])
def test_limits_give_query_too_complex(hostile_server: ServerHandle, query: str, limit: str) -> None:
    token = hostile_server.create_token("RUNNER")
    headers = {"Authorization": f"Bearer {token}"}
    response = post(hostile_server, json.dumps({"query": query}).encode(), headers)
    assert response.status_code == 400 and limit in reason(response)
    assert response.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"


# ------------------------------------------------------------------------------------------ tenants
@pytest.fixture(scope="module")
def tenants(hostile_server: ServerHandle) -> dict[str, str]:
    """Tokens of tenant A (default) and B (made with the server CLI), and a flow of A."""
    created = hostile_server.cli("tenant", "create", "--name", "B", "--slug", "b")
    assert created.returncode == 0, created.stderr
    b_runner = hostile_server.cli("token", "create", "--scope", "RUNNER", "--name", "b", "--tenant", "b")
    a_user, a_runner = hostile_server.create_token("USER"), hostile_server.create_token("RUNNER")
    flow_id = api.register_docker_flow(hostile_server, name="f", image_name="i", image_tag="1", token=a_user)
    return {"a_user": a_user, "a_runner": a_runner, "b_runner": b_runner.stdout.strip(), "flow_id": flow_id,
            "b_id": created.stdout.strip()}


def test_runner_of_a_cannot_see_tenant_b(hostile_server: ServerHandle, tenants: dict[str, str]) -> None:
    seen = api.call(hostile_server, "query { tenant { id slug } }", token=tenants["a_runner"])["tenant"]
    assert [t["slug"] for t in seen] == ["default"]
    by_id = f'query {{ tenant(where: {{id: {{_eq: "{tenants["b_id"]}"}}}}) {{ id }} }}'
    assert api.call(hostile_server, by_id, token=tenants["a_runner"])["tenant"] == []
    anonymous = post(hostile_server, json.dumps({"query": "{ tenant { id } }"}).encode()).json()
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("who", ["a_runner", "a_user"])
def test_runner_and_user_cannot_create_tenants(hostile_server: ServerHandle, tenants: dict[str, str],
                                               who: str) -> None:
    body = hostile_server.graphql('mutation { create_tenant(input: {name: "evil", slug: "evil"}) { id } }',
                                  token=tenants[who])
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    admin = hostile_server.create_token("ADMIN")
    seen = api.call(hostile_server, "query { tenant { slug } }", token=admin)["tenant"]
    assert seen == [{"slug": "default"}]


def test_agent_id_of_tenant_b_is_ignored_for_tenant_a(hostile_server: ServerHandle,
                                                      tenants: dict[str, str]) -> None:
    b_agent = api.register_agent(hostile_server, tenants["b_runner"])
    a_agent = api.register_agent(hostile_server, tenants["a_runner"])
    claimed = {}
    for agent_id in (b_agent, a_agent):
        run_id = api.create_flow_run(hostile_server, tenants["flow_id"], token=tenants["a_user"])
        query = ("mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) "
                 "{ states { id status } } }")
        claim = {"flow_run_id": run_id, "version": 1, "state": {"type": "Submitted"}}
        variables = {"input": {"states": [claim]}}
        body = hostile_server.graphql(query, variables, token=tenants["a_runner"],
                                      headers={"X-Prefect-Agent-Id": agent_id})
        assert "errors" not in body, body
        claimed[agent_id] = api.flow_run(hostile_server, run_id, tenants["a_user"])["agent_id"]
    assert claimed == {b_agent: None, a_agent: a_agent}


# ------------------------------------------------------------------------------------------ property tests
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=30)
QUERIES = st.sampled_from(["{ hello }", "{ api { version } }", "{ flow_run { id } }",
                           "query($x: JSON) { hello }",
                           "mutation { create_tenant(input: {name: \"n\", slug: \"s\"}) { id } }", "{", ""])


SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


def nested(depth: int, opener: str) -> str:
    closer = {"[": "]", "{\"a\":": "}"}[opener]
    return opener * depth + "1" + closer * depth


BODIES = st.one_of(
    st.binary(max_size=4096),
    st.text(max_size=2048).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(lambda q, v: json.dumps({"query": q, "variables": v}).encode(), QUERIES, JSON_VALUES),
    st.builds(lambda q, v: json.dumps({"query": q, "variables": json.dumps(v)}).encode(), QUERIES,
              JSON_VALUES),
    st.builds(lambda q, d, o: f'{{"query": {json.dumps(q)}, "variables": {nested(d, o)}}}'.encode(),
              QUERIES, st.integers(1, 3000), st.sampled_from(["[", "{\"a\":"])),
    st.builds(lambda q, s: json.dumps({"query": q, "operationName": s}).encode(), QUERIES,
              st.text(alphabet=SURROGATES, min_size=1, max_size=3)),
)
HEADER_VALUES = st.binary(max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\0" not in b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=BODIES, auth=HEADER_VALUES, core=HEADER_VALUES)
def test_hostile_bodies_and_headers_never_get_a_5xx(hostile_server: ServerHandle, body: bytes, auth: bytes,
                                                    core: bytes) -> None:
    headers = {"Authorization": b"Bearer " + auth.strip(), "X-Prefect-Core-Version": core.strip() or b"1",
               "X-Prefect-Agent-Id": core.strip() or b"x"}
    response = post(hostile_server, body, headers)
    assert response.status_code < 500, response.text
    if response.headers["Content-Type"].startswith("text/plain"):
        # aiohttp's HTTP parser refuses some header bytes (e.g. control characters) before the app sees them.
        assert response.status_code == 400 and "Invalid header value" in response.text
        return
    payload = response.json()
    assert "data" in payload or reason(response)


def test_server_still_answers_after_the_property_tests(hostile_server: ServerHandle) -> None:
    assert hello_answers(hostile_server)
    assert "ERROR" not in Path(hostile_server.log_path).read_text(errors="replace")
