"""Graceful stop and restart recovery with launches in flight (Docker slowed down by a proxy socket).

* SIGTERM during a burst: the launches in flight complete, nothing new is claimed, the agent exits 0 and the
  flow containers keep running.
* kill -9 during a burst, then a new agent of the same name: it adopts what the first one started, puts the
  runs that were claimed but never launched back in the queue, and every run ends with exactly one container.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import docker

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.docker_fixtures import RUN_ID
from tests.support.docker_proxy import docker_proxy
from tests.support.ops_helpers import containers_of, eventually, has_log, stand_in_flow, stand_in_run
from tests.support.server_fixtures import ServerHandle

BURST = 6


def states(server: ServerHandle, runs: list[str]) -> list[str]:
    return [api.flow_run(server, run_id)["state"] for run_id in runs]


def running(client: docker.DockerClient, runs: list[str]) -> int:
    return sum(c.status == "running" for r in runs for c in containers_of(client, r))


def test_sigterm_during_a_burst_finishes_the_launches_in_flight_and_exits_0(
    server: ServerHandle, agent_factory: Callable[..., AgentProcess], docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    flow_id = stand_in_flow(server, stand_in_image, "ops-sigterm")
    runs = [stand_in_run(server, flow_id, STAND_IN_SLEEP="60") for _ in range(BURST)]
    with docker_proxy(delay=0.25) as proxy:
        agent = agent_factory(server, base_url=proxy.base_url, max_concurrent_launches=2)
        eventually(lambda: "Submitted" in states(server, runs), 30, agent.output)
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output()
    out = agent.output()
    assert "SIGTERM received: no new flow runs" in out and "Agent stopped" in out, out
    launched = 0
    for run_id, state in zip(runs, states(server, runs), strict=True):
        containers = containers_of(docker_client, run_id)
        if state == "Scheduled":  # never claimed
            assert containers == [], out
            continue
        assert state == "Submitted" and has_log(server, run_id, "Submitted for execution"), out
        assert [c.status for c in containers] == ["running"], out  # flow containers outlive the agent
        launched += 1
    assert 1 <= launched < BURST, out
    assert "drained" in out, out


def test_kill_9_mid_burst_then_restart_leaves_exactly_one_container_per_run(
    server: ServerHandle, agent_factory: Callable[..., AgentProcess], docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    flow_id = stand_in_flow(server, stand_in_image, "ops-restart")
    runs = [stand_in_run(server, flow_id, STAND_IN_SLEEP="120") for _ in range(BURST)]
    name = f"ops-restart-{RUN_ID}"
    settings = {"name": name, "heartbeat_interval": 1, "watch_interval": 0.5}
    with docker_proxy(delay=0.3) as proxy:
        first = agent_factory(server, base_url=proxy.base_url, max_concurrent_launches=2, **settings)
        # Some containers started, and more runs claimed than started: a launch is cut in the middle.
        eventually(lambda: 0 < running(docker_client, runs) < states(server, runs).count("Submitted"),
                   30, first.output, interval=0.05)
        first.kill()  # SIGKILL: no drain, launches cut wherever they were
    left = [c.status for r in runs for c in containers_of(docker_client, r)]  # running and/or created
    second = agent_factory(server, **settings)
    out = second.wait_for_output("restart recovery: adopted")
    assert f"adopted {left.count('running')} running" in out, (left, out)
    assert f"removed {left.count('created')} never started" in out, (left, out)

    def all_launched() -> bool:  # "Submitted for execution" is written before the start: wait for the start
        return all([c.status for c in containers_of(docker_client, r)] == ["running"] and s == "Submitted"
                   for r, s in zip(runs, states(server, runs), strict=True))

    eventually(all_launched, 40, lambda: f"{states(server, runs)}\n{second.output()}")
    for run_id in runs:
        containers = containers_of(docker_client, run_id)
        assert [c.status for c in containers] == ["running"], second.output()
        assert containers[0].name == f"prefect-{run_id}"
    assert second.returncode is None
    assert second.stop() == 0
