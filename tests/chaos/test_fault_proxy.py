"""The fault proxy itself, against the real daemon: forwarding, streaming, and each fault mode."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from tests.support.docker_fixtures import test_labels
from tests.support.fault_proxy import FaultProxy, endpoint_of

pytestmark = pytest.mark.docker


@pytest.fixture
def client(fault_proxy: FaultProxy) -> Iterator[docker.DockerClient]:
    proxied = docker.DockerClient(base_url=fault_proxy.base_url, timeout=30)
    yield proxied
    proxied.close()


def _create(client: docker.DockerClient, image: str, marker: str) -> Any:
    return client.containers.create(image, ["true"], labels=test_labels(**{"lat-fault-proxy": marker}))


def _containers(real: docker.DockerClient, marker: str) -> list[Any]:
    return real.containers.list(all=True, filters={"label": f"lat-fault-proxy={marker}"})


def test_endpoints_are_matched_with_or_without_the_version_prefix() -> None:
    assert endpoint_of("POST", "/v1.41/containers/create") == "create"
    assert endpoint_of("POST", "/containers/create") == "create"
    assert endpoint_of("POST", "/v1.41/containers/abc123/start") == "start"
    assert endpoint_of("POST", "/containers/abc123/start") == "start"
    assert endpoint_of("GET", "/v1.41/containers/abc123/json") == "other"
    assert endpoint_of("POST", "/v1.41/containers/abc123/stop") == "other"
    assert endpoint_of("GET", "/v1.41/events") == "events"


def test_ping_create_start_and_events_stream_through(client: docker.DockerClient, fault_proxy: FaultProxy,
                                                     busybox_image: str, docker_client: docker.DockerClient
                                                     ) -> None:
    assert client.ping() is True
    events: list[dict[str, Any]] = []
    stream = client.events(decode=True, filters={"type": "container", "label": "lat-fault-proxy=stream"})
    reader = threading.Thread(target=lambda: events.extend(stream), daemon=True)
    reader.start()
    container = _create(client, busybox_image, "stream")
    container.start()
    deadline = time.monotonic() + 20
    while {"create", "start", "die"} - {e.get("Action") for e in events} and time.monotonic() < deadline:
        time.sleep(0.05)  # the events arrive while the stream is open: nothing is buffered to its end
    stream.close()
    reader.join(5)
    assert {"create", "start", "die"} <= {e.get("Action") for e in events}
    assert docker_client.containers.get(container.id).attrs["State"]["ExitCode"] == 0
    counted = fault_proxy.counters()
    assert counted.requests["create"] == 1 and counted.requests["start"] == 1 and counted.faults_total == 0
    assert counted.requests["events"] == 1
    container.remove(force=True)


def test_before_mode_answers_500_and_docker_never_sees_the_call(
        client: docker.DockerClient, fault_proxy: FaultProxy, busybox_image: str,
        docker_client: docker.DockerClient) -> None:
    fault_proxy.configure(fail_create=1.0, mode="before")
    with pytest.raises(docker.errors.APIError) as caught:
        _create(client, busybox_image, "before")
    assert caught.value.status_code == 500 and "injected fault" in str(caught.value.explanation)
    assert _containers(docker_client, "before") == []
    assert fault_proxy.counters().faults[("create", "before")] == 1


def test_after_mode_lets_docker_act_then_answers_500(
        client: docker.DockerClient, fault_proxy: FaultProxy, busybox_image: str,
        docker_client: docker.DockerClient) -> None:
    fault_proxy.configure(fail_create=1.0, mode="after")
    with pytest.raises(docker.errors.APIError) as caught:
        _create(client, busybox_image, "after")
    assert caught.value.status_code == 500
    created = _containers(docker_client, "after")
    assert len(created) == 1  # the nasty case: the container exists although the answer said otherwise
    fault_proxy.configure(fail_create=0.0, fail_start=1.0)
    with pytest.raises(docker.errors.APIError):
        client.api.start(created[0].id)
    created[0].reload()
    assert created[0].attrs["State"]["StartedAt"] != "0001-01-01T00:00:00Z"  # it did start
    assert fault_proxy.counters().faults == {("create", "after"): 1, ("start", "after"): 1}
    created[0].remove(force=True)


def test_delay_is_added_before_chosen_endpoints(client: docker.DockerClient, fault_proxy: FaultProxy) -> None:
    fault_proxy.configure(delay_s=0.5, delay_endpoints=frozenset({"other"}))
    client.ping()
    assert fault_proxy.counters().delayed == {"other": 1}


def test_fractions_are_validated(fault_proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        fault_proxy.configure(fail_start=1.5)
    with pytest.raises(ValueError):
        fault_proxy.configure(mode="sometimes")
