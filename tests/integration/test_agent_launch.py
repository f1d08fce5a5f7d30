"""Launching flow runs: the real agent process, the real server, the real daemon, the stand-in flow image.

The stand-in (`busybox` + a fake `/bin/prefect`) never reports states, so a launched run stays `Submitted`;
that is exactly the agent's part of the contract.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import pytest

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.docker_fixtures import test_labels
from tests.support.ops_helpers import RUN_LABEL, containers_of, stand_in_flow
from tests.support.server_fixtures import ServerHandle

AgentFactory = Callable[..., AgentProcess]


def test_stand_in_run_is_claimed_and_launched_with_the_full_contract(
    server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient, stand_in_image: str
) -> None:
    flow_id = stand_in_flow(
        server, stand_in_image, run_config={"type": "DockerRun", "env": {"FROM_RUN": "1"}}
    )
    run_id = api.create_flow_run(server, flow_id, labels=["team-a"])
    agent = agent_factory(
        server, labels=["team-a", "extra"], env_vars={"FROM_AGENT": "x", "FROM_RUN": "agent"}
    )
    logs = api.wait_for_log(server, run_id, "Submitted for execution")
    submitted = [log for log in logs if log["message"].startswith("Submitted for execution: Container ID: ")]
    assert len(submitted) == 1 and submitted[0]["level"] == "INFO" and submitted[0]["name"] == agent.name
    run = api.flow_run(server, run_id)
    assert run["state"] == "Submitted" and run["serialized_state"]["state"]["type"] == "Scheduled"

    (container,) = containers_of(docker_client, run_id)
    assert submitted[0]["message"].endswith(container.id)
    attrs = container.attrs
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert attrs["Name"] == f"/prefect-{run_id}"
    assert attrs["Config"]["Cmd"] == ["prefect", "execute", "flow-run"]
    assert attrs["Config"]["Labels"]["io.prefect.flow-run-id"] == run_id
    assert attrs["Config"]["Labels"]["io.prefect.flow-id"] == flow_id
    assert attrs["Config"]["Labels"]["io.prefect.flow-name"].startswith("flow-")
    assert attrs["Config"]["Labels"]["io.local-agent.agent"] == agent.name
    assert attrs["HostConfig"]["ExtraHosts"] == ["host.docker.internal:host-gateway"]
    assert env["PREFECT__CLOUD__API"] == f"http://host.docker.internal:{server.port}"
    assert env["PREFECT__BACKEND"] == "server" and env["PREFECT__CLOUD__API_KEY"] == ""
    assert env["PREFECT__CONTEXT__FLOW_RUN_ID"] == run_id and env["PREFECT__CONTEXT__FLOW_ID"] == flow_id
    assert env["PREFECT__CLOUD__AGENT__LABELS"] == "['team-a', 'extra']"
    assert env["PREFECT__ENGINE__FLOW_RUNNER__DEFAULT_CLASS"] == "prefect.engine.cloud.CloudFlowRunner"
    assert (env["FROM_AGENT"], env["FROM_RUN"]) == ("x", "1")  # run config env beats agent env
    container.wait(timeout=20)
    assert b"prefect execute flow-run" in container.logs()


def test_flow_without_docker_storage_fails_while_a_good_run_still_launches(
    server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient, stand_in_image: str
) -> None:
    local = api.register_docker_flow(
        server,
        name="local-flow",
        image_name="x",
        image_tag="y",
        storage={"type": "Local", "directory": "/tmp"},
    )
    k8s = stand_in_flow(server, stand_in_image, run_config={"type": "KubernetesRun", "labels": []})
    good = stand_in_flow(server, stand_in_image)
    bad_run, k8s_run = api.create_flow_run(server, local), api.create_flow_run(server, k8s)
    good_run = api.create_flow_run(server, good)
    agent = agent_factory(server)

    failed = api.wait_for_state(server, bad_run, "Failed", timeout=20)
    assert "not deployed with Docker storage (storage type: Local)" in failed["serialized_state"]["message"]
    errors = [log for log in api.run_logs(server, bad_run) if log["level"] == "ERROR"]
    assert errors and "storage type: Local" in errors[0]["message"]
    k8s_failed = api.wait_for_state(server, k8s_run, "Failed", timeout=20)
    assert "run config of type KubernetesRun" in k8s_failed["serialized_state"]["message"]
    api.wait_for_log(server, good_run, "Submitted for execution")
    assert containers_of(docker_client, bad_run) == [] and len(containers_of(docker_client, good_run)) == 1
    assert agent.returncode is None  # the agent goes on


def pull_events(client: docker.DockerClient, since: datetime, image_prefix: str) -> list[dict[str, Any]]:
    events = client.events(
        since=since,
        until=datetime.now(UTC) + timedelta(seconds=1),
        filters={"type": "image", "event": "pull"},
        decode=True,
    )
    return [e for e in events if str(e.get("id", "")).startswith(image_prefix)]


def test_no_pull_never_pulls_and_a_missing_image_fails_clearly(
    server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient, stand_in_image: str
) -> None:
    # A local tag that names a registry: the default policy would pull it, --no-pull must not.
    registry = "127.0.0.1:9"  # discard port: nothing listens, so any pull attempt would also fail loudly
    repo = f"{registry}/nopull-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(stand_in_image).tag(repo, "v1")
    try:
        present = api.register_docker_flow(
            server, name="p", image_name=repo.split("/", 1)[1], image_tag="v1", registry_url=registry
        )
        missing = api.register_docker_flow(
            server,
            name="m",
            image_name="absent-" + uuid.uuid4().hex[:8],
            image_tag="v1",
            registry_url=registry,
        )
        since = datetime.now(UTC)
        present_run, missing_run = api.create_flow_run(server, present), api.create_flow_run(server, missing)
        agent_factory(server, args=("--no-pull",))
        api.wait_for_log(server, present_run, "Submitted for execution")
        failed = api.wait_for_state(server, missing_run, "Failed", timeout=20)
        assert "not present on this Docker host" in failed["serialized_state"]["message"]
        assert "--no-pull" in failed["serialized_state"]["message"]
        assert pull_events(docker_client, since, registry) == []
    finally:
        docker_client.images.remove(f"{repo}:v1", noprune=True)


def test_pull_from_a_registry_and_a_failed_pull_carries_the_registry_message(
    server: ServerHandle,
    agent_factory: AgentFactory,
    docker_client: docker.DockerClient,
    stand_in_image: str,
    registry: Any,
) -> None:
    repo_name = f"stand-in-{uuid.uuid4().hex[:8]}"
    reference = registry.push(stand_in_image, repo_name)
    docker_client.images.remove(reference, noprune=True)  # the agent must pull it back
    pulled = api.register_docker_flow(
        server, name="pulled", image_name=repo_name, image_tag="latest", registry_url=registry.url
    )
    broken = api.register_docker_flow(
        server, name="broken", image_name=repo_name, image_tag="no-such-tag", registry_url=registry.url
    )
    since = datetime.now(UTC)
    pulled_run, broken_run = api.create_flow_run(server, pulled), api.create_flow_run(server, broken)
    agent = agent_factory(server)
    api.wait_for_log(server, pulled_run, "Submitted for execution", timeout=60)
    assert pull_events(docker_client, since, registry.url)
    failed = api.wait_for_state(server, broken_run, "Failed", timeout=60)
    message = failed["serialized_state"]["message"]
    assert f"{registry.url}/{repo_name}:no-such-tag" in message and "manifest unknown" in message.lower()
    assert any("Pulling image" in log["message"] for log in api.run_logs(server, pulled_run))
    assert "pulled " in agent.output() or "pulling " in agent.output()


def test_run_scheduled_5s_ahead_launches_on_time(
    server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient, stand_in_image: str
) -> None:
    flow_id = stand_in_flow(server, stand_in_image)
    agent = agent_factory(server)
    agent.wait_for_output("Waiting for flow runs...")
    start = datetime.now(UTC) + timedelta(seconds=5)
    run_id = api.create_flow_run(server, flow_id, scheduled_start_time=start)
    api.wait_for_log(server, run_id, "Submitted for execution", timeout=15)
    (container,) = containers_of(docker_client, run_id)
    created = datetime.fromisoformat(container.attrs["Created"][:26].rstrip("Z") + "+00:00")
    lateness = (created - start).total_seconds()
    print(f"5-s-ahead run: container created {lateness:+.3f}s after its start time")
    assert 0 <= lateness <= 1.0, lateness


def test_running_run_with_a_due_task_retry_is_redeployed_and_its_flow_state_left_alone(
    server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient, stand_in_image: str
) -> None:
    """The "task retry > 10 min" path (cloud-api.md §3.3(b), §3.4 step 3): the flow process exited while its
    run is Running with a task run Retrying. When the retry is due, the agent sets that task run Submitted
    (version-locked), replaces the exited container of the run's first attempt with a new one, and leaves
    the flow run Running for its runner."""
    run_id = api.create_flow_run(server, stand_in_flow(server, stand_in_image))
    run = api.flow_run(server, run_id)
    assert "errors" not in api.set_flow_run_state(server, run_id, {"type": "Running"}, run["version"])
    task_run = run["task_runs"][0]
    retry_due = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    retrying = {"type": "Retrying", "start_time": retry_due, "run_count": 1, "message": "retry in 10 min"}
    assert "errors" not in api.set_task_run_state(server, task_run["id"], retrying)
    first_attempt = docker_client.containers.create(
        stand_in_image, command=["true"], name=f"prefect-{run_id}",
        labels=test_labels(**{RUN_LABEL: run_id}),
    )
    first_attempt.start()
    first_attempt.wait(timeout=30)

    agent = agent_factory(server)
    api.wait_for_log(server, run_id, "Submitted for execution: Container ID: ", timeout=30)
    (container,) = containers_of(docker_client, run_id)
    assert container.id != first_attempt.id and container.labels.get("io.local-agent.agent") == agent.name
    run = api.flow_run(server, run_id)
    assert run["state"] == "Running", run["serialized_state"]
    (task,) = [t for t in run["task_runs"] if t["id"] == task_run["id"]]
    assert task["state"] == "Submitted" and task["serialized_state"]["state"]["type"] == "Retrying", task
    time.sleep(3)  # later polls: the run no longer qualifies, so nothing is launched again
    assert len(containers_of(docker_client, run_id)) == 1
    submitted = [log for log in api.run_logs(server, run_id) if log["message"].startswith("Submitted for")]
    assert len(submitted) == 1, submitted


@pytest.mark.slow
def test_two_agents_racing_start_each_run_exactly_once(
    server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient, stand_in_image: str
) -> None:
    flow_id = stand_in_flow(server, stand_in_image)
    run_ids = [api.create_flow_run(server, flow_id) for _ in range(10)]
    first, second = agent_factory(server), agent_factory(server)
    for run_id in run_ids:
        api.wait_for_log(server, run_id, "Submitted for execution", timeout=30)
    time.sleep(1.0)  # let a slow loser finish whatever it was doing
    for run_id in run_ids:
        assert len(containers_of(docker_client, run_id)) == 1
        submitted = [
            log for log in api.run_logs(server, run_id) if "Submitted for execution" in log["message"]
        ]
        assert len(submitted) == 1, submitted
        assert api.flow_run(server, run_id)["state"] == "Submitted"
    assert first.returncode is None and second.returncode is None
