"""Cancellation and finished runs whose container lives on, against the real daemon and server.

* A Running run cancelled by the user (Cancelling): SIGTERM, exit, then Cancelled, within grace + 5 s.
* A Submitted run cancelled (the server sets Cancelled at once) whose flow ignores SIGTERM: SIGKILL after
  the grace period.
* A run reported Success while its container keeps running: stopped after one grace period.
* A successful container (exit 0, run Success) is removed by the cleanup sweep; nothing else is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import docker

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.ops_helpers import (
    containers_of,
    eventually,
    has_log,
    health_url,
    metrics,
    sample,
    stand_in_flow,
    stand_in_run,
    state,
)
from tests.support.server_fixtures import ServerHandle

GRACE = 2.0


def exited(client: docker.DockerClient, run_id: str) -> int | None:
    (container,) = containers_of(client, run_id)
    return container.attrs["State"]["ExitCode"] if container.status == "exited" else None


def test_cancelled_and_finished_runs_get_their_containers_stopped(
    server: ServerHandle, agent_factory: Callable[..., AgentProcess], docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    flow_id = stand_in_flow(server, stand_in_image, "ops-cancel")
    running = stand_in_run(server, flow_id, STAND_IN_SLEEP="120")
    stubborn = stand_in_run(server, flow_id, STAND_IN_SLEEP="120", STAND_IN_IGNORE_TERM="1")
    finished = stand_in_run(server, flow_id, STAND_IN_SLEEP="120")
    succeeded = stand_in_run(server, flow_id)
    runs = (running, stubborn, finished, succeeded)
    agent = agent_factory(server, watch_interval=0.5, cancel_grace_seconds=GRACE, cleanup_interval=1,
                          health_address="127.0.0.1:0")
    base = health_url(agent)
    for run_id in runs:
        eventually(lambda r=run_id: has_log(server, r, "Submitted for execution"), 20, agent.output)

    version = api.flow_run(server, running)["version"]
    assert "errors" not in api.set_flow_run_state(server, running, state("Running", "Running flow."), version)
    started = time.monotonic()
    assert api.cancel_flow_run(server, running) == "Cancelling"
    assert api.cancel_flow_run(server, stubborn) == "Cancelled"  # not running yet: cancelled at once
    for run_id in (finished, succeeded):
        assert "errors" not in api.set_flow_run_state(server, run_id, state("Success", "All good."))

    api.wait_for_state(server, running, "Cancelled", timeout=GRACE + 5)
    assert exited(docker_client, running) == 143  # the stand-in's SIGTERM handler
    assert time.monotonic() - started < GRACE + 5
    assert has_log(server, running, "flow run marked Cancelled")
    assert has_log(server, running, f"SIGKILL after {GRACE:g}s")

    assert eventually(lambda: exited(docker_client, stubborn), GRACE + 5, agent.output) == 137  # SIGKILL
    assert api.flow_run(server, stubborn)["state"] == "Cancelled"
    eventually(lambda: has_log(server, stubborn, "the flow run was already Cancelled"), 5, agent.output)

    eventually(lambda: exited(docker_client, finished), 2 * GRACE + 5, agent.output)
    assert has_log(server, finished, "kept running")  # written before the stop
    assert api.flow_run(server, finished)["state"] == "Success"

    eventually(lambda: not containers_of(docker_client, succeeded), 10, agent.output)
    assert [len(containers_of(docker_client, r)) for r in (running, stubborn, finished)] == [1, 1, 1]

    samples = metrics(base)
    assert sample(samples, "local_agent_runs_cancelled_total") == 2
    assert sample(samples, "local_agent_containers_removed_total", reason="succeeded") == 1
    assert sample(samples, "local_agent_runs_failed_total", reason="exit_code") == 0
    assert agent.stop() == 0
