"""End to end: the compose `socket-proxy` profile as documented (`--profile socket-proxy up agent-proxied
demo`).

The agent has no Docker socket: every Docker API call goes through HAProxy (deploy/socket-proxy), which
passes only the agent's endpoints. The demo's Prefect flow run must end Success, the proxy must have refused
nothing the agent asked for, and a container on the flow containers' network must not reach the proxy (one on
the proxy's own network does, so the probe works; both probes run the flow image). Images are those of
tests/e2e/test_compose.py (shared tags) plus the proxy's.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from tests.e2e.test_compose import (
    TOKEN_PATTERN,
    ComposeProject,
    build_product_image,
    isolated_env,
    running_project,
    wait_for_demo_success,
)
from tests.support.docker_fixtures import RUN_ID, test_labels
from tests.support.server_fixtures import free_port
from tests.support.socket_proxy import build_socket_proxy_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROFILE = ("--profile", "socket-proxy")
SUCCESS_TIMEOUT_S = 180.0
PROXY_LINE = re.compile(r"^socket-proxy \S+ (\S+) (\S+) (\d+) .* (allowed|denied|-)$", re.MULTILINE)


@pytest.fixture
def proxied_project(
    docker_client: docker.DockerClient, flow_image: str, tmp_path: Path
) -> Iterator[ComposeProject]:
    """Images built, then a unique project; teardown removes its flow containers and `down -v`."""
    build_product_image(docker_client, "server")
    build_product_image(docker_client, "agent")
    proxy_image = build_socket_proxy_image(docker_client)
    name = f"lae2esp{RUN_ID[:8]}{os.getpid() % 10000}"
    agent_name = f"{name}-agent"
    env = isolated_env(name, free_port(), agent_name, flow_image)
    env["LOCAL_AGENT_IMAGE_SOCKET_PROXY"] = proxy_image
    project = ComposeProject(name, env, tmp_path)
    with running_project(docker_client, project, f"{agent_name}-proxied", *PROFILE) as running:
        yield running


PROBE = ("import sys, urllib.request\n"
         "try:\n    urllib.request.urlopen(sys.argv[1], timeout=3).read()\n"
         "except Exception as exc:\n    sys.exit(f'unreachable: {exc!r}')\nprint('reached')")


def reaches(client: docker.DockerClient, image: str, network: str, url: str) -> tuple[bool, str]:
    """Whether a throwaway container of the flow image on `network` gets an HTTP answer from `url`."""
    container = client.containers.run(image, [PROBE, url], entrypoint=["python", "-c"], network=network,
                                      detach=True, labels=test_labels())
    try:
        code = container.wait(timeout=60)["StatusCode"]
        return code == 0, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_agent_behind_the_socket_proxy_runs_the_demo_flow_to_success(
    docker_client: docker.DockerClient, proxied_project: ComposeProject, flow_image: str
) -> None:
    project = proxied_project
    started = time.monotonic()
    project.run(*PROFILE, "up", "--detach", "--no-build", "agent-proxied", "demo", timeout=SUCCESS_TIMEOUT_S)
    run_id, *_ = wait_for_demo_success(docker_client, project, started, timeout=SUCCESS_TIMEOUT_S)

    agent = docker_client.containers.get(project.container_id("agent-proxied"))
    ended = f"({run_id}) ended: Success, exit code 0"
    deadline = time.monotonic() + 30  # the agent settles the exit (and removes the container) after the run
    while ended not in (log := agent.logs().decode(errors="replace")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ended in log, log
    assert "PREFECT__CLOUD__AGENT__BASE_URL=tcp://socket-proxy:2375" in agent.attrs["Config"]["Env"]
    assert not [m for m in agent.attrs["Mounts"] if "docker.sock" in (m.get("Source") or "")], agent.attrs
    assert agent.exec_run(["test", "-e", "/var/run/docker.sock"]).exit_code != 0

    proxy = docker_client.containers.get(project.container_id("socket-proxy"))
    requests_seen = PROXY_LINE.findall(proxy.logs().decode(errors="replace"))
    denied = [r for r in requests_seen if r[3] != "allowed"]
    assert not denied, f"the proxy refused the agent: {denied}"
    calls = {(method, re.sub(r"^/v[0-9.]+", "", path)) for method, path, _, _ in requests_seen}
    assert ("POST", "/containers/create") in calls and ("GET", "/events") in calls, sorted(calls)
    print(f"proxy: {len(requests_seen)} requests, {len(calls)} distinct, 0 denied")

    assert_flow_network_cannot_reach_the_proxy(docker_client, project, proxy, flow_image)
    assert not TOKEN_PATTERN.search(project.logs()), "a token reached a compose service's log"


def assert_flow_network_cannot_reach_the_proxy(
    client: docker.DockerClient, project: ComposeProject, proxy: Container,
    image: str,
) -> None:
    """Flow containers join LOCAL_AGENT_NETWORK; the proxy is only on the project's `docker-api` network."""
    flow_network = project.env["LOCAL_AGENT_NETWORK"]
    networks = proxy.attrs["NetworkSettings"]["Networks"]
    assert flow_network not in networks, networks
    (api_network,) = networks
    proxy_ip = networks[api_network]["IPAddress"]
    ok, output = reaches(client, image, api_network, f"http://{proxy_ip}:2375/_ping")
    assert ok, f"the probe itself does not work from the proxy's own network: {output}"
    for url in (f"http://{proxy_ip}:2375/_ping", "http://socket-proxy:2375/_ping"):
        ok, output = reaches(client, image, flow_network, url)
        assert not ok, f"a container on the flow network reached the proxy at {url}: {output}"
    ok, output = reaches(client, image, flow_network, "http://server:4200/ui/")
    assert ok, f"the flow network's probe cannot reach the server either, so it proves nothing: {output}"
