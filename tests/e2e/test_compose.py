"""End to end: `docker compose up` on the repository's docker-compose.yml, exactly as a user runs it.

Both images are built from the repository's Dockerfile (offline here: wheels + local base image), then one
isolated compose project (own name, network, volumes and a free published port) runs server, token
provisioning, agent and the demo. The demo's flow run must end Success according to the server, the agent's
log must show its start-up and the submission, and `docker stop` must end the agent cleanly (exit 0, within
the grace period, with a shutdown line). `down -v` removes everything, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from server.auth import TOKEN_PREFIX
from tests.support import api
from tests.support.docker_fixtures import RUN_ID, docker_unavailable, remove_containers, test_labels
from tests.support.images import REPO_ROOT, build_image, flow_image_env
from tests.support.server_fixtures import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
AGENT_IMAGE = "local-agent:e2e"
SERVER_IMAGE = "local-agent-server:e2e"
SUCCESS_TIMEOUT_S = 180.0
STOP_GRACE_S = 60  # docker-compose.yml: stop_grace_period of the agent
STARTUP_LINES = ("Starting LocalAgent", "Agent successfully connected", "Waiting for flow runs...")
SHUTDOWN_LINE = re.compile(r"(?i)agent stopped|shutting down|shut down")
TOKEN_PATTERN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{16,}")


# ------------------------------------------------------------------------------------------------ images


def wheel_requirements() -> list[str]:
    """What the offline build installs, from pyproject.toml: build backend, dependencies, server extra."""
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    return [*meta["build-system"]["requires"], *project["dependencies"],
            *project["optional-dependencies"]["server"]]


def build_product_image(client: docker.DockerClient, target: str) -> str:
    """The agent or server image from the repository's Dockerfile; cached while its inputs are unchanged."""
    return build_image(
        context=REPO_ROOT,
        dockerfile=REPO_ROOT / "Dockerfile",
        tag=AGENT_IMAGE if target == "agent" else SERVER_IMAGE,
        target=target,
        wheel_requirements=wheel_requirements(),
        include=["pyproject.toml", "README.md", "agent", "server"],
        labels={"io.local-agent.image": f"e2e-{target}"},
        client=client,
    )


# ------------------------------------------------------------------------------------------------ compose


def compose_command() -> list[str]:
    """Compose v1 (`docker-compose`, installed here) or the v2 plugin (`docker compose`)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    docker_unavailable("neither docker-compose nor the docker compose plugin is installed")
    raise AssertionError("unreachable")


# The one change to the user's compose file: healthchecks probe every second or two instead of every 5-10 s
# (same checks, from the images and docker-compose.yml). Docker runs a container's first check one interval
# after its start, so each `service_healthy` gate of `depends_on` would otherwise cost up to 10 s per tier.
HEALTHCHECK_OVERRIDE = """\
services:
  server: {healthcheck: {interval: 1s}}
  server-pg-1: {healthcheck: {interval: 1s}}
  server-pg-2: {healthcheck: {interval: 1s}}
  postgres: {healthcheck: {interval: 1s}}
  agent: {healthcheck: {interval: 2s}}
"""


@dataclass
class ComposeProject:
    """One isolated compose project; `run` adds the project name, the files (docker-compose.yml, then
    HEALTHCHECK_OVERRIDE) and an empty env file."""

    name: str
    env: dict[str, str]
    workdir: Path
    command: list[str] = field(default_factory=compose_command)

    def files(self) -> list[str]:
        override = self.workdir / "healthcheck-override.yml"
        if not override.exists():
            override.write_text(HEALTHCHECK_OVERRIDE)
        return ["--file", str(COMPOSE_FILE), "--file", str(override)]

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        env_file = self.workdir / "empty.env"  # a developer's own .env must not change the test
        env_file.touch()
        cmd = [*self.command, "--project-name", self.name, *self.files(),
               "--project-directory", str(REPO_ROOT), "--env-file", str(env_file), *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
                                 f"\n--- logs\n{self.logs()}")
        return proc

    def container_id(self, service: str) -> str:
        ids = self.run("ps", "--all", "-q", service, check=False).stdout.split() or \
            self.run("ps", "-q", service).stdout.split()
        assert ids, f"no container for service {service!r}"
        return ids[0]

    def logs(self) -> str:
        proc = subprocess.run([*self.command, "--project-name", self.name, *self.files(),
                               "--project-directory", str(REPO_ROOT), "logs", "--no-color"],
                              env=self.env, capture_output=True, text=True, timeout=60)
        return proc.stdout[-20000:]


@dataclass
class PublishedServer:
    """The compose server through its published port, for `tests.support.api` (token per request)."""

    url: str

    def graphql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        body = {"query": query, "variables": json.dumps(variables)}
        return requests.post(self.url, data=json.dumps(body), headers=sent, timeout=15).json()  # type: ignore[no-any-return]


def isolated_env(project: str, port: int, agent_name: str, flow_image: str) -> dict[str, str]:
    """The caller's environment without our settings (they would leak into the services), plus the test's:
    the demo uses the tests' own flow image, never the user's demo tag."""
    own = ("PREFECT__", "LOCAL_AGENT_", "PIP_", "PYTHON_IMAGE", "COMPOSE_", "EXAMPLE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env.update({
        "LOCAL_AGENT_NETWORK": f"{project}-net",
        "LOCAL_AGENT_SERVER_PORT": str(port),
        "LOCAL_AGENT_IMAGE": AGENT_IMAGE,
        "LOCAL_AGENT_IMAGE_SERVER": SERVER_IMAGE,
        "PREFECT__CLOUD__AGENT__NAME": agent_name,
        **flow_image_env(flow_image),
    })
    return env


@contextmanager
def running_project(
    docker_client: docker.DockerClient, project: ComposeProject, agent_name: str, *profile: str
) -> Iterator[ComposeProject]:
    """Yields the project; afterwards removes its agent's flow containers and everything `down -v` misses."""
    try:
        yield project
    finally:
        remove_containers(docker_client, f"io.local-agent.agent={agent_name}")  # the flow containers
        project.run(*profile, "down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        remove_containers(docker_client, f"com.docker.compose.project={project.name}")  # if `down` failed
        label = f"com.docker.compose.project={project.name}"
        for volume in docker_client.volumes.list(filters={"label": label}):
            volume.remove(force=True)


@pytest.fixture
def compose_project(
    docker_client: docker.DockerClient, flow_image: str, tmp_path: Path
) -> Iterator[ComposeProject]:
    """Images built, then a unique project; teardown removes its flow containers and `down -v`."""
    build_product_image(docker_client, "server")
    build_product_image(docker_client, "agent")
    name = f"lae2e{RUN_ID[:8]}{os.getpid() % 10000}"
    agent_name = f"{name}-agent"
    project = ComposeProject(name, isolated_env(name, free_port(), agent_name, flow_image), tmp_path)
    with running_project(docker_client, project, agent_name) as running:
        yield running


# ------------------------------------------------------------------------------------------------ the test


def demo_run_id(client: docker.DockerClient, project: ComposeProject, service: str = "demo") -> str:
    """Wait for the one-shot demo to exit 0 and read the run id from its JSON summary (last stdout line)."""
    demo = client.containers.get(project.container_id(service))
    result = demo.wait(timeout=SUCCESS_TIMEOUT_S)
    output = demo.logs().decode(errors="replace")
    assert result["StatusCode"] == 0, f"{service} exited {result}:\n{output}\n--- logs\n{project.logs()}"
    summary = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    (run_id,) = summary["flows"]["hello"]["runs"]
    return str(run_id)


def wait_for_demo_success(
    client: docker.DockerClient, project: ComposeProject, started: float, *, demo: str = "demo",
    server: str = "server", port: str = "LOCAL_AGENT_SERVER_PORT", timeout: float = SUCCESS_TIMEOUT_S,
) -> tuple[str, dict[str, Any], PublishedServer, str]:
    """The demo's flow run once it is Success (else the compose logs): its id, the run, the published
    server and a USER token to read more with."""
    run_id = demo_run_id(client, project, demo)
    create = ("local-agent-server", "token", "create", "--scope", "USER", "--name", "e2e-reader")
    token = project.run("exec", "-T", server, *create).stdout.strip()
    published = PublishedServer(f"http://127.0.0.1:{project.env[port]}/graphql")
    remaining = timeout - (time.monotonic() - started)
    try:
        run = api.wait_for_state(published, run_id, ["Success", "Failed"], timeout=remaining, token=token)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- compose logs\n{project.logs()}") from exc
    assert run["state"] == "Success", run["serialized_state"]
    print(f"{project.name}: up -> Success in {time.monotonic() - started:.1f} s")
    return run_id, run, published, token


def test_compose_up_runs_the_demo_flow_to_success_and_stops_cleanly(
    docker_client: docker.DockerClient, compose_project: ComposeProject
) -> None:
    project = compose_project
    started = time.monotonic()
    project.run("up", "--detach", "--no-build", timeout=SUCCESS_TIMEOUT_S)
    run_id, _, server, user_token = wait_for_demo_success(docker_client, project, started)

    agent = docker_client.containers.get(project.container_id("agent"))
    log = agent.logs().decode(errors="replace")
    for line in STARTUP_LINES:
        assert line in log, f"{line!r} missing from the agent's log:\n{log}"
    assert re.search(rf"(?i){run_id}.*submitted|submitted.*{run_id}", log), log
    ended = f"({run_id}) ended: Success, exit code 0"
    deadline = time.monotonic() + 30  # the agent settles the exit after the container is gone
    while ended not in log and time.monotonic() < deadline:
        time.sleep(0.5)
        log = agent.logs().decode(errors="replace")
    assert ended in log, log

    # What the README tells a user to look at: the look-ups inside the server container.
    listed = json.loads(project.run("exec", "-T", "server", "local-agent-server", "runs", "--json").stdout)
    assert [r["state"] for r in listed if r["id"] == run_id] == ["Success"], listed
    run_logs = project.run("exec", "-T", "server", "local-agent-server", "logs", run_id).stdout
    assert "Submitted for execution" in run_logs and "HELLO, WORLD!" in run_logs, run_logs

    wait_healthy(agent)  # the image's healthcheck passes under compose v1 and v2 alike

    stop_started = time.monotonic()
    agent.stop(timeout=STOP_GRACE_S)
    stop_seconds = time.monotonic() - stop_started
    agent.reload()
    log = agent.logs().decode(errors="replace")
    assert agent.attrs["State"]["ExitCode"] == 0, log
    assert stop_seconds < STOP_GRACE_S, f"the agent needed {stop_seconds:.1f} s to stop"
    assert SHUTDOWN_LINE.search(log), log
    assert not TOKEN_PATTERN.search(project.logs()), "a token reached a compose service's log"

    # The README's `docker run` of an agent beside the compose stack, on its network, runs the next run.
    run_id = project.run("exec", "-T", "server", "local-agent-server", "flow-run", "create", "--flow",
                         "hello").stdout.strip()
    with docker_run_agent(docker_client, project) as runner:
        try:
            run = api.wait_for_state(server, run_id, ["Success", "Failed"], timeout=120, token=user_token)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent\n{runner.logs().decode(errors='replace')}") from exc
        assert run["state"] == "Success", run["serialized_state"]


def wait_healthy(container: docker.models.containers.Container, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        health = container.attrs["State"].get("Health") or {}
        if health.get("Status") == "healthy":
            return
        time.sleep(1)
    raise AssertionError(f"{container.name} is not healthy: {container.attrs['State'].get('Health')}")


@contextmanager
def docker_run_agent(client: docker.DockerClient, project: ComposeProject
                     ) -> Iterator[docker.models.containers.Container]:
    """The agent image as README's "beside the compose stack" shows it: on the compose network, the API at
    http://server:4200, its own RUNNER token and name, flow containers on the same network."""
    network, name = project.env["LOCAL_AGENT_NETWORK"], project.env["PREFECT__CLOUD__AGENT__NAME"] + "-2"
    create = ("local-agent-server", "token", "create", "--scope", "RUNNER", "--name", "docker-run")
    token = project.run("exec", "-T", "server", *create).stdout.strip()
    container = client.containers.run(
        AGENT_IMAGE, detach=True, name=f"{project.name}-docker-run", network=network,
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        labels=test_labels(),
        environment={"PREFECT__CLOUD__API": "http://server:4200", "PREFECT__CLOUD__AGENT__NETWORK": network,
                     "PREFECT__CLOUD__AGENT__API_TOKEN": token,
                     "PREFECT__CLOUD__AGENT__NAME": name})
    try:
        yield container
    finally:
        container.remove(force=True)
        remove_containers(client, f"io.local-agent.agent={name}")
