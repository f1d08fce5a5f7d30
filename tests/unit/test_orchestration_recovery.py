"""Restart recovery, in process: a second `LocalAgent` (same name, same engine) takes over from the first.

Running containers are adopted (watched, not launched again), exits that happened while no agent watched
are recorded, containers created but never started are removed, and a run claimed here whose container was
never created goes back to the queue and is launched.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from agent.exits import EXIT_FORCED
from agent.launch.plan import LABEL_AGENT
from agent.runtime.docker_types import FLOW_RUN_LABEL
from agent.session import StartupError
from tests.support.orchestration import Stage, eventually

pytestmark = pytest.mark.usefixtures("clean_prefect_env")


async def test_running_container_of_a_submitted_run_is_adopted(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        first = await stage.start_agent()
        run_id = await stage.flow_run()
        container_id = await stage.launched(run_id)
        await stage.wait_state(run_id, "Submitted")
        await first.stop()
        await stage.start_agent()
        await eventually(lambda: stage.logged("restart recovery: adopted 1 running"))
        stage.fake.finish(container_id, 2)  # only a watcher that adopted it can report this exit
        run = await stage.wait_state(run_id, "Failed")
        assert "exited with code 2" in run["state_message"]
        assert len(stage.fake.called("launch")) == 1  # adopted, never launched a second time


async def test_exit_while_no_agent_watched_is_recorded_at_start(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        first = await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        await stage.wait_state(run_id, "Submitted")
        await first.stop()
        stage.fake.finish(run_id, 4)  # nobody is listening
        await stage.start_agent()
        run = await stage.wait_state(run_id, "Failed")
        assert "exited with code 4" in run["state_message"]


async def test_submitted_run_without_a_container_is_requeued_and_launched(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        stage.fake.hold_launches()  # the first agent dies between its claim and the container
        first = await stage.start_agent(drain_timeout=0.0)
        run_id = await stage.flow_run()
        await eventually(lambda: stage.fake.called("launch"))
        await stage.wait_state(run_id, "Submitted")
        await first.stop()  # drain timeout 0: the launch in flight is abandoned
        assert stage.fake.container(run_id) is None
        stage.fake.release_launches()
        await stage.start_agent(heartbeat_interval=600.0)  # requeued at start, no stale heartbeat waited for
        await eventually(lambda: stage.logged("requeued 1 claimed but never launched"))
        await stage.launched(run_id)
        logs = await stage.wait_log(run_id, "it had claimed this run but no container was created")
        assert [log["level"] for log in logs if "no container was created" in log["message"]] == ["WARNING"]
        await stage.wait_state(run_id, "Submitted")
        assert len(stage.fake.called("launch")) == 2


async def test_container_created_but_never_started_is_removed(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        labels = {LABEL_AGENT: stage.name, FLOW_RUN_LABEL: "leftover"}
        leftover = stage.fake.add_container("prefect-leftover", labels, status="created")
        await stage.start_agent()
        await eventually(lambda: stage.logged("removed 1 never started"))
        assert stage.fake.called("remove") == [(leftover.id, True)]
        assert leftover.id not in stage.fake.containers


async def test_a_second_signal_abandons_launches_but_still_writes_the_run_logs(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        stage.fake.hold_launches()  # a launch stuck in the engine when the operator loses patience
        run = await stage.start_agent(drain_timeout=30.0)
        run_id = await stage.flow_run(await stage.flow("registry.example/team/img:1"))
        await eventually(lambda: stage.fake.called("launch"))  # "Pulling image" is in the 1 s log buffer
        run.agent._on_signal(signal.SIGTERM)  # first: stop polling, wait up to 30 s for the launch
        run.agent._on_signal(signal.SIGTERM)  # second: abandon it now
        with pytest.raises(StartupError) as stopped:
            await asyncio.wait_for(run.task, 10)  # long before the 30 s drain
        assert stopped.value.exit_code == EXIT_FORCED
        assert await stage.state(run_id) == "Submitted"  # left for restart recovery, never Failed
        assert stage.logged("second SIGTERM: abandoning 1 launch(es) in flight")
        pulling = [e for e in await stage.logs(run_id) if "Pulling image" in e["message"]]
        assert pulling  # the buffered run log was flushed on the way out
