"""End to end: a real Prefect 1.4.1 flow, registered by the real client, launched by our agent, ends Success.

The server listens on 0.0.0.0 so the flow container reaches it through `host.docker.internal` (the agent adds
the `host-gateway` extra host and keeps the port). Both backend modes: `server` (no auth) and `cloud` (the
agent holds a RUNNER token and hands it to the flow container).
"""

from __future__ import annotations

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
        submitted = "Submitted for execution: Container ID: "
        logs = api.wait_for_log(backend.server, run_id, submitted, token=token)
        assert any("greeting: HELLO, WORLD!" in log["message"] for log in logs), logs
        if backend.runner_token:
            assert backend.runner_token not in agent.output()
