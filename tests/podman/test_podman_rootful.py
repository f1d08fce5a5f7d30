"""The real agent process against rootful Podman's Docker-compatible API (`podman system service`).

Real parts throughout: `local-agent start` pointed at the Podman socket (the engine is detected from its
`/version`), our server over HTTP, Prefect 1.4.1 in the example flow image, and the busybox stand-in for the
runs whose exit code, memory or lifetime matters. Images are copied from Docker into Podman once per
session. The server listens on 0.0.0.0: flow containers on Podman's default network reach it through
`host.docker.internal`, which the agent maps to that network's gateway (Podman 4 writes `host-gateway`
literally into /etc/hosts).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.podman.flows import hello_to_success
from tests.support import api
from tests.support.agent_fixtures import AGENT_LABEL, AgentProcess
from tests.support.docker_fixtures import LocalRegistry
from tests.support.ops_helpers import stand_in_flow, stand_in_run
from tests.support.podman import PodmanService
from tests.support.prefect_fixtures import PrefectBackend, PrefectVenv, running_backend

AgentFactory = Callable[..., AgentProcess]
RUN_LABEL = "io.prefect.flow-run-id"


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectBackend]:
    with running_backend("server", tmp_path_factory.mktemp("podman-server"), host="0.0.0.0") as found:
        yield found


@pytest.fixture(scope="module")
def stand_in(podman_rootful: PodmanService, docker_client: docker.DockerClient, stand_in_image: str) -> str:
    return podman_rootful.load(docker_client, stand_in_image)


def run_containers(podman: PodmanService, run_id: str) -> list[dict[str, object]]:
    return list(podman.client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}))


def wait_for_exit(podman: PodmanService, run_id: str, timeout: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    found = run_containers(podman, run_id)
    while any(c["State"] != "exited" for c in found) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = run_containers(podman, run_id)
    return found


def start(agent_factory: AgentFactory, backend: PrefectBackend, podman: PodmanService, **settings: object
          ) -> AgentProcess:
    return agent_factory(backend.server, base_url=podman.base_url, watch_interval=0.5, **settings)


def test_a_real_prefect_flow_succeeds_on_rootful_podman_and_its_container_is_removed(
    backend: PrefectBackend, podman_rootful: PodmanService, docker_client: docker.DockerClient,
    flow_image: str, prefect_venv: PrefectVenv, agent_factory: AgentFactory,
) -> None:
    run_id, agent = hello_to_success(podman_rootful, docker_client, flow_image, prefect_venv, backend,
                                     lambda: start(agent_factory, backend, podman_rootful))
    out = agent.wait_for_output("Engine: Podman 4")
    assert f"Engine: Podman {podman_rootful.client.version()['Version']} (rootful" in out
    assert podman_rootful.base_url.removeprefix("unix://") in out
    # cleanup: the watcher removes a successful run's container at its end
    deadline = time.monotonic() + 15
    while run_containers(podman_rootful, run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_containers(podman_rootful, run_id) == [], agent.output()


def test_exit_code_and_oom_kill_fail_the_run_on_rootful_podman(
    backend: PrefectBackend, podman_rootful: PodmanService, stand_in: str, agent_factory: AgentFactory,
) -> None:
    server = backend.server
    flow_id = stand_in_flow(server, stand_in, "podman-exits")
    crash = stand_in_run(server, flow_id, STAND_IN_EXIT="3")
    oom = stand_in_run(server, flow_id, STAND_IN_ALLOC_MB="96", STAND_IN_SLEEP="30")
    agent = start(agent_factory, backend, podman_rootful, memory="32m")
    for run_id in (crash, oom):
        run = api.wait_for_state(server, run_id, ["Failed", "Success", "Cancelled"], timeout=60)
        assert run["state"] == "Failed", agent.output()
    crashed = api.flow_run(server, crash)["state_message"]
    assert crashed == f"Flow run container prefect-{crash} exited with code 3", crashed
    assert "OOM-killed" in api.flow_run(server, oom)["state_message"], api.flow_run(server, oom)
    report = next(log["message"] for log in api.run_logs(server, oom) if log["level"] == "ERROR")
    assert "OOMKilled: true" in report and "Exit code: 137" in report, report
    (container,) = podman_rootful.client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={oom}"})
    assert container.attrs["HostConfig"]["Memory"] == 32 * 2**20  # the limit held: Podman applied it
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():  # cgroups v1: unrecorded, the agent infers
        assert container.attrs["State"]["OOMKilled"] is False
    podman_rootful.remove_containers(f"{AGENT_LABEL}={agent.name}")


def test_restart_recovery_adopts_without_doubling_and_cancellation_stops_the_container(
    backend: PrefectBackend, podman_rootful: PodmanService, stand_in: str, agent_factory: AgentFactory,
) -> None:
    server = backend.server
    flow_id = stand_in_flow(server, stand_in, "podman-recovery")
    long_run = stand_in_run(server, flow_id, STAND_IN_SLEEP="120")
    short_run = stand_in_run(server, flow_id, STAND_IN_SLEEP="4", STAND_IN_EXIT="4")
    first = start(agent_factory, backend, podman_rootful, name="podman-recovery-agent")
    for run_id in (long_run, short_run):
        api.wait_for_log(server, run_id, "Submitted for execution", timeout=30)
    first.stop(signal.SIGKILL)  # no drain, no goodbye: the containers keep running under conmon
    second = start(agent_factory, backend, podman_rootful, name="podman-recovery-agent",
                   cancel_grace_seconds=5)
    failed = api.wait_for_state(server, short_run, ["Failed", "Success", "Cancelled"], timeout=60)
    assert failed["state"] == "Failed" and "exited with code 4" in failed["state_message"], second.output()
    assert api.cancel_flow_run(server, long_run) in ("Cancelling", "Cancelled")  # Submitted: at once
    api.wait_for_state(server, long_run, "Cancelled", timeout=30)
    (container,) = wait_for_exit(podman_rootful, long_run)  # adopted (never launched twice), then stopped
    assert container["State"] == "exited", container
    for run_id in (long_run, short_run):
        submitted = [log for log in api.run_logs(server, run_id)
                     if log["message"].startswith("Submitted for execution")]
        assert len(submitted) == 1, submitted
        assert len(run_containers(podman_rootful, run_id)) <= 1
    podman_rootful.remove_containers(f"{AGENT_LABEL}={second.name}")


def test_a_run_pulls_its_image_from_a_local_registry_and_a_missing_tag_fails_with_the_registry_message(
    backend: PrefectBackend, podman_rootful: PodmanService, registry: LocalRegistry,
    docker_client: docker.DockerClient, stand_in_image: str, agent_factory: AgentFactory,
    tmp_path: Path,
) -> None:
    server = backend.server
    repo_name = f"podman-pull-{tmp_path.name[-8:].lower().replace('_', '-')}"
    reference = registry.push(stand_in_image, repo_name)
    pulled = api.register_docker_flow(server, name="pulled", image_name=repo_name, image_tag="latest",
                                      registry_url=registry.url)
    broken = api.register_docker_flow(server, name="broken", image_name=repo_name, image_tag="no-such-tag",
                                      registry_url=registry.url)
    pulled_run, broken_run = api.create_flow_run(server, pulled), api.create_flow_run(server, broken)
    agent = start(agent_factory, backend, podman_rootful)
    api.wait_for_log(server, pulled_run, "Submitted for execution", timeout=60)
    assert any("Pulling image" in log["message"] for log in api.run_logs(server, pulled_run))
    assert reference in {tag for image in podman_rootful.client.images.list() for tag in image.tags}
    failed = api.wait_for_state(server, broken_run, "Failed", timeout=60)
    message = failed["serialized_state"]["message"]
    assert f"{registry.url}/{repo_name}:no-such-tag" in message and "manifest unknown" in message.lower(), (
        message, agent.output())
    podman_rootful.remove_containers(f"{AGENT_LABEL}={agent.name}")
    podman_rootful.client.images.remove(reference, force=True)
