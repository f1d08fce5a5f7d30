"""Run options under the operator's policy: the real agent process, server, daemon and stand-in flow image.

Every option must be visible in `docker inspect` of a container the agent launched; every denial must fail
its run with a message naming the setting while the agent goes on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from agent.api.models import FlowRun
from agent.launch.plan import Identity, plan_container
from agent.settings import Settings
from tests.support import api
from tests.support.agent_fixtures import REPO_ROOT, AgentProcess, agent_env
from tests.support.docker_fixtures import LOCAL_BUSYBOX, RUN_ID, TEST_RUN_LABEL, test_labels
from tests.support.ops_helpers import containers_of, stand_in_flow
from tests.support.server_fixtures import ServerHandle

AgentFactory = Callable[..., AgentProcess]
AGENT_LABEL = "io.local-agent.agent"
SECRET = "s3cret-registry-pw"


@pytest.fixture
def networks(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Two user-defined networks; teardown detaches (our) containers first, then removes them."""
    names = [f"lat-{RUN_ID}-{uuid.uuid4().hex[:6]}-{i}" for i in (1, 2)]
    created = [docker_client.networks.create(name, labels=test_labels()) for name in names]
    yield names
    for network in created:
        network.reload()
        for container in network.containers:
            container.remove(force=True)
        network.remove()


@pytest.fixture
def volume_name(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"lat-{RUN_ID}-{uuid.uuid4().hex[:6]}-cache"
    yield name
    for container in docker_client.containers.list(all=True, filters={"volume": name}):
        container.remove(force=True)
    try:
        docker_client.volumes.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


def the_container(client: docker.DockerClient, run_id: str) -> Any:
    (container,) = containers_of(client, run_id)
    return container


def test_every_agent_level_option_is_visible_in_docker_inspect(
    server: ServerHandle,
    agent_factory: AgentFactory,
    docker_client: docker.DockerClient,
    stand_in_image: str,
    registry: Any,
    networks: list[str],
    volume_name: str,
    tmp_path: Path,
) -> None:
    image = registry.push(stand_in_image, f"options-{uuid.uuid4().hex[:6]}")
    flow_id = api.register_docker_flow(
        server,
        name="opts",
        image_name=image.split("/", 1)[1].rsplit(":", 1)[0],
        image_tag="latest",
        registry_url=registry.url,
        run_config={"type": "DockerRun", "env": {"FROM_RUN": "r"}, "ports": [9000]},
    )
    run_id = api.create_flow_run(server, flow_id)
    credentials = {registry.url: {"username": "ci", "password": SECRET}}
    agent = agent_factory(
        server,
        network=networks,
        volumes=[f"{tmp_path}:/hostdata:ro", f"{volume_name}:/cache"],
        memory="96m",
        max_memory="256m",
        cpus=0.5,
        pids_limit=128,
        max_concurrent_runs=5,
        env_vars={"FROM_AGENT": "a", "STAND_IN_SLEEP": "30"},
        registry_credentials=json.dumps(credentials),
    )
    api.wait_for_log(server, run_id, "Submitted for execution")
    attrs = the_container(docker_client, run_id).attrs
    host = attrs["HostConfig"]
    assert host["Init"] is True  # the default: tini as PID 1
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert (mounts["/hostdata"]["Type"], mounts["/hostdata"]["Source"]) == ("bind", str(tmp_path))
    assert mounts["/hostdata"]["RW"] is False
    assert (mounts["/cache"]["Type"], mounts["/cache"]["Name"], mounts["/cache"]["RW"]) == (
        "volume",
        volume_name,
        True,
    )
    volume_labels = docker_client.volumes.get(volume_name).attrs["Labels"]
    assert volume_labels[AGENT_LABEL] == agent.name and volume_labels[TEST_RUN_LABEL] == RUN_ID
    assert set(attrs["NetworkSettings"]["Networks"]) == set(networks)  # the second joined before start
    assert (host["Memory"], host["MemorySwap"]) == (96 << 20, 96 << 20)
    assert (host["NanoCpus"], host["PidsLimit"]) == (500_000_000, 128)
    assert host["ExtraHosts"] == ["host.docker.internal:host-gateway"]
    assert "9000/tcp" in attrs["Config"]["ExposedPorts"]
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert (env["FROM_AGENT"], env["FROM_RUN"], env["PREFECT__CONTEXT__FLOW_RUN_ID"]) == ("a", "r", run_id)
    assert attrs["Config"]["Labels"][AGENT_LABEL] == agent.name
    output = agent.output()
    assert f"REGISTRY_CREDENTIALS for {registry.url} (user ci, password)" in output
    assert SECRET not in output


def hostile(server: ServerHandle, image: str, host_config: dict[str, Any]) -> str:
    flow_id = stand_in_flow(server, image, run_config={"type": "DockerRun", "host_config": host_config})
    return api.create_flow_run(server, flow_id)


def test_hostile_run_configs_fail_with_the_setting_to_change_while_the_agent_goes_on(
    server: ServerHandle,
    agent_factory: AgentFactory,
    docker_client: docker.DockerClient,
    stand_in_image: str,
    busybox_image: str,
) -> None:
    denied = {
        hostile(server, stand_in_image, {"privileged": True}): "--allowed-run-overrides privileged",
        hostile(
            server, stand_in_image, {"binds": ["/var/run/docker.sock:/var/run/docker.sock"]}
        ): "--allowed-run-overrides docker_socket",
        hostile(server, stand_in_image, {"binds": ["/etc:/host-etc:ro"]}): "--allowed-host-paths",
        hostile(server, stand_in_image, {"network_mode": "host"}): "--allowed-run-overrides host_network",
    }
    other = api.register_docker_flow(
        server, name="bb", image_name=LOCAL_BUSYBOX.split(":")[0], image_tag="latest"
    )
    denied[api.create_flow_run(server, other)] = "PREFECT__CLOUD__AGENT__ALLOWED_IMAGES"
    good = api.create_flow_run(server, stand_in_flow(server, stand_in_image))
    agent = agent_factory(server, allowed_images=[f"{stand_in_image.rpartition(':')[0]}:*"])
    for run_id, hint in denied.items():
        message = api.wait_for_state(server, run_id, "Failed", timeout=30)["serialized_state"]["message"]
        assert "denied" in message.lower() or "not allowed" in message, message
        assert hint in message, message
        assert containers_of(docker_client, run_id) == []
    api.wait_for_log(server, good, "Submitted for execution")
    assert agent.returncode is None


def test_a_flow_over_its_clamped_memory_limit_is_oom_killed(
    server: ServerHandle,
    agent_factory: AgentFactory,
    docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    flow_id = stand_in_flow(
        server,
        stand_in_image,
        run_config={
            "type": "DockerRun",
            "env": {"STAND_IN_ALLOC_MB": "128"},
            "host_config": {"mem_limit": "1g"},
        },
    )
    run_id = api.create_flow_run(server, flow_id)
    agent_factory(server, max_memory="48m")
    logs = api.wait_for_log(server, run_id, "Submitted for execution")
    assert any(log["level"] == "WARNING" and "clamped to 48m" in log["message"] for log in logs)
    container = the_container(docker_client, run_id)
    assert container.wait(timeout=30)["StatusCode"] == 137
    container.reload()
    assert container.attrs["State"]["OOMKilled"] is True
    assert container.attrs["HostConfig"]["Memory"] == 48 << 20


def test_the_concurrency_limit_holds_while_twenty_runs_are_due(
    server: ServerHandle,
    agent_factory: AgentFactory,
    docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    flow_id = stand_in_flow(server, stand_in_image)
    runs = [api.create_flow_run(server, flow_id) for _ in range(20)]
    agent = agent_factory(server, max_concurrent_runs=3, env_vars={"STAND_IN_SLEEP": "2"})
    filters = {"label": f"{AGENT_LABEL}={agent.name}"}
    samples: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        samples.append(len(docker_client.containers.list(filters=filters)))  # running ones
        pending = [r for r in runs if api.flow_run(server, r)["state"] == "Scheduled"]
        if not pending and samples[-1] == 0:  # all claimed; and launched, not merely claimed:
            pending = [r for r in runs if not api.has_log(server, r, "Submitted for execution")]
            if not pending:
                break
        time.sleep(0.1)
    assert not pending, f"{len(pending)} of 20 runs not launched; samples {samples}\n{agent.output()[-2000:]}"
    assert max(samples) == 3, samples  # the limit was reached, never exceeded


def test_gpu_requests_become_device_requests(
    server: ServerHandle,
    agent_factory: AgentFactory,
    docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    """No GPU here: Docker accepts the create and refuses the start, so the spec is created, not started."""
    run = FlowRun.model_validate(
        {
            "id": f"gpu-{RUN_ID}",
            "version": 1,
            "flow": {
                "id": "f",
                "name": "gpu",
                "core_version": "1.4.1",
                "storage": {
                    "type": "Docker",
                    "image_name": stand_in_image.split(":")[0],
                    "image_tag": "latest",
                },
            },
        }
    )
    settings = Settings(gpus="device=0,1", container_labels=test_labels())
    spec = plan_container(run, stand_in_image, settings, Identity("gpu-agent", [], "t", "http://x", [])).spec
    container = docker_client.containers.create(**spec.create_kwargs())
    try:
        (request,) = container.attrs["HostConfig"]["DeviceRequests"]
        assert (request["DeviceIDs"], request["Capabilities"]) == (["0", "1"], [["gpu"]])
    finally:
        container.remove(force=True)
    run_id = api.create_flow_run(server, stand_in_flow(server, stand_in_image))
    agent_factory(server, gpus="all")
    message = api.wait_for_state(server, run_id, "Failed", timeout=30)["serialized_state"]["message"]
    assert "could not start it" in message and "gpu" in message, message  # Docker's own reason
    assert containers_of(docker_client, run_id) == []  # the unstartable container was removed


def test_explain_prints_the_container_with_sources_and_creates_nothing(
    token_server: ServerHandle,
    docker_client: docker.DockerClient,
    stand_in_image: str,
    tmp_path: Path,
) -> None:
    user = token_server.create_token("USER", "explain-user")
    runner = token_server.create_token("RUNNER", "explain-runner")
    flow_id = stand_in_flow(
        token_server,
        stand_in_image,
        token=user,
        run_config={"type": "DockerRun", "env": {"FROM_RUN": "1"}, "host_config": {"mem_limit": "2g"}},
    )
    run_id = api.create_flow_run(token_server, flow_id, token=user)
    bad = api.create_flow_run(
        token_server,
        stand_in_flow(
            token_server,
            stand_in_image,
            token=user,
            run_config={"type": "DockerRun", "host_config": {"privileged": True}},
        ),
        token=user,
    )
    env = agent_env(token_server, runner, tmp_path, {"max_memory": "1g", "env_vars": {"FROM_AGENT": "x"}})

    def explain(flow_run_id: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "agent", "explain", flow_run_id, "--json"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        assert runner not in done.stdout + done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    result = explain(run_id)
    fields = {(f["field"], f["source"]): f for f in result["fields"]}
    assert result["verdict"] == "launch" and result["image"] == stand_in_image
    assert fields[("mem_limit", "policy clamp")]["value"] == 1 << 30
    assert fields[("env FROM_RUN", "run config")]["value"] == "1"
    assert fields[("env PREFECT__CLOUD__API_KEY", "flow runner (fixed)")]["value"] == "***"
    assert "image present" in fields[("pull", "PREFECT__CLOUD__AGENT__PULL_POLICY")]["value"]
    assert explain(bad)["verdict"] == "denied"
    assert api.flow_run(token_server, run_id, token=user)["state"] == "Scheduled"  # nothing claimed
    assert containers_of(docker_client, run_id) == []  # nothing created
