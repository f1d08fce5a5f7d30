"""The API-surface recorder's parts: paths to endpoint templates, the list's parser, the request-head reader,
and one real `DockerRuntime` call seen through the recording proxy (tests/support/api_surface.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import docker
import docker.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.runtime.docker import DockerRuntime, DockerUnavailable, ImagePullError
from agent.runtime.swarm import SwarmRuntime
from tests.support.api_heads import RequestReader, State
from tests.support.api_surface import ApiRecorder, agent_base_url, compare, daemon_socket, failure_lines
from tests.support.api_templates import (
    API_LIST,
    REPO_ROOT,
    ApiListError,
    Endpoint,
    clean_path,
    guess_template,
    load_allowed,
    match,
    template_for,
)
from tests.support.docker_fixtures import RUN_ID, docker_unavailable, test_labels

SAMPLE = """# A list

Some text | with a pipe.

| Method | Path | Engine | Why |
|---|---|---|---|
| GET | /_ping | docker, swarm | liveness |
| GET | /containers/json | docker | list |
| GET | /containers/{id}/json | docker | inspect |
| DELETE | /containers/{id} | docker | remove |
| POST | /networks/{id}/connect | docker | join |
| GET | /images/json | docker | the literal beats {name} |
| GET | /images/{name}/json | docker, swarm | inspect an image \\| by reference |
| DELETE | /images/{name} | docker | remove |
| GET | /services/{id}/logs | swarm | output |

Text after the table.
"""


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> list[Endpoint]:
    path = tmp_path_factory.mktemp("api") / "docker-api.md"
    path.write_text(SAMPLE)
    return load_allowed(path)


# -- paths and templates

LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
WORD = st.text(LOWER, min_size=1, max_size=8)
COMPONENT = st.lists(WORD, min_size=1, max_size=3).flatmap(
    lambda words: st.sampled_from([".", "_", "__", "-", "--"]).map(lambda sep: sep.join(words)))
HOST = st.one_of(st.sampled_from(["127.0.0.1:5000", "localhost", "registry.example.com:443"]),
                 st.builds("{}.{}".format, WORD, WORD))
TAG = st.text(LOWER + "ABCXYZ_.-", min_size=1, max_size=20).filter(lambda t: t[0] not in ".-")
DIGEST = st.text("0123456789abcdef", min_size=64, max_size=64).map("sha256:".__add__)


@st.composite
def image_references(draw: st.DrawFn) -> str:
    host = draw(st.none() | HOST)
    path = "/".join(draw(st.lists(COMPONENT, min_size=1, max_size=3)))
    name = f"{host}/{path}" if host else path
    suffix = draw(st.sampled_from(["", "tag", "digest", "both"]))
    if suffix in ("tag", "both"):
        name += ":" + draw(TAG)
    if suffix in ("digest", "both"):
        name += "@" + draw(DIGEST)
    return name


IDS = st.one_of(st.text("0123456789abcdef", min_size=64, max_size=64),
                st.text("0123456789abcdef", min_size=12, max_size=12),
                st.text(LOWER + "ABCXYZ_.-", min_size=1, max_size=40).filter(lambda t: t[0] not in "_.-"))
VERSIONS = st.sampled_from(["", "/v1.41", "/v1.24", "/v1.45"])
QUERIES = st.sampled_from(["", "?all=1", "?filters=%7B%22label%22%3A+%5B%22a%3Db%22%5D%7D", "?tail=50&x=/y"])


@given(image_references(), VERSIONS, QUERIES)
def test_any_image_reference_maps_to_the_name_template(allowed: list[Endpoint], image: str, version: str,
                                                       query: str) -> None:
    """docker-py quotes the reference with `/` and `:` left as they are; `@` arrives as %40."""
    path = clean_path(f"{version}/images/{quote(image, safe='/:')}/json{query}")
    assert path == f"/images/{image}/json"
    assert template_for("GET", path, allowed) == ("/images/{name}/json", True)
    assert template_for("DELETE", clean_path(f"{version}/images/{quote(image, safe='/:')}"), allowed) == (
        "/images/{name}", True)
    assert guess_template(path) == "/images/{name}/json"


@given(IDS, VERSIONS, QUERIES)
def test_any_id_maps_to_the_id_template(allowed: list[Endpoint], ident: str, version: str,
                                        query: str) -> None:
    path = clean_path(f"{version}/containers/{ident}/json{query}")
    assert template_for("GET", path, allowed) == ("/containers/{id}/json", True)
    assert template_for("DELETE", clean_path(f"{version}/containers/{ident}{query}"), allowed) == (
        "/containers/{id}", True)
    assert template_for("GET", clean_path(f"{version}/services/{ident}/logs"), allowed) == (
        "/services/{id}/logs", True)


@given(st.data())
def test_a_path_with_an_extra_segment_never_matches_an_id_template(allowed: list[Endpoint],
                                                                   data: st.DataObject) -> None:
    endpoint = data.draw(st.sampled_from([e for e in allowed if "{name}" not in e.template]))
    segments = [data.draw(IDS) if s == "{id}" else s for s in endpoint.template.strip("/").split("/")]
    at = data.draw(st.integers(0, len(segments)))
    segments.insert(at, data.draw(IDS))
    path = "/" + "/".join(segments)
    assert endpoint.pattern.fullmatch(path) is None
    assert template_for(endpoint.method, path, allowed) != (endpoint.template, True)


@pytest.mark.parametrize(("target", "path"), [
    ("/v1.41/containers/json?all=1&filters=%7B%7D", "/containers/json"),
    ("/containers/json", "/containers/json"),
    ("/v4.0.0/libpod/info", "/libpod/info"),
    ("http+docker://localhost/v1.41/_ping", "/_ping"),
    ("/v1.41/images/local/busybox%40sha256%3Aab/json", "/images/local/busybox@sha256:ab/json"),
    ("/v1.41", "/"),
    ("/version2/x", "/version2/x"),
])
def test_clean_path(target: str, path: str) -> None:
    assert clean_path(target) == path


def test_the_literal_endpoint_wins_over_a_placeholder(allowed: list[Endpoint]) -> None:
    assert match("GET", "/images/json", allowed) == next(e for e in allowed if e.template == "/images/json")
    assert template_for("GET", "/images/json/json", allowed) == ("/images/{name}/json", True)  # image "json"
    assert template_for("GET", "/containers/json", allowed) == ("/containers/json", True)


@pytest.mark.parametrize(("method", "path", "guess"), [
    ("POST", "/containers/4f2a/kill", "/containers/{id}/kill"),
    ("POST", "/containers/prune", "/containers/prune"),
    ("POST", "/exec/abc/start", "/exec/{id}/start"),
    ("GET", "/images/127.0.0.1:5000/a/b:1/history", "/images/{name}/history"),
    ("POST", "/images/load", "/images/load"),
    ("GET", "/plugins/vieux/sshfs:latest/json", "/plugins/{name}/json"),
    ("GET", "/distribution/local/busybox:latest/json", "/distribution/{name}/json"),
    ("GET", "/secrets/s1", "/secrets/{id}"),
    ("POST", "/build", "/build"),
])
def test_an_unlisted_call_is_named_as_the_row_to_add(allowed: list[Endpoint], method: str, path: str,
                                                     guess: str) -> None:
    assert template_for(method, path, allowed) == (guess, False)


# -- the list


def test_the_sample_table_parses(allowed: list[Endpoint]) -> None:
    assert len(allowed) == 9
    image = next(e for e in allowed if e.template == "/images/{name}/json")
    assert image.engines == {"docker", "swarm"} and image.why == "inspect an image \\| by reference"


@pytest.mark.parametrize(("row", "problem"), [
    ("| GET | /containers/{id}/json | dokker | x |", "engines"),
    ("| GET | /containers/{ref}/json | docker | x |", "placeholders"),
    ("| GET | /v1.41/containers/json | docker | x |", "version"),
    ("| GET | /containers/json?all=1 | docker | x |", "query"),
    ("| FETCH | /containers/json | docker | x |", "method"),
    ("| GET | /containers/json | docker |  |", "Why"),
    ("| GET | /_ping | docker | dup |", "twice"),
    ("| GET | /containers/json | docker |", "4 cells"),
])
def test_a_malformed_row_is_refused_with_its_line(tmp_path: Path, row: str, problem: str) -> None:
    path = tmp_path / "docker-api.md"
    path.write_text(SAMPLE.replace("| GET | /containers/json | docker | list |", row))
    with pytest.raises(ApiListError, match=problem):
        load_allowed(path)


def test_the_committed_list_parses() -> None:
    endpoints = load_allowed(API_LIST)
    assert {"GET /_ping", "POST /containers/create"} <= {f"{e.method} {e.template}" for e in endpoints}


# -- request heads

def stream() -> tuple[bytes, list[tuple[str, str]]]:
    """Keep-alive requests back to back: bodies that look like heads must not be read as requests."""
    hidden = b"GET /hidden HTTP/1.1\r\nHost: x\r\n\r\n"
    chunk = b"\r\n\r\nDELETE /also-hidden HTTP/1.1\r\n\r\n"
    data = (b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\nConnection: keep-alive\r\n\r\n"
            b"\r\n"  # a stray CRLF between requests is allowed
            + b"POST /v1.41/containers/create?name=x HTTP/1.1\r\nContent-Length: %d\r\n"
              b"Content-Type: application/json\r\n\r\n" % len(hidden) + hidden
            + b"POST /v1.41/images/load HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x;ext=1\r\n" % len(chunk) + chunk + b"\r\n" + b"3\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
            + b"GET /v1.41/containers/abc/json HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    return data, [("GET", "/v1.41/_ping"), ("POST", "/v1.41/containers/create?name=x"),
                  ("POST", "/v1.41/images/load"), ("GET", "/v1.41/containers/abc/json")]


def read(chunks: list[bytes]) -> tuple[list[tuple[str, str]], list[str], RequestReader]:
    requests: list[tuple[str, str]] = []
    unparsed: list[str] = []
    reader = RequestReader(lambda m, t: requests.append((m, t)), unparsed.append)
    for chunk in chunks:
        reader.feed(chunk)
    return requests, unparsed, reader


def test_pipelined_heads_and_bodies_in_one_read() -> None:
    data, expected = stream()
    requests, unparsed, reader = read([data])
    assert (requests, unparsed, reader.state) == (expected, [], State.HEAD)


def test_one_byte_at_a_time() -> None:
    data, expected = stream()
    requests, unparsed, _ = read([data[i:i + 1] for i in range(len(data))])
    assert (requests, unparsed) == (expected, [])


@given(st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_the_stream_reads_the_same(cuts: list[int]) -> None:
    data, expected = stream()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    requests, unparsed, _ = read([data[a:b] for a, b in zip(points, points[1:], strict=False)])
    assert (requests, unparsed) == (expected, [])


def test_garbage_is_forwarded_raw_and_reported_once() -> None:
    requests, unparsed, reader = read([b"GET /_ping HTTP/1.1\r\n\r\n", b"\x16\x03\x01 not http\r\n\r\n",
                                       b"GET /after HTTP/1.1\r\n\r\n"])
    assert requests == [("GET", "/_ping")] and len(unparsed) == 1 and reader.state is State.RAW


def test_an_upgraded_connection_is_raw_without_a_complaint() -> None:
    requests, unparsed, reader = read([b"POST /v1.41/containers/x/attach?stream=1 HTTP/1.1\r\n"
                                       b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
                                       b"GET /raw HTTP/1.1\r\n\r\n"])
    assert requests == [("POST", "/v1.41/containers/x/attach?stream=1")] and unparsed == []
    assert reader.state is State.RAW


def test_an_endless_head_is_given_up() -> None:
    _, unparsed, reader = read([b"GET /x HTTP/1.1\r\nX-A: " + b"a" * 70_000])
    assert reader.state is State.RAW and "longer" in unparsed[0]


# -- the recorder on the real daemon

@pytest.mark.docker
def test_a_runtime_call_through_the_recorder_is_recorded(allowed: list[Endpoint]) -> None:
    upstream = daemon_socket()
    if upstream is None or not os.path.exists(upstream):
        docker_unavailable(f"no Docker daemon socket ({upstream})")
        return
    recorder = ApiRecorder(upstream)
    recorder.current_test = "the-test"
    runtime = DockerRuntime(recorder.base_url("docker"), timeout=30)
    try:
        runtime.ping()
        runtime.image_present("127.0.0.1:5000/not/here:tag")
    except DockerUnavailable as exc:
        docker_unavailable(str(exc))
    finally:
        runtime.close()
        recorder.close()
    recorded = {(m, p) for _, m, p in recorder.calls}
    assert {("GET", "/_ping"), ("GET", "/images/127.0.0.1:5000/not/here:tag/json")} <= recorded
    report = compare(recorder.calls, recorder.unparsed, [e for e in allowed if e.template != "/_ping"])
    assert [(c.method, c.template, c.first_test) for c in report.new if c.template == "/_ping"] == [
        ("GET", "/_ping", "the-test")]
    assert report.failed and any("| GET | /_ping | docker |" in line for line in failure_lines(report))
    assert next(c for c in report.calls if c.template == "/images/{name}/json").listed


def test_the_swarm_engine_creates_volumes_and_pulls_like_the_docker_one(
        docker_client: docker.DockerClient) -> None:
    """The swarm engine's pipeline also ensures agent-level named volumes and pulls on the manager (inherited
    from `DockerRuntime`, no swarm needed): this records those swarm rows of docs/docker-api.md."""
    runtime = SwarmRuntime(agent_base_url("swarm"), timeout=30)
    volume = f"lat-{RUN_ID}-api-surface-swarm"
    try:
        assert runtime.ensure_volume(volume, test_labels()) is True
        assert runtime.ensure_volume(volume, test_labels()) is False
        assert docker_client.volumes.get(volume).attrs["Labels"] == test_labels()
        with pytest.raises(ImagePullError, match="127.0.0.1:1"):  # nothing listens there: refused at once
            runtime.pull("127.0.0.1:1/api-surface/none:1", timeout=30)
    finally:
        runtime.close()
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(volume).remove()


PROBE = '''
import docker
from tests.support.api_surface import agent_base_url


def test_calls_an_unlisted_endpoint():
    client = docker.APIClient(base_url=agent_base_url(), version="1.41")
    client.ping()
    client.volumes()  # GET /volumes: the agent never lists volumes, so the list has no row for it
    client.close()
'''


@pytest.mark.docker
def test_a_session_with_an_unlisted_call_fails_naming_the_row_and_the_test(tmp_path: Path) -> None:
    """The plugin end to end, in a pytest of its own (the recorder is per session): the test passes, the
    session fails."""
    if not os.path.exists(daemon_socket() or ""):
        docker_unavailable("no Docker daemon socket")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("LOCAL_AGENT_API_SURFACE", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.support.api_surface", "-q",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "| GET | /volumes | docker | ... |" in done.stdout
    assert "first by test_probe.py::test_calls_an_unlisted_endpoint, e.g. GET /volumes" in done.stdout
    recorded = json.loads((tmp_path / ".pytest_cache/d/api-surface/recorded.json").read_text())
    assert {(c["method"], c["template"], c["listed"]) for c in recorded["calls"]} == {
        ("GET", "/_ping", True), ("GET", "/volumes", False)}
