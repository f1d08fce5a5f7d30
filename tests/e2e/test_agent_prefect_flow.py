"""End to end: a real Prefect 1.4.1 flow, registered by the real client, launched by our agent, ends Success.

The server listens on 0.0.0.0 so the flow container reaches it through `host.docker.internal` (the agent adds
the `host-gateway` extra host and keeps the port). Both backend modes: `server` (no auth) and `cloud` (the
agent holds a RUNNER token and hands it to the flow container).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.prefect_fixtures import BACKEND_MODES, PrefectVenv, register_examples, running_backend

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", BACKEND_MODES)
def test_hello_flow_runs_to_success_through_our_agent(
    mode: str,
    flow_image: str,
    prefect_venv: PrefectVenv,
    agent_factory: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    with running_backend(mode, tmp_path / "server", host="0.0.0.0") as backend:
        summary = register_examples(prefect_venv, backend.env(), "--flow", "hello", "--create-run")
        hello = summary["flows"]["hello"]
        assert hello["image"] == flow_image
        (run_id,) = hello["runs"]
        agent = agent_factory(backend.server, token=backend.runner_token)
        token = backend.user_token
        try:
            run = api.wait_for_state(backend.server, run_id, ["Success", "Failed"], timeout=120, token=token)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent output\n{agent.output()}") from exc
        assert run["state"] == "Success", run["serialized_state"]
        assert run["task_runs"] and all(tr["state"] == "Success" for tr in run["task_runs"]), run["task_runs"]
        # The runner's last log batch may land just after its Success state: wait for the line, not a moment.
        logs = api.wait_for_log(backend.server, run_id, "greeting: HELLO, WORLD!", token=token)
        assert any("Submitted for execution: Container ID: " in log["message"] for log in logs), logs
        if backend.runner_token:
            assert backend.runner_token not in agent.output()


def test_cancelling_a_running_flow_reaches_prefect_with_sigterm(
    flow_image: str,
    prefect_venv: PrefectVenv,
    agent_factory: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """`prefect execute flow-run` has no SIGTERM handler: as PID 1 it would ignore the agent's stop until the
    SIGKILL a grace period later. With Docker's init (the agent's default) SIGTERM ends it at once: exit 143,
    well before the grace period, and before Prefect's own cancellation check (every 15 s) could."""
    grace = 25.0
    with running_backend("server", tmp_path / "server", host="0.0.0.0") as backend:
        summary = register_examples(prefect_venv, backend.env(), "--flow", "sleepy", "--create-run")
        (run_id,) = summary["flows"]["sleepy"]["runs"]
        agent = agent_factory(backend.server, cancel_grace_seconds=grace, watch_interval=0.5)
        api.wait_for_log(backend.server, run_id, "sleeping", timeout=120)
        (container,) = docker_client.containers.list(filters={"label": f"io.prefect.flow-run-id={run_id}"})
        assert container.attrs["HostConfig"]["Init"] is True
        cancelled_at = time.monotonic()
        assert api.cancel_flow_run(backend.server, run_id) == "Cancelling"
        exit_code = container.wait(timeout=grace + 15)["StatusCode"]
        stopped_after = time.monotonic() - cancelled_at
        print(f"cancel -> container exit: {stopped_after:.2f} s, exit code {exit_code}")
        assert exit_code == 143, agent.output()
        assert stopped_after < 10, stopped_after
        api.wait_for_state(backend.server, run_id, "Cancelled", timeout=15)
        api.wait_for_log(backend.server, run_id, "flow run marked Cancelled")
