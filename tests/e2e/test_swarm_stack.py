"""End to end: `docker stack deploy` of deploy/swarm/stack.yml on the single-node swarm, as README's steps do.

The e2e agent and server images (built as for the compose tests) run as one isolated stack: its own name,
overlay network, data volume and token secret. The agent's RUNNER token is minted into the volume before the
stack starts (the stack file's first-deployment steps), a demo container on the attachable overlay registers
the example `hello` flow and creates a run, and the run must end Success through a flow *service* the stack's
agent created. Teardown removes the stack, its flow services, secret, network and volume.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest

from tests.e2e.test_compose import AGENT_IMAGE, SERVER_IMAGE, build_product_image
from tests.support.docker_fixtures import RUN_ID, test_labels
from tests.support.images import REPO_ROOT, flow_image_env
from tests.support.swarm_fixtures import (
    FLOW_RUN_LABEL,
    SwarmManager,
    docker_cli,
    remove_network,
    wait_until_gone,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STACK_FILE = REPO_ROOT / "deploy" / "swarm" / "stack.yml"
DATABASE_URL = "sqlite:////data/local-agent-server.db"
SUCCESS_TIMEOUT_S = 180

POLL_STATE = """
import json, os, sys, time, urllib.request
query = {"query": "query($id: uuid!) { flow_run_by_pk(id: $id) { state } }",
         "variables": json.dumps({"id": sys.argv[1]})}
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["READ_TOKEN"]}
deadline, state = time.monotonic() + float(sys.argv[2]), None
while time.monotonic() < deadline:
    request = urllib.request.Request("http://127.0.0.1:4200/graphql", json.dumps(query).encode(), headers)
    state = json.load(urllib.request.urlopen(request, timeout=10))["data"]["flow_run_by_pk"]["state"]
    if state in ("Success", "Failed", "Cancelled"):
        break
    time.sleep(0.5)
print(state)
"""


@dataclass(frozen=True)
class Stack:
    name: str
    network: str
    volume: str
    secret: str
    agent_name: str

    def env(self) -> dict[str, str]:
        """The deploying shell: the caller's environment without our settings, plus the stack's names."""
        own = ("PREFECT__", "LOCAL_AGENT_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
        env.update({"LOCAL_AGENT_IMAGE": AGENT_IMAGE, "LOCAL_AGENT_IMAGE_SERVER": SERVER_IMAGE,
                    "LOCAL_AGENT_NETWORK": self.network, "LOCAL_AGENT_DATA_VOLUME": self.volume,
                    "LOCAL_AGENT_TOKEN_SECRET": self.secret, "PREFECT__CLOUD__AGENT__NAME": self.agent_name,
                    # the test reads the flow service after the run: kept instead of removed at its end
                    "PREFECT__CLOUD__AGENT__KEEP_SUCCESSFUL_CONTAINERS_HOURS": "1"})
        return env

    def service_logs(self, client: docker.DockerClient, service: str) -> str:
        """The output of the service's task containers on this node (the whole stack runs here)."""
        label = f"com.docker.swarm.service.name={self.name}_{service}"
        return "\n".join(c.logs().decode(errors="replace")[-8000:]
                         for c in client.containers.list(all=True, filters={"label": label}))


class SecretEnv(dict[str, str]):
    """A container's environment holding a token: a failing test's traceback shows arguments, never this."""

    def __repr__(self) -> str:
        return f"SecretEnv({sorted(self)})"


def remove_stack(client: docker.DockerClient, stack: Stack) -> None:
    """`docker stack rm`, the agent's flow services, then what `stack rm` leaves: network, volume, secret."""
    docker_cli("stack", "rm", stack.name, check=False)
    for service in client.services.list(filters={"label": f"io.local-agent.agent={stack.agent_name}"}):
        service.remove()  # type: ignore[no-untyped-call]
    wait_until_gone(client, f"com.docker.stack.namespace={stack.name}")
    wait_until_gone(client, f"io.local-agent.agent={stack.agent_name}", timeout=2)  # exited: forced
    remove_network(client, stack.network)
    for attempt in range(20):
        try:
            client.volumes.get(stack.volume).remove(force=True)
            break
        except docker.errors.NotFound:
            break
        except docker.errors.APIError:  # the server's container is still being removed
            time.sleep(0.25 * attempt)
    try:
        client.secrets.get(stack.secret).remove()
    except docker.errors.NotFound:
        pass


@pytest.fixture
def stack(swarm_manager: SwarmManager, flow_image: str) -> Iterator[Stack]:
    client = swarm_manager.client
    build_product_image(client, "server")
    build_product_image(client, "agent")
    name = f"lastack{RUN_ID[:8]}"
    deployed = Stack(name, f"{name}-net", f"{name}-data", f"{name}-token", f"{name}-agent")
    try:
        yield deployed
    finally:
        remove_stack(client, deployed)


def run_in(client: docker.DockerClient, image: str, command: list[str], **kwargs: Any) -> str:
    """A one-shot container (labelled, removed): its stdout; AssertionError with its output if it fails."""
    container = client.containers.run(image, command, detach=True, labels=test_labels(), **kwargs)
    try:
        code = container.wait(timeout=SUCCESS_TIMEOUT_S)["StatusCode"]
        assert code == 0, f"{image} {command} exited {code}:\n{container.logs().decode(errors='replace')}"
        return str(container.logs(stdout=True, stderr=False).decode(errors="replace"))
    finally:
        container.remove(force=True)


def server_container(client: docker.DockerClient, stack: Stack, timeout: float = 90) -> Any:
    """The stack's server task container once Docker reports it healthy (the image's HEALTHCHECK)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        label = f"com.docker.swarm.service.name={stack.name}_server"
        found = client.containers.list(filters={"label": label})
        if found and found[0].attrs["State"].get("Health", {}).get("Status") == "healthy":
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"the stack's server is not healthy after {timeout} s:\n"
                         f"{stack.service_logs(client, 'server')}")


def test_stack_deploy_runs_the_demo_flow_to_success_through_a_flow_service(
    swarm_manager: SwarmManager, stack: Stack, flow_image: str,
) -> None:
    client = swarm_manager.client
    started = time.monotonic()
    mint = ["token", "create", "--scope", "RUNNER", "--name", "swarm-agent"]  # the stack file's first step
    runner_token = run_in(client, SERVER_IMAGE, mint, volumes={stack.volume: {"bind": "/data", "mode": "rw"}},
                          environment={"LOCAL_AGENT_SERVER_DATABASE_URL": DATABASE_URL}).strip()
    client.secrets.create(name=stack.secret, data=runner_token.encode(), labels=test_labels())
    deploy = ["stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), stack.name]
    docker_cli(*deploy, env=stack.env())

    server = server_container(client, stack)
    create = ["local-agent-server", "token", "create", "--scope", "USER", "--name", "stack-demo"]
    user_token = server.exec_run(create, demux=True).output[0].decode().strip()
    demo_env = SecretEnv({"PREFECT__BACKEND": "cloud", "PREFECT__CLOUD__API": "http://server:4200",
                          "PREFECT__CLOUD__API_KEY": user_token, **flow_image_env(flow_image)})
    output = run_in(client, flow_image, ["/opt/prefect/register.py", "--flow", "hello", "--create-run"],
                    entrypoint=["python"], environment=demo_env, network=stack.network)
    summary = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    (run_id,) = summary["flows"]["hello"]["runs"]

    poll = server.exec_run(["python", "-c", POLL_STATE, run_id, str(SUCCESS_TIMEOUT_S)],
                           environment=SecretEnv(READ_TOKEN=user_token), demux=True)
    final = (poll.output[0] or b"").decode().strip()
    agent_log = stack.service_logs(client, "agent")
    assert final == "Success", f"{final} {poll.output[1]!r}\n--- agent\n{agent_log}"
    print(f"stack deploy -> Success in {time.monotonic() - started:.1f} s")

    (flow_service,) = client.services.list(filters={"label": f"{FLOW_RUN_LABEL}={run_id}"})
    labels = flow_service.attrs["Spec"]["Labels"]
    assert labels["io.local-agent.agent"] == stack.agent_name, labels
    (task,) = swarm_manager.tasks_of(str(flow_service.id))
    attached = {n["Network"]["Spec"]["Name"] for n in task.get("NetworksAttachments", [])}
    assert stack.network in attached, attached
    agent_spec = client.services.get(f"{stack.name}_agent").attrs["Spec"]  # type: ignore[no-untyped-call]
    assert agent_spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert agent_spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.role == manager"]
    log = stack.service_logs(client, "agent")
    assert "Agent successfully connected" in log and run_id in log, log
    leaked = runner_token in log or user_token in log  # (not in the assertion: it would print the token)
    assert not leaked, "a token reached the agent's log"
