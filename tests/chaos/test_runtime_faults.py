"""`DockerRuntime.launch` against Docker answers that lie: the daemon acted, the reply said 500.

Judged by the real daemon (the containers it holds, their `StartedAt`), through the fault proxy.
"""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from agent.runtime.docker import ContainerCreateError, ContainerSpec, DockerRuntime
from agent.runtime.docker_types import FLOW_RUN_LABEL
from tests.support.docker_fixtures import RUN_ID, test_labels
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.docker


@pytest.fixture
def proxied(fault_proxy: FaultProxy) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(fault_proxy.base_url, timeout=30)
    yield runtime
    runtime.close()


@pytest.fixture
def named(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Iterator[str]:
    """A container name of this test's own; whatever Docker holds under it is removed afterwards."""
    name = f"lat-{RUN_ID}-{request.node.name[5:40]}"
    yield name
    for container in _ours(docker_client, name):
        container.remove(force=True)


def _spec(name: str, image: str) -> ContainerSpec:
    return ContainerSpec(name=name, image=image, command=["prefect", "execute", "flow-run"],
                         environment={"STAND_IN_SLEEP": "30"}, labels=test_labels(**{FLOW_RUN_LABEL: name}))


def _ours(docker_client: docker.DockerClient, name: str) -> list[docker.models.containers.Container]:
    return docker_client.containers.list(all=True, filters={"name": f"^/{name}$"})


def test_a_start_docker_did_although_it_answered_500_is_kept_and_reported_started(
        proxied: DockerRuntime, fault_proxy: FaultProxy, stand_in_image: str,
        docker_client: docker.DockerClient, named: str) -> None:
    records: list[str] = []
    fault_proxy.configure(fail_start=1.0, mode="after")
    result = proxied.launch(_spec(named, stand_in_image), before_start=records.append)
    found = _ours(docker_client, named)
    assert [c.id for c in found] == [result.container_id] == records  # one container, one record
    assert result.started and found[0].attrs["State"]["Running"]
    assert fault_proxy.counters().faults[("start", "after")] == 1


def test_a_create_docker_did_although_it_answered_500_is_adopted_and_started_once(
        proxied: DockerRuntime, fault_proxy: FaultProxy, stand_in_image: str,
        docker_client: docker.DockerClient, named: str) -> None:
    spec = _spec(named, stand_in_image)
    records: list[str] = []
    fault_proxy.configure(fail_create=1.0, mode="after")
    with pytest.raises(ContainerCreateError) as caught:
        proxied.launch(spec, before_start=records.append)
    assert caught.value.transient and records == []  # nothing started, nothing recorded
    fault_proxy.configure(fail_create=0.0)
    result = proxied.launch(spec, before_start=records.append)  # the pipeline's retry
    found = _ours(docker_client, named)
    assert [c.id for c in found] == [result.container_id] == records
    assert not result.created and result.started and found[0].attrs["State"]["Running"]
