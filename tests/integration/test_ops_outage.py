"""A Docker outage while the agent runs: its daemon socket (a proxy the test controls) is cut and restored.

While Docker is away the agent claims nothing (no run may fail because of the agent's own daemon) and reports
not ready; once Docker is back it resumes by itself and launches everything. An outage longer than
DOCKER_OUTAGE_EXIT_S makes it exit 3, so the restart policy takes over.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import docker

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.docker_proxy import docker_proxy
from tests.support.ops_helpers import eventually, get_json, has_log, health_url, stand_in_flow, stand_in_run
from tests.support.server_fixtures import ServerHandle

OUTAGE_EXIT_S = 8


def test_docker_outage_pauses_claiming_then_resumes_and_a_long_one_exits(
    server: ServerHandle, agent_factory: Callable[..., AgentProcess], docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    flow_id = stand_in_flow(server, stand_in_image, "ops-outage")
    with docker_proxy() as proxy:
        agent = agent_factory(server, base_url=proxy.base_url, watch_interval=0.5, long_poll_seconds=1,
                              docker_outage_exit_s=OUTAGE_EXIT_S, health_address="127.0.0.1:0")
        ready_url = health_url(agent) + "/ready"
        agent.wait_for_output("Waiting for flow runs...")
        assert get_json(ready_url)[0] == 200

        proxy.cut()
        cut_at = time.monotonic()
        status, body = eventually(lambda: (r := get_json(ready_url))[0] == 503 and r, 10, agent.output)
        assert any("Docker daemon unreachable" in reason for reason in body["reasons"]), body
        runs = [stand_in_run(server, flow_id) for _ in range(3)]
        time.sleep(max(0.0, 3.0 - (time.monotonic() - cut_at)))
        assert [api.flow_run(server, r)["state"] for r in runs] == ["Scheduled"] * 3, agent.output()

        proxy.restore()
        for run_id in runs:
            eventually(lambda r=run_id: has_log(server, r, "Submitted for execution"), 30, agent.output)
        assert {api.flow_run(server, r)["state"] for r in runs} == {"Submitted"}
        assert not any(log["level"] == "ERROR" for r in runs for log in api.run_logs(server, r))
        eventually(lambda: get_json(ready_url)[0] == 200, 10, agent.output)
        assert "Docker daemon at" in agent.output() and "is reachable again" in agent.output()

        proxy.cut()
        cut_at = time.monotonic()
        assert agent.wait(OUTAGE_EXIT_S + 25) == 3
        assert OUTAGE_EXIT_S <= time.monotonic() - cut_at, agent.output()
        assert "exiting so the restart policy takes over" in agent.output()
