"""The Docker daemon restarts under running flow runs: no run is failed for it; each is resubmitted.

Without live-restore, dockerd stops every container when it stops (SIGTERM through Docker's init: exit 143)
and starts none of them again. The agent runs on the host and survives the restart; it must recognise
containers the daemon stopped (started before the daemon's current start, finished before it, 143/137), put
their runs back to Scheduled with a WARNING line in the run log, and launch them again.

The daemon restarted is a private, real dockerd (tests/support/private_dockerd.py), so other sessions'
containers on the shared daemon are left alone; `LOCAL_AGENT_CHAOS_DOCKERD=shared` restarts the shared one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.runtime.docker import DockerRuntime
from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.daemon_restart_scenario import (
    RUN_LABEL,
    leave_daemon_running,
    open_private_daemon,
    relaunch_delays,
    restart,
    restart_in_burst,
    resubmission_problem,
    run_messages,
    run_report,
)
from tests.support.docker_events import StartEvents
from tests.support.docker_fixtures import (
    RUN_ID,
    TEST_RUN_LABEL,
    docker_unavailable,
    test_labels,
)
from tests.support.dockerd import DockerdError, parse_docker_time, restart_privilege_problem
from tests.support.prefect_fixtures import PrefectVenv, register_examples, running_backend
from tests.support.private_dockerd import ChaosDaemon, copy_images, shared_daemon, stop_private_daemon
from tests.support.server_fixtures import ServerHandle

pytestmark = [pytest.mark.docker, pytest.mark.slow]

OURS = f"{TEST_RUN_LABEL}={RUN_ID}"


@pytest.fixture(scope="module")
def chaos_daemon(docker_client: docker.DockerClient) -> Iterator[ChaosDaemon]:
    """The daemon these tests restart (private unless LOCAL_AGENT_CHAOS_DOCKERD=shared); left running."""
    problem = restart_privilege_problem()
    if problem:
        docker_unavailable(problem)
    if os.environ.get("LOCAL_AGENT_CHAOS_DOCKERD") == "shared":
        yield shared_daemon()
        return
    try:
        daemon = open_private_daemon()
    except (DockerdError, OSError) as exc:
        docker_unavailable(f"cannot start a private dockerd for the chaos tests: {exc}")
    yield daemon
    stop_private_daemon()


def test_a_restart_stops_containers_as_the_agent_expects_and_clients_survive(
    chaos_daemon: ChaosDaemon, busybox_image: str, docker_client: docker.DockerClient,
) -> None:
    """What the agent's detection rests on, on this Docker version: a container the daemon stopped exits 143
    (Docker's init forwards SIGTERM) and both its start and its end precede the new bridge network's
    `Created`. Long-lived clients that used pooled connections before the restart work after it, unclosed."""
    copy_images(docker_client, chaos_daemon, [busybox_image])
    client, runtime = chaos_daemon.client(), DockerRuntime(base_url=chaos_daemon.host)
    try:
        container = client.containers.run(busybox_image, ["sleep", "1000"], init=True, detach=True,
                                          labels=test_labels())
        runtime.ping()
        assert runtime.inspect(str(container.id)) is not None
        facts = restart(chaos_daemon)
        container.reload()  # the same client and its pool, not closed
        state = container.attrs["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 143), state
        assert parse_docker_time(state["StartedAt"]) < facts.daemon_started_at, (state, facts)
        assert parse_docker_time(state["FinishedAt"]) < facts.daemon_started_at, (state, facts)
        runtime.ping()
        assert [c.id for c in runtime.find_by_label(TEST_RUN_LABEL, RUN_ID)] == [container.id]
    finally:
        runtime.close()
        client.close()
        leave_daemon_running(chaos_daemon, OURS)


RUNS = 3
# The nap must outlast the spread of the three runs' starts (a few seconds) so that all of them are
# still running at the restart; each relaunched run naps it again in full before its Success.
SLEEP_S = 15


def test_flow_runs_interrupted_by_a_daemon_restart_are_resubmitted_and_succeed(
    chaos_daemon: ChaosDaemon, flow_image: str, prefect_venv: PrefectVenv, docker_client: docker.DockerClient,
    agent_factory: Callable[..., AgentProcess], tmp_path: Path,
) -> None:
    copy_images(docker_client, chaos_daemon, [flow_image])
    started = time.monotonic()
    with running_backend("server", tmp_path / "server", host="0.0.0.0") as backend:
        args = ["--flow", "sleepy", "--create-run", "--runs-per-flow", str(RUNS),
                "--parameters", json.dumps({"seconds": SLEEP_S})]
        run_ids = register_examples(prefect_venv, backend.env(), *args)["flows"]["sleepy"]["runs"]
        server = backend.server
        with StartEvents(chaos_daemon.host, OURS, RUN_LABEL) as events:
            agent = agent_factory(server, base_url=chaos_daemon.host, watch_interval=1)
            try:
                for run_id in run_ids:
                    api.wait_for_log(server, run_id, "sleeping", timeout=240)
                    assert api.flow_run(server, run_id)["state"] == "Running"
                facts = restart(chaos_daemon)
                assert agent.returncode is None, agent.output()
                ends = {r: api.wait_for_state(server, r, ["Success", "Failed"], timeout=300)["state"]
                        for r in run_ids}
                print(f"relaunch after daemon up (s): {relaunch_delays(facts, events, run_ids)}; "
                      f"event stream reconnects {events.reconnects}")
                print(f"end states {ends}; test wall time {time.monotonic() - started:.0f} s")
                assert agent.returncode is None, agent.output()
                bad = [r for r, state in ends.items() if state != "Success"]
                assert not bad, "\n".join(run_report(server, r, None, agent.output()) for r in bad)
                for run_id in run_ids:
                    problem = resubmission_problem(run_id, run_messages(server, run_id), events.times(run_id))
                    assert problem is None, f"{problem}\n--- agent\n{agent.output()[-6000:]}"
            finally:
                agent.kill()
                leave_daemon_running(chaos_daemon, OURS)


def test_a_restart_in_the_middle_of_a_burst_fails_no_run(
    chaos_daemon: ChaosDaemon, stand_in_image: str, docker_client: docker.DockerClient, server: ServerHandle,
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """Stand-in runs never set states: a run stays Submitted until its container exits, so 'interrupted'
    means 'had a running container at the restart'. Runs claimed but not yet started then are the existing
    outage path (requeued as docker_unavailable); none may end Failed either way. The scenario is
    tests/support/daemon_restart_scenario.py, shared with `python -m benchmarks recovery`."""
    copy_images(docker_client, chaos_daemon, [stand_in_image])

    def spawn(**settings: Any) -> AgentProcess:
        return agent_factory(server, **settings)

    result = restart_in_burst(chaos_daemon, server, stand_in_image, spawn, OURS)
    print(f"daemon restart in a burst: {json.dumps(result.figures())}")
    print(f"relaunch after daemon up (s): {sorted(result.relaunch_after_up_s.values())}")
    assert result.agent_exit is None, result.agent_tail
    assert not result.failed, result.report(result.failed)
    assert result.interrupted, "no container was running at the restart: the test proved nothing"
    assert not result.not_resubmitted, result.report(result.not_resubmitted)
    assert not result.stuck, result.report(result.stuck)
