"""Infrastructure deaths, in process: a container the daemon stopped is resubmitted, not failed.

The fake engine's `restart_daemon()` does what a real dockerd restart without live-restore does (measured on
Docker 20.10 by tests/chaos): every running container exits 143 before the new daemon's start time, and no
`die` event reaches the agent. The real daemon's version of this is in tests/chaos/test_daemon_restart.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.api.models import Attempts, attempts_of, scheduled_state
from agent.launch.plan import LABEL_ATTEMPT, attempt_labels, attempts_from_labels
from agent.runtime.docker_types import ContainerInfo, DaemonFacts
from agent.supervise.infra import daemon_stopped
from tests.support.orchestration import Stage, eventually

pytestmark = pytest.mark.usefixtures("clean_prefect_env")
RESTART = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _info(code: int, started: datetime, finished: datetime, oom: bool = False) -> ContainerInfo:
    return ContainerInfo(id="c1", name="prefect-r1", status="exited", labels={}, exit_code=code,
                         oom_killed=oom, created="", started_at=started.isoformat(),
                         finished_at=finished.isoformat())


@pytest.mark.parametrize(("code", "started", "finished", "live_restore", "expected"), [
    (143, -60, -5, False, True),  # stopped by the old daemon's shutdown
    (137, -60, -1, False, True),  # ... SIGKILLed after the stop timeout
    (143, -60, 30, False, True),  # ... or by the new daemon while it restored (no live-restore)
    (143, -60, 30, True, False),  # with live-restore it kept running: a later death is the flow's
    (143, 5, 20, False, False),  # started by the new daemon: the flow's own exit
    (1, -60, -5, False, False),  # an exit code no daemon gives
    (0, -60, -5, False, False),
    (143, -60, 300, False, False),  # long after the restart
])
def test_a_daemon_stop_is_told_from_a_flow_exit_by_dockers_own_record(
        code: int, started: int, finished: int, live_restore: bool, expected: bool) -> None:
    info = _info(code, RESTART + timedelta(seconds=started), RESTART + timedelta(seconds=finished))
    cause = daemon_stopped(info, DaemonFacts(RESTART, live_restore))
    assert (cause is not None) is expected
    if expected:
        assert cause is not None and "the Docker daemon restarted while this run was running" in cause


def test_an_oom_kill_or_an_unknown_daemon_start_is_never_the_infrastructures() -> None:
    info = _info(137, RESTART - timedelta(seconds=60), RESTART - timedelta(seconds=1), oom=True)
    assert daemon_stopped(info, DaemonFacts(RESTART, False)) is None
    info = _info(143, RESTART - timedelta(seconds=60), RESTART - timedelta(seconds=1))
    assert daemon_stopped(info, DaemonFacts(None, False)) is None


def test_attempts_travel_from_the_scheduled_state_to_the_labels_and_back() -> None:
    second = Attempts().after("cause one")
    wrapped = {"type": "Submitted", "state": scheduled_state("back", "2026-01-01T00:00:00+00:00", second)}
    assert attempts_of(wrapped) == second == attempts_from_labels(attempt_labels(second))
    assert attempt_labels(Attempts()) == {}  # a first attempt's container carries nothing new
    assert attempts_of({"type": "Scheduled", "context": {"local_agent_attempt": "x"}}) == Attempts()
    assert attempts_from_labels({LABEL_ATTEMPT: "-3"}) == Attempts()


async def test_a_daemon_restart_resubmits_the_run_and_its_task_runs_run_again(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        first = await stage.launched(run_id)
        await stage.flow_runner_started(run_id, task_runs=True)
        assert [c.id for c in stage.fake.restart_daemon()] == [first]
        logs = await stage.wait_log(run_id, "resubmitted, attempt 2 of 3")
        assert any("the Docker daemon restarted while this run was running" in log["message"] for log in logs)
        second = await eventually(lambda: (c := stage.fake.container(run_id)) and c.id != first and c)
        assert second.labels[LABEL_ATTEMPT] == "2"
        run = await stage.wait_state(run_id, "Submitted")
        assert [t["state"] for t in run["task_runs"]] == ["Pending"]  # its flow runner will run them again
        assert "exited with code" not in str(await stage.logs(run_id))  # never reported as the flow's failure


async def test_after_infra_retries_the_run_fails_with_the_whole_story(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(infra_retries=1)
        run_id = await stage.flow_run()
        first = await stage.launched(run_id)
        await stage.flow_runner_started(run_id, task_runs=True)
        stage.fake.restart_daemon()
        await stage.wait_log(run_id, "resubmitted, attempt 2 of 2")
        await eventually(lambda: (c := stage.fake.container(run_id)) and c.id != first and c.running)
        await stage.flow_runner_started(run_id, task_runs=True)
        stage.fake.restart_daemon()
        run = await stage.wait_state(run_id, "Failed")
        message = run["state_message"]
        assert "stopped every one of this run's 2 attempts" in message
        assert "attempt 1: the Docker daemon restarted" in message
        assert "attempt 2: the Docker daemon restarted" in message


async def test_a_sigterm_exit_without_a_daemon_restart_is_the_flows_failure(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        await stage.flow_runner_started(run_id, task_runs=True)
        stage.fake.finish(run_id, 143)  # someone's `docker stop`, the daemon still the same one
        run = await stage.wait_state(run_id, "Failed")
        assert "exited with code 143" in run["state_message"]
