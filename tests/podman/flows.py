"""What the rootful and rootless Podman tests share: the example `hello` flow, registered by the real Prefect
1.4.1 client and run to Success by an agent on that Podman."""

from __future__ import annotations

from collections.abc import Callable

import docker

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.podman import PodmanService
from tests.support.prefect_fixtures import PrefectBackend, PrefectVenv, register_examples


def hello_to_success(podman: PodmanService, docker_client: docker.DockerClient, flow_image: str,
                     prefect_venv: PrefectVenv, backend: PrefectBackend,
                     start_agent: Callable[[], AgentProcess]) -> tuple[str, AgentProcess]:
    """The run id and its agent, once the run is Success and its greeting is in the run's logs."""
    podman.load(docker_client, flow_image)  # stored as localhost/<name>; the run config names <name>
    summary = register_examples(prefect_venv, backend.env(), "--flow", "hello", "--create-run")
    (run_id,) = summary["flows"]["hello"]["runs"]
    agent = start_agent()
    try:
        run = api.wait_for_state(backend.server, run_id, ["Success", "Failed"], timeout=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- agent output\n{agent.output()}") from exc
    assert run["state"] == "Success", (run["serialized_state"], agent.output())
    api.wait_for_log(backend.server, run_id, "greeting: HELLO, WORLD!")
    return run_id, agent
