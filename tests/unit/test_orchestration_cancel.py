"""Cancellation, in process: `cancel_flow_run` on the real server → the agent stops the fake container."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import api
from tests.support.fake_runtime import SIGTERM_EXIT
from tests.support.ops_helpers import state
from tests.support.orchestration import Stage, eventually

pytestmark = pytest.mark.usefixtures("clean_prefect_env")


async def test_cancelling_a_running_run_stops_its_container_and_marks_it_cancelled(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(cancel_grace_seconds=0.3)
        run_id = await stage.flow_run()
        container_id = await stage.launched(run_id)
        await stage.flow_runner_started(run_id)
        assert await stage.do(api.cancel_flow_run, run_id) == "Cancelling"
        run = await stage.wait_state(run_id, "Cancelled")
        assert stage.fake.called("stop") == [(container_id, 0.3)]
        assert stage.fake.containers[container_id].exit_code == SIGTERM_EXIT
        assert "Flow run cancelled" in run["state_message"]
        logs = [log["message"] for log in await stage.wait_log(run_id, "flow run marked Cancelled")]
        assert any("the agent stops container" in m and "SIGKILL after 0.3s" in m for m in logs)


async def test_cancelling_a_submitted_run_stops_its_container(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        container_id = await stage.launched(run_id)
        await stage.wait_state(run_id, "Submitted")
        assert await stage.do(api.cancel_flow_run, run_id) == "Cancelled"  # nothing ran yet: at once
        note = f"stopped (exit code {SIGTERM_EXIT}); the flow run was already Cancelled"
        await stage.wait_log(run_id, note)
        assert [args[0] for args in stage.fake.called("stop")] == [container_id]
        assert await stage.state(run_id) == "Cancelled"


async def test_container_still_running_after_its_run_finished_is_stopped(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        container_id = await stage.launched(run_id)
        await stage.flow_runner_started(run_id)
        version = (await stage.run(run_id))["version"]
        await stage.do(api.set_flow_run_state, run_id, state("Success", "done"), version)
        await eventually(lambda: stage.fake.called("stop"))
        await stage.wait_log(run_id, "is Success but its container")
        assert stage.fake.called("stop")[0][0] == container_id
        assert await stage.state(run_id) == "Success"
