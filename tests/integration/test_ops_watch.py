"""The watcher against the real daemon and server: a flow container that dies is recorded in its run.

Exit 3 and an OOM kill (the agent's MEMORY limit) each end with the run Failed, one structured ERROR run log
(exit code, OOMKilled, image, container, output tail, how long it is kept, the `docker logs` command), and the
metrics endpoint counts exactly what happened. `--show-flow-logs` copies the output to the agent's stdout.
"""

from __future__ import annotations

from collections.abc import Callable

import docker

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.ops_helpers import (
    containers_of,
    get_json,
    health_url,
    metrics,
    sample,
    stand_in_flow,
    stand_in_run,
)
from tests.support.server_fixtures import ServerHandle


def error_report(server: ServerHandle, run_id: str) -> str:
    errors = [log for log in api.run_logs(server, run_id) if log["level"] == "ERROR"]
    assert len(errors) == 1, errors
    return str(errors[0]["message"])


def test_exit_code_and_oom_kill_fail_the_run_with_forensics_and_metrics(
    server: ServerHandle, agent_factory: Callable[..., AgentProcess], docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    flow_id = stand_in_flow(server, stand_in_image, "ops-exits")
    crash = stand_in_run(server, flow_id, STAND_IN_EXIT="3")
    oom = stand_in_run(server, flow_id, STAND_IN_ALLOC_MB="96", STAND_IN_SLEEP="30")
    agent = agent_factory(server, memory="32m", watch_interval=0.5, health_address="127.0.0.1:0",
                          show_flow_logs=True)
    base = health_url(agent)

    for run_id in (crash, oom):
        run = api.wait_for_state(server, run_id, "Failed", timeout=30)
        assert run_id and run["state"] == "Failed", agent.output()

    report = error_report(server, crash)
    name = f"prefect-{crash}"
    assert "Exit code: 3" in report and "OOMKilled: false" in report, report
    assert f"Image: {stand_in_image}" in report and f"Container: {name}" in report, report
    assert "stand-in: exiting 3" in report and "prefect execute flow-run" in report, report  # the output tail
    assert f"docker logs {name}" in report and "kept for 24 h" in report, report
    assert "***" in report and "PREFECT__CLOUD__API_KEY=" in report  # the stand-in's own masking reached us
    assert api.flow_run(server, crash)["state_message"] == f"Flow run container {name} exited with code 3"

    run_name = api.flow_run(server, crash)["name"]  # --show-flow-logs: the output, prefixed, on stdout
    assert f"{run_name} | stand-in: exiting 3" in agent.output()
    assert f"{run_name} | PREFECT__CLOUD__API_KEY=" in agent.output()

    report = error_report(server, oom)
    assert "OOMKilled: true" in report and "Exit code: 137" in report, report
    assert "OOM-killed" in api.flow_run(server, oom)["state_message"]
    for run_id in (crash, oom):  # failed containers are kept for debugging
        assert [c.status for c in containers_of(docker_client, run_id)] == ["exited"]

    samples = metrics(base)
    assert sample(samples, "local_agent_runs_claimed_total") == 2
    assert sample(samples, "local_agent_runs_launched_total") == 2
    assert sample(samples, "local_agent_runs_failed_total", reason="exit_code") == 1
    assert sample(samples, "local_agent_runs_failed_total", reason="oom_killed") == 1
    assert sample(samples, "local_agent_flow_containers_running") == 0
    assert sample(samples, "local_agent_docker_up") == 1
    assert sample(samples, "local_agent_last_successful_poll_timestamp_seconds") > 0
    # an OOM kill and a crash on a daemon that did not restart: neither is taken for an infrastructure death
    assert sample(samples, "local_agent_runs_requeued_total", reason="infrastructure") == 0
    status, health = get_json(base + "/api/health")  # what `local-agent check` prints: the daemon's own word
    assert status == 200 and health["docker_live_restore"] is docker_client.info()["LiveRestoreEnabled"]
    assert sample(samples, "local_agent_poll_duration_seconds_count") >= 1
    assert sample(samples, "local_agent_info", name=agent.name, version="0.1.0") == 1
    assert get_json(base + "/api/health")[0] == 200
    status, ready = get_json(base + "/ready")
    assert status == 200 and ready["ready"] is True, ready
    assert agent.stop() == 0
