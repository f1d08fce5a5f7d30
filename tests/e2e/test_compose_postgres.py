"""End to end: the compose `postgres` profile as documented (`--profile postgres up agent-pg demo-pg`).

Two server replicas share one PostgreSQL database and one network name (`server-pg`). The demo's run must end
Success; each replica, asked directly, must answer and report the same run; the row must be in PostgreSQL; the
name `server-pg` must resolve to both replicas; and the run must have had exactly one container. The SQLite
stack of the same file must not start. Images are those of tests/e2e/test_compose.py (shared tags, built
once); PostgreSQL is the official image where a registry is reachable, else the stand-in of
tests/support/images.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.test_compose import (
    TOKEN_PATTERN,
    ComposeProject,
    PublishedServer,
    build_product_image,
    isolated_env,
    running_project,
    wait_for_demo_success,
)
from tests.support import api
from tests.support.docker_fixtures import RUN_ID
from tests.support.images import postgres_image
from tests.support.server_fixtures import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROFILE = ("--profile", "postgres")
REPLICAS = ("server-pg-1", "server-pg-2")
SUCCESS_TIMEOUT_S = 240.0
FLOW_RUN_LABEL = "io.prefect.flow-run-id"


@pytest.fixture
def postgres_project(
    docker_client: docker.DockerClient, flow_image: str, tmp_path: Path
) -> Iterator[ComposeProject]:
    """Images built, then a unique project; teardown removes its flow containers and `down -v`."""
    build_product_image(docker_client, "server")
    build_product_image(docker_client, "agent")
    name = f"lae2epg{RUN_ID[:8]}{os.getpid() % 10000}"
    agent_name = f"{name}-agent"
    env = isolated_env(name, free_port(), agent_name, flow_image)
    env.update({"LOCAL_AGENT_POSTGRES_IMAGE": postgres_image(docker_client),
                "LOCAL_AGENT_PG_SERVER_PORT": str(free_port())})
    project = ComposeProject(name, env, tmp_path)
    with running_project(docker_client, project, f"{agent_name}-pg", *PROFILE) as running:
        yield running


def replica_address(client: docker.DockerClient, project: ComposeProject, service: str) -> str:
    """The replica's own address on the compose network: asks it directly, past the shared name."""
    container = client.containers.get(project.container_id(service))
    networks = container.attrs["NetworkSettings"]["Networks"]
    return str(networks[project.env["LOCAL_AGENT_NETWORK"]]["IPAddress"])


def resolved_by_agent(client: docker.DockerClient, project: ComposeProject, name: str) -> set[str]:
    """What `name` resolves to inside the agent's container (Docker's DNS lists every holder of an alias)."""
    agent = client.containers.get(project.container_id("agent-pg"))
    code = f"import socket; print(' '.join({{a[4][0] for a in socket.getaddrinfo({name!r}, 4200)}}))"
    result = agent.exec_run(["python", "-c", code])
    output = result.output
    assert isinstance(output, bytes) and result.exit_code == 0, output
    return set(output.decode().split())


def state_in_postgres(project: ComposeProject, run_id: str) -> str:
    """The run's state read with psql from the database itself, not through a server."""
    sql = f"SELECT state FROM flow_run WHERE id = '{run_id}'"
    proc = project.run("exec", "-T", "postgres", "sh", "-c",
                       f'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "{sql}"')
    return proc.stdout.strip()


def test_postgres_profile_runs_the_demo_on_two_replicas_of_one_database(
    docker_client: docker.DockerClient, postgres_project: ComposeProject
) -> None:
    project = postgres_project
    started = time.monotonic()
    project.run(*PROFILE, "up", "--detach", "--no-build", "agent-pg", "demo-pg", timeout=SUCCESS_TIMEOUT_S)
    run_id, run, _, token = wait_for_demo_success(
        docker_client, project, started, demo="demo-pg", server="server-pg-1",
        port="LOCAL_AGENT_PG_SERVER_PORT", timeout=SUCCESS_TIMEOUT_S)

    addresses = {service: replica_address(docker_client, project, service) for service in REPLICAS}
    assert len(set(addresses.values())) == 2, addresses
    for service, address in addresses.items():
        seen = api.flow_run(PublishedServer(f"http://{address}:4200/graphql"), run_id, token=token)
        assert (seen["state"], seen["version"]) == (run["state"], run["version"]), (service, seen, run)
    assert resolved_by_agent(docker_client, project, "server-pg") == set(addresses.values())
    assert state_in_postgres(project, run_id) == "Success"

    # One container for the run, removed by the agent within seconds of its success, said once in its log.
    agent = docker_client.containers.get(project.container_id("agent-pg"))
    deadline = time.monotonic() + 30
    while docker_client.api.containers(all=True, filters={"label": f"{FLOW_RUN_LABEL}={run_id}"}):
        assert time.monotonic() < deadline, "the successful run's container is still there"
        time.sleep(0.5)
    agent_log = agent.logs().decode(errors="replace")
    assert agent_log.count(f"flow run {run_id}: removed container") == 1, agent_log
    assert agent_log.count(f"({run_id}) ended: Success") == 1, agent_log
    running = set(project.run(*PROFILE, "ps", "--services", "--filter", "status=running").stdout.split())
    assert {"postgres", *REPLICAS, "agent-pg"} <= running, running
    assert not {"server", "agent"} & running, f"the SQLite stack started too: {running}"
    assert not TOKEN_PATTERN.search(project.logs()), "a token reached a compose service's log"
