"""Pulls from a registry that requires a login: Debian's docker-registry with htpasswd (bcrypt) basic auth.

The agent's `REGISTRY_CREDENTIALS` (here with a `password_file`) must reach the daemon's pull, the password
must never reach a log line, a refused login must fail the run with the registry's own message, and a
rotated password file must apply to the next pull without restarting the agent (agent.runtime.registry_auth).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import docker
import pytest

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.docker_fixtures import (
    LocalRegistry,
    docker_unavailable,
    ensure_registry_binary,
    start_registry,
)
from tests.support.server_fixtures import ServerHandle

USERNAME = "ci-puller"


@dataclass
class PrivateRegistry:
    registry: LocalRegistry
    password: str

    @property
    def auth_config(self) -> dict[str, str]:
        return {"username": USERNAME, "password": self.password}


@pytest.fixture
def private_registry(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[PrivateRegistry]:
    binary = ensure_registry_binary()
    if binary is None:
        docker_unavailable("Debian package docker-registry is not installed and apt-get could not install it")
    password = secrets.token_urlsafe(18)
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"{USERNAME}:{hashed}\n")
    registry = start_registry(binary, tmp_path, docker_client, htpasswd=htpasswd)
    yield PrivateRegistry(registry, password)
    registry.stop()


def test_private_registry_pull_uses_the_agents_credentials_and_rereads_a_rotated_password_file(
    server: ServerHandle,
    agent_factory: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    stand_in_image: str,
    private_registry: PrivateRegistry,
    tmp_path: Path,
) -> None:
    registry = private_registry.registry
    repo_name = f"private-{uuid.uuid4().hex[:8]}"
    reference = registry.push(stand_in_image, repo_name, auth_config=private_registry.auth_config)
    flow_id = api.register_docker_flow(
        server, name="private", image_name=repo_name, image_tag="latest", registry_url=registry.url
    )
    docker_client.images.remove(reference, noprune=True)  # only a pull can bring it back

    # No credentials anywhere: the daemon's own message, as the run's reason.
    anonymous = agent_factory(server)
    run_id = api.create_flow_run(server, flow_id)
    failed = api.wait_for_state(server, run_id, "Failed", timeout=60)
    assert "no basic auth credentials" in failed["serialized_state"]["message"], failed["serialized_state"]
    assert f"no credentials for {registry.url} (anonymous pull)" in anonymous.output()
    anonymous.stop()

    # A wrong password in the file: refused, retried once with the file re-read, then Failed.
    password_file = tmp_path / "registry-password"
    password_file.write_text("not-the-password\n")
    credentials = {registry.url: {"username": USERNAME, "password_file": str(password_file)}}
    agent = agent_factory(server, registry_credentials=credentials)
    run_id = api.create_flow_run(server, flow_id)
    failed = api.wait_for_state(server, run_id, "Failed", timeout=60)
    assert "unauthorized" in failed["serialized_state"]["message"].lower(), failed["serialized_state"]

    # The password is rotated in the file: the same agent's next pull logs in and the run launches.
    password_file.write_text(private_registry.password + "\n")
    run_id = api.create_flow_run(server, flow_id)
    api.wait_for_log(server, run_id, "Submitted for execution", timeout=60)
    assert docker_client.images.get(reference)  # pulled by the agent, not left over from the push
    output = agent.output()
    source = f"REGISTRY_CREDENTIALS for {registry.url} (user {USERNAME}, password_file {password_file})"
    assert source in output, output
    assert private_registry.password not in output
    assert private_registry.password not in anonymous.output()
