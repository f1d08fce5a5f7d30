"""The real agent process against rootless Podman (`podman system service` run by an unprivileged user).

Rootless networks do not reach the host, so the agent runs its flows on the host network
(`NETWORK=host`), where the API it gives them (`host.docker.internal`, the loopback made reachable) is the
host's loopback. On these machines (cgroups v1) rootless Podman ignores resource limits silently: the agent
says so at start and fails a run that would get one, instead of running it unbounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from tests.podman.flows import hello_to_success
from tests.support import api
from tests.support.agent_fixtures import AGENT_LABEL, AgentProcess
from tests.support.ops_helpers import stand_in_flow, stand_in_run
from tests.support.podman import PodmanService
from tests.support.prefect_fixtures import PrefectBackend, PrefectVenv, running_backend

AgentFactory = Callable[..., AgentProcess]
RUN_LABEL = "io.prefect.flow-run-id"


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectBackend]:
    with running_backend("server", tmp_path_factory.mktemp("rootless-server")) as found:
        yield found


def start(agent_factory: AgentFactory, backend: PrefectBackend, podman: PodmanService, **settings: object
          ) -> AgentProcess:
    return agent_factory(backend.server, base_url=podman.base_url, network="host", watch_interval=0.5,
                         **settings)


def test_a_real_prefect_flow_succeeds_on_rootless_podman(
    backend: PrefectBackend, podman_rootless: PodmanService, docker_client: docker.DockerClient,
    flow_image: str, prefect_venv: PrefectVenv, agent_factory: AgentFactory,
) -> None:
    _, agent = hello_to_success(podman_rootless, docker_client, flow_image, prefect_venv, backend,
                                lambda: start(agent_factory, backend, podman_rootless))
    assert "Engine: Podman 4" in agent.output() and "(rootless" in agent.output()


def test_exit_code_cancellation_and_ignored_limits_on_rootless_podman(
    backend: PrefectBackend, podman_rootless: PodmanService, docker_client: docker.DockerClient,
    stand_in_image: str, agent_factory: AgentFactory,
) -> None:
    server = backend.server
    stand_in = podman_rootless.load(docker_client, stand_in_image)
    flow_id = stand_in_flow(server, stand_in, "rootless-exits")
    crash = stand_in_run(server, flow_id, STAND_IN_EXIT="5")
    sleeper = stand_in_run(server, flow_id, STAND_IN_SLEEP="120")
    agent = start(agent_factory, backend, podman_rootless, cancel_grace_seconds=5)
    failed = api.wait_for_state(server, crash, ["Failed", "Success", "Cancelled"], timeout=60)
    assert failed["state_message"] == f"Flow run container prefect-{crash} exited with code 5", agent.output()
    api.wait_for_log(server, sleeper, "Submitted for execution", timeout=30)
    assert api.cancel_flow_run(server, sleeper) in ("Cancelling", "Cancelled")
    api.wait_for_state(server, sleeper, "Cancelled", timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (container,) = podman_rootless.client.api.containers(all=True,
                                                             filters={"label": f"{RUN_LABEL}={sleeper}"})
        if container["State"] == "exited":
            break
        time.sleep(0.2)
    assert container["State"] == "exited", container
    agent.stop()
    podman_rootless.remove_containers(f"{AGENT_LABEL}={agent.name}")

    # A memory limit (the agent's MEMORY) would be ignored: reported at start, the run fails with the reason.
    bounded = stand_in_run(server, flow_id)
    limited = start(agent_factory, backend, podman_rootless, memory="64m")
    refused = api.wait_for_state(server, bounded, ["Failed", "Success", "Cancelled"], timeout=60)
    if enforces_limits(podman_rootless):  # cgroups v2 with delegated controllers: the limit holds
        assert refused["state"] == "Success", limited.output()
    else:
        assert refused["state"] == "Failed", limited.output()
        assert "does not enforce resource limits" in refused["state_message"], refused["state_message"]
        assert any("does not enforce resource limits" in log["message"]
                   for log in api.run_logs(server, bounded))
        warned = limited.wait_for_output("does not enforce resource limits")
        assert "does not enforce resource limits" in warned
        assert podman_rootless.client.api.containers(all=True,
                                                     filters={"label": f"{RUN_LABEL}={bounded}"}) == []
    podman_rootless.remove_containers(f"{AGENT_LABEL}={limited.name}")


def enforces_limits(podman: PodmanService) -> bool:
    """libpod's word on its host (the compat `/info` hides it): limits hold with a memory controller."""
    client: Any = podman.client.api  # libpod's own endpoint has no docker-py method
    info = client._result(client._get(f"{client.base_url}/v4.0.0/libpod/info"), json=True)
    return "memory" in ((info.get("host") or {}).get("cgroupControllers") or ())
