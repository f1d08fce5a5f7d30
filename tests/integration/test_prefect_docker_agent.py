"""Issue 2: Prefect 1.4.1's own DockerAgent polls our server, claims runs and starts real flow containers.

Per backend mode: the server listens on 0.0.0.0 (containers reach it via host.docker.internal), the example
flows are registered from inside the image `local-agent-example-flow:1.4.1` (register.py, as the compose demo
does), and a real `prefect agent docker start`
with the runs' label deploys them on the real daemon. hello must end Success and failing must end Failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.api import run_logs
from tests.support.docker_fixtures import RUN_ID, remove_containers, test_labels
from tests.support.images import flow_image_env
from tests.support.prefect_fixtures import (
    BACKEND_MODES,
    PrefectBackend,
    PrefectVenv,
    read_runs,
    running_backend,
    start_prefect_docker_agent,
    stop_process,
    wait_for_flow_run_state,
    wait_for_log_line,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(params=BACKEND_MODES)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrefectBackend]:
    with running_backend(request.param, tmp_path / "server", host="0.0.0.0") as backend:
        yield backend


def _wait_until_removed(client: docker.DockerClient, run_id: str, timeout: float = 30) -> list[str]:
    """auto_remove deletes the container shortly after it exits; returns what is left after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = [
            c.name
            for c in client.containers.list(all=True, filters={"label": f"io.prefect.flow-run-id={run_id}"})
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def _register_in_image(
    client: docker.DockerClient, image: str, backend: PrefectBackend, *args: str
) -> dict[str, Any]:
    """Run /opt/prefect/register.py inside the flow image against the server, as the compose demo does."""
    env = {
        "PREFECT__BACKEND": backend.mode,
        "PREFECT__CLOUD__API": f"http://host.docker.internal:{backend.server.port}",
        "PREFECT__CLOUD__API_KEY": backend.user_token or "",
        **flow_image_env(image),  # register.py's defaults name the demo's image
    }
    container = client.containers.run(
        image, ["python", "/opt/prefect/register.py", *args], environment=env, labels=test_labels(),
        extra_hosts={"host.docker.internal": "host-gateway"}, detach=True,
    )  # fmt: skip
    try:
        status = container.wait(timeout=120)["StatusCode"]
        assert status == 0, container.logs().decode()[-3000:]
        return json.loads(container.logs(stdout=True, stderr=False).decode().strip().splitlines()[-1])
    finally:
        container.remove(force=True)


def test_docker_agent_runs_flows_in_containers_to_their_end_state(
    prefect_venv: PrefectVenv,
    backend: PrefectBackend,
    docker_client: docker.DockerClient,
    flow_image: str,
    tmp_path: Path,
) -> None:
    label = f"pytest-{RUN_ID}-{backend.mode}"
    summary = _register_in_image(
        docker_client, flow_image, backend, "--flow", "hello", "--flow", "failing", "--label", label,
        "--create-run", "--parameters", json.dumps({"name": "docker"}),
    )  # fmt: skip
    runs = {name: flow["runs"][0] for name, flow in summary["flows"].items()}
    assert summary["flows"]["hello"]["image"] == flow_image
    log = tmp_path / "agent.log"
    agent = start_prefect_docker_agent(
        prefect_venv, backend.server, [label], token=backend.runner_token, log=log, args=["--show-flow-logs"]
    )
    try:
        wait_for_log_line(log, "Waiting for flow runs...", proc=agent, timeout=60)
        for flow, end in (("hello", "Success"), ("failing", "Failed")):
            state = wait_for_flow_run_state(
                backend.server, runs[flow], {"Success", "Failed", "Cancelled"}, token=backend.user_token,
                timeout=120, procs=[agent],
            )  # fmt: skip
            assert state == end, f"{flow}: {state}\n{log.read_text()[-3000:]}"
    finally:
        stop_process(agent)
        for run_id in runs.values():
            remove_containers(docker_client, f"io.prefect.flow-run-id={run_id}")

    final = read_runs(prefect_venv, backend.env(), list(runs.values()))
    hello = final[runs["hello"]]
    assert {state for _, _, state in hello["task_runs"]} == {"Success"}, hello
    assert hello["parameters"] == {"name": "docker"}
    messages = [entry["message"] for entry in run_logs(backend.server, runs["hello"], backend.user_token)]
    assert "greeting: HELLO, DOCKER!" in messages  # shipped from inside the container
    assert any(m.startswith("Submitted for execution: Container ID") for m in messages), messages
    agent_log = log.read_text()
    assert "Deploying flow run" in agent_log, agent_log[-3000:]
    for run_id in runs.values():
        assert _wait_until_removed(docker_client, run_id) == []
