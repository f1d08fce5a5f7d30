"""The Docker boundary without a daemon: names, specs, inspect parsing and the transient/permanent error map.

Unreachable daemons are real here (a missing socket, a closed port, a port that accepts and never answers),
because a fake would only repeat our assumptions about how docker-py wraps those failures.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest
import requests
import urllib3.exceptions

from agent.runtime.docker import (
    ContainerInfo,
    ContainerSpec,
    DockerError,
    DockerRuntime,
    DockerUnavailable,
    ImageNotFound,
    ImagePullError,
    container_name_for,
)
from agent.runtime.docker_clients import DEFAULT_ADDRESS
from agent.runtime.docker_types import engine_error_is_transient, is_unreachable, reason

RUN_ID = "0c5b6e9d-5f1e-4c8e-9a43-2b7f1d3c4e5a"


# ------------------------------------------------------------------------------------------------ names
def test_container_name_is_deterministic_and_keeps_uuids_readable() -> None:
    assert container_name_for(RUN_ID) == f"prefect-{RUN_ID}"
    assert container_name_for(RUN_ID) == container_name_for(RUN_ID)
    assert container_name_for(RUN_ID, prefix="la") == f"la-{RUN_ID}"


def test_unsafe_ids_become_safe_names_that_cannot_collide() -> None:
    a, b = container_name_for("run/1 x"), container_name_for("run:1 x")
    assert a != b  # both sanitise to "run-1-x"; the hash of the original tells them apart
    for name in (a, b, container_name_for("///"), container_name_for("x" * 300)):
        ContainerSpec(name=name, image="i", command=[], environment={}, labels={})  # validates the name
        assert len(name) <= 128


# ------------------------------------------------------------------------------------------------ specs
def spec(**overrides: object) -> ContainerSpec:
    fields: dict[str, object] = dict(name="prefect-1", image="flow:1", command=["prefect", "execute"],
                                     environment={"A": "1"}, labels={"io.prefect.flow-run-id": "1"})
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


def test_create_kwargs_merge_extra_hosts_and_join_the_first_network() -> None:
    kwargs = spec(extra_hosts={"host.docker.internal": "host-gateway"}, networks=["a", "b"],
                  host_config={"mem_limit": "256m", "extra_hosts": {"db": "10.0.0.2"}}).create_kwargs()
    assert kwargs["extra_hosts"] == {"db": "10.0.0.2", "host.docker.internal": "host-gateway"}
    assert kwargs["network"] == "a"  # "b" is connected before start
    assert kwargs["mem_limit"] == "256m" and kwargs["detach"] is True
    assert kwargs["command"] == ["prefect", "execute"] and kwargs["name"] == "prefect-1"


@pytest.mark.parametrize("overrides", [
    {"name": "-bad"},
    {"name": "has space"},
    {"host_config": {"labels": {"x": "y"}}},
    {"host_config": {"image": "other"}},
    {"networks": ["n"], "host_config": {"network_mode": "host"}},
])
def test_invalid_specs_are_refused_before_docker_sees_them(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        spec(**overrides)


# ------------------------------------------------------------------------------------------------ inspect
INSPECT_OOM = {
    "Id": "f" * 64, "Name": "/prefect-1", "Created": "2026-01-01T00:00:00.1Z", "Image": "sha256:" + "a" * 64,
    "State": {"Status": "exited", "Running": False, "OOMKilled": True, "ExitCode": 137, "Error": "",
              "StartedAt": "2026-01-01T00:00:01Z", "FinishedAt": "2026-01-01T00:00:09Z"},
    "Config": {"Image": "flow:1", "Labels": {"io.prefect.flow-run-id": "1"}},
}


def test_container_info_reads_exit_code_and_oom() -> None:
    info = ContainerInfo.from_attrs(INSPECT_OOM)
    assert (info.name, info.status, info.exit_code, info.oom_killed) == ("prefect-1", "exited", 137, True)
    assert info.finished_at == "2026-01-01T00:00:09Z" and info.image == "flow:1" and not info.running
    assert info.labels == {"io.prefect.flow-run-id": "1"} and info.error is None


ZERO = "0001-01-01T00:00:00Z"  # Docker's "never"


def test_container_info_of_a_container_that_never_started() -> None:
    attrs = {**INSPECT_OOM, "State": {"Status": "created", "OOMKilled": False, "ExitCode": 127,
                                      "Error": "exec: \"prefect\": executable file not found in $PATH",
                                      "StartedAt": ZERO, "FinishedAt": ZERO},
             "Config": {"Image": "flow:1", "Labels": None}}
    info = ContainerInfo.from_attrs(attrs)
    assert info.exit_code is None  # 127 is the failed start, not an exit of the flow
    assert info.started_at is None and info.finished_at is None and info.labels == {}
    assert "executable file not found" in (info.error or "")


# ------------------------------------------------------------------------------------------------ errors
@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung daemon."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


def test_missing_socket_names_the_address_and_the_mount() -> None:
    runtime = DockerRuntime("unix:///nonexistent.sock")
    assert runtime.address == "unix:///nonexistent.sock"
    with pytest.raises(DockerUnavailable) as caught:
        runtime.ping()
    message = str(caught.value)
    assert message.startswith("Cannot reach the Docker daemon at unix:///nonexistent.sock: No such file")
    assert "-v /nonexistent.sock:/nonexistent.sock" in message
    assert caught.value.transient and caught.value.address == "unix:///nonexistent.sock"
    assert len(message.splitlines()) == 1


def test_closed_tcp_port_is_unavailable_with_tcp_advice(closed_port: int) -> None:
    runtime = DockerRuntime(f"tcp://127.0.0.1:{closed_port}", timeout=5)
    for call in (runtime.ping, runtime.daemon_facts, lambda: runtime.image_present("busybox"),
                 lambda: runtime.find_by_label("x"), lambda: runtime.launch(spec())):
        with pytest.raises(DockerUnavailable) as caught:
            call()
        assert f"at tcp://127.0.0.1:{closed_port}: Connection refused. " in str(caught.value)
        assert "DOCKER_HOST" in str(caught.value)


def test_a_daemon_that_never_answers_times_out(silent_port: int) -> None:
    runtime = DockerRuntime(f"tcp://127.0.0.1:{silent_port}", timeout=0.3)
    with pytest.raises(DockerUnavailable) as caught:
        runtime.ping()
    assert "timed out after 0.3s" in str(caught.value) and "overloaded or hung" in str(caught.value)


def test_permission_denied_suggests_the_socket_group() -> None:
    # the shape docker-py's unix adapter produces when the socket exists but may not be opened
    wrapped = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", PermissionError(13, "Permission denied")))
    assert is_unreachable(wrapped)
    error = DockerUnavailable(DEFAULT_ADDRESS, reason(wrapped, 60))
    assert "Permission denied" in str(error) and "--group-add" in str(error)


def api_error(status: int, text: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(text, response=response, explanation=text)


def test_daemon_5xx_is_transient_and_4xx_is_permanent() -> None:
    runtime = DockerRuntime("unix:///nonexistent.sock")
    with pytest.raises(DockerUnavailable) as unavailable, runtime.errors("list containers"):
        raise api_error(500, "containerd is restarting")
    assert "containerd is restarting" in str(unavailable.value) and unavailable.value.transient
    with pytest.raises(DockerError) as refused, runtime.errors("list containers"):
        raise api_error(403, "blocked by the socket proxy")
    assert not isinstance(refused.value, DockerUnavailable)
    assert not refused.value.transient and refused.value.status_code == 403
    assert "blocked by the socket proxy" in str(refused.value)


@pytest.mark.parametrize(("status", "message", "transient"), [
    (500, "failed to add interface veth12ab to sandbox: error setting interface: Link not found", True),
    (500, "failed to create endpoint x on network bridge: context deadline exceeded", True),
    (404, "No such container: 3f3c0a9bb2be", True),  # removed under us between create and start
    (500, "could not select device driver \"\" with capabilities: [[gpu]]", False),
    (500, "OCI runtime create failed: exec: \"prefect\": executable file not found in $PATH", False),
    (400, "invalid mount config for type \"bind\": bind source path does not exist", False),
])
def test_only_engine_races_are_transient_at_create_and_start(status: int, message: str,
                                                             transient: bool) -> None:
    assert engine_error_is_transient(api_error(status, message)) is transient


@pytest.mark.parametrize(("status", "message", "transient"), [
    (404, "manifest for x:nope not found: manifest unknown", False),
    (500, 'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused', True),
    (None, "unauthorized: authentication required", False),
    (None, "received unexpected HTTP status: 502 Bad Gateway", True),
    (400, "something the registry did not like", False),
])
def test_pull_errors_keep_the_registry_message(status: int | None, message: str, transient: bool) -> None:
    error = ImagePullError("x:nope", message, status_code=status)
    assert error.transient is transient and error.registry_message == message
    assert str(error) == f"Pulling image x:nope failed: {message}"


def test_image_not_found_names_the_image_and_no_pull() -> None:
    error = ImageNotFound("org/flow:2")
    assert "org/flow:2" in str(error) and "--no-pull" in str(error) and not error.transient


def test_address_follows_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    assert DockerRuntime().address == "tcp://10.1.2.3:2375"
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("HOME", "/nonexistent-home")  # no CLI context either
    assert DockerRuntime().address == DEFAULT_ADDRESS == "unix:///var/run/docker.sock"


@pytest.mark.docker
def test_a_pooled_client_keeps_few_connections_however_many_containers_it_asks_about(
        docker_client: docker.DockerClient) -> None:
    """docker-py pools a unix socket's connections per URL (25 kept) and ignores its `num_pools`: every
    container the watcher inspected used to leave a socket open. Asked about 30 containers, the agent's
    client keeps at most POOLS_PER_CLIENT of them (plain docker-py keeps ~23)."""
    from agent.runtime.docker_clients import POOLS_PER_CLIENT, ClientPool

    client = ClientPool(None, 30).get()
    client.api.ping()

    def sockets() -> int:
        links = [f"/proc/self/fd/{fd}" for fd in os.listdir("/proc/self/fd")]
        return sum(os.readlink(link).startswith("socket:") for link in links if os.path.exists(link))

    before = sockets()
    for _ in range(30):  # each id is its own URL, hence its own pool; a 404 answers on a connection too
        with pytest.raises(docker.errors.NotFound):
            client.api.inspect_container(uuid.uuid4().hex)
    assert sockets() - before <= POOLS_PER_CLIENT
    client.close()
