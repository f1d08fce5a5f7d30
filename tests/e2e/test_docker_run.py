"""End to end: the agent image started with plain `docker run`, as docs/running.md shows it.

A real server on the host (0.0.0.0, token auth) holds a real Prefect 1.4.1 `hello` flow and one run of it. The
agent container reaches the server through `host.docker.internal` (`--add-host ...:host-gateway`), starts the
flow container on the host's engine through the mounted socket, and the run ends Success. A second, cheap test
checks the documented unprivileged variant (`--user 10001 --group-add <socket gid>`) can reach the engine.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.e2e.test_compose import SHUTDOWN_LINE, STARTUP_LINES, build_product_image
from tests.support import api
from tests.support.docker_fixtures import RUN_ID, TEST_RUN_LABEL, remove_containers
from tests.support.prefect_fixtures import PrefectVenv, prefect_env, register_examples
from tests.support.server_fixtures import ServerHandle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOCKET = "/var/run/docker.sock"
STOP_TIMEOUT_S = 45  # above the agent's default drain timeout (30 s)


@pytest.fixture(scope="module")
def agent_image(docker_client: docker.DockerClient) -> str:
    return build_product_image(docker_client, "agent")


@pytest.fixture
def agent_container(docker_client: docker.DockerClient) -> Iterator[str]:
    """A unique container name (also the agent's name); teardown removes it and its flow containers."""
    name = f"lae2e-run-{RUN_ID}-{os.getpid() % 10000}"
    yield name
    remove_containers(docker_client, f"io.local-agent.agent={name}")
    try:
        docker_client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


def docker_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", "run", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"docker run exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_docker_run_agent_launches_a_flow_run_to_success(
    docker_client: docker.DockerClient,
    agent_image: str,
    flow_image: str,
    prefect_venv: PrefectVenv,
    server_factory: Callable[..., ServerHandle],
    agent_container: str,
) -> None:
    server = server_factory(host="0.0.0.0", auth="token")
    user_token = server.create_token("USER", "e2e-user")
    runner_token = server.create_token("RUNNER", "e2e-runner")
    env = prefect_env(server, user_token)
    summary = register_examples(prefect_venv, env, "--flow", "hello", "--create-run")
    (run_id,) = summary["flows"]["hello"]["runs"]

    docker_run(
        "--detach", "--name", agent_container, "--label", f"{TEST_RUN_LABEL}={RUN_ID}",
        "--volume", f"{SOCKET}:{SOCKET}",
        "--add-host", "host.docker.internal:host-gateway",
        "--env", f"PREFECT__CLOUD__API=http://host.docker.internal:{server.port}",
        "--env", f"PREFECT__CLOUD__AGENT__API_TOKEN={runner_token}",
        "--env", f"PREFECT__CLOUD__AGENT__NAME={agent_container}",
        agent_image,
    )
    agent = docker_client.containers.get(agent_container)
    try:
        run = api.wait_for_state(server, run_id, ["Success", "Failed"], timeout=120, token=user_token)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- agent log\n{agent.logs().decode(errors='replace')}") from exc
    assert run["state"] == "Success", run["serialized_state"]
    launched = {"label": f"io.prefect.flow-run-id={run_id}"}
    flow_containers = docker_client.api.containers(all=True, filters=launched)  # none once removed
    assert {c["Labels"].get("io.local-agent.agent") for c in flow_containers} <= {agent_container}
    ended = f"({run_id}) ended: Success, exit code 0"  # this agent launched it and saw it end
    deadline = time.monotonic() + 30  # the container exits a moment after the run's Success
    while ended not in agent.logs().decode(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.5)

    started = time.monotonic()
    agent.stop(timeout=STOP_TIMEOUT_S)
    agent.reload()
    log = agent.logs().decode(errors="replace")
    assert agent.attrs["State"]["ExitCode"] == 0, log
    assert time.monotonic() - started < STOP_TIMEOUT_S
    for line in STARTUP_LINES:
        assert line in log, f"{line!r} missing from the agent's log:\n{log}"
    assert SHUTDOWN_LINE.search(log), log
    assert ended in log, log
    assert runner_token not in log


def test_unprivileged_agent_user_reaches_the_engine_with_the_socket_group(
    docker_client: docker.DockerClient, agent_image: str, tmp_path: Path
) -> None:
    """The hardened variant docs/running.md shows: uid 10001 plus the socket's group, no root."""
    gid = os.stat(SOCKET).st_gid
    probe = "import docker, os; print(os.getuid(), docker.from_env().ping())"
    proc = docker_run(
        "--rm", "--label", f"{TEST_RUN_LABEL}={RUN_ID}", "--volume", f"{SOCKET}:{SOCKET}",
        "--user", "10001", "--group-add", str(gid), "--entrypoint", "python", agent_image, "-c", probe,
    )
    assert proc.stdout.split() == ["10001", "True"], proc.stdout


def test_agent_image_stays_small_and_carries_no_installer(
    docker_client: docker.DockerClient, agent_image: str
) -> None:
    """≤ 200 MB (docs/running.md reports the size); only the venv ships: no pip, no wheels, no compiler."""
    image = docker_client.images.get(agent_image)
    assert image.attrs["Size"] <= 200_000_000, f"{image.attrs['Size'] / 1e6:.0f} MB"
    assert image.attrs["Config"]["Entrypoint"][:3] == ["tini", "-s", "--"]
    assert image.attrs["Config"]["Healthcheck"]["Test"][-2:] == ["local-agent", "check"]
    probe = ("for p in /opt/venv/bin/pip /wheels /src /root/.cache/pip; do [ -e $p ] && echo $p; done; "
             "command -v gcc cc; true")
    proc = docker_run("--rm", "--label", f"{TEST_RUN_LABEL}={RUN_ID}", "--entrypoint", "sh", agent_image,
                      "-c", probe)
    assert proc.stdout == "", f"build leftovers in the agent image: {proc.stdout}"
