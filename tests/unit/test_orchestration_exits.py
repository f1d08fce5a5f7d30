"""Exit handling, in process: what the watcher records when a flow container ends (fake engine, real API).

Exit 0 is left to the flow runner and the backend; a non-zero exit, an OOM kill or a container removed behind
the agent's back fails a run that is still Submitted/Running, with the evidence in its run log; a run that
already reached a final state is never overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import api
from tests.support.ops_helpers import state
from tests.support.orchestration import Stage

pytestmark = pytest.mark.usefixtures("clean_prefect_env")


def errors_of(logs: list[dict[str, Any]]) -> list[str]:
    return [log["message"] for log in logs if log["level"] == "ERROR"]


async def set_state(stage: Stage, run_id: str, type_: str) -> None:
    version = (await stage.run(run_id))["version"]
    answer = await stage.do(api.set_flow_run_state, run_id, state(type_, f"{type_} (flow runner)"), version)
    assert "errors" not in answer, answer


async def test_nonzero_exit_fails_the_run_with_code_and_output_tail(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        container = stage.fake.container(run_id)
        assert container is not None
        stage.fake.say(container, *[f"line {n}" for n in range(60)], "ValueError: boom")
        stage.fake.finish(container, 3)
        run = await stage.wait_state(run_id, "Failed")
        assert run["state_message"] == f"Flow run container {container.name} exited with code 3"
        [report] = errors_of(await stage.wait_log(run_id, "Exit code: 3"))
        assert "OOMKilled: false" in report and "ValueError: boom" in report
        assert "line 11" in report and "line 10\n" not in report  # the last 50 lines only
        assert f"docker logs {container.name}" in report


async def test_exit_zero_is_left_alone_while_a_failing_neighbour_is_failed(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        flow_id = await stage.flow()
        clean, failing = await stage.flow_run(flow_id), await stage.flow_run(flow_id)
        await stage.launched(clean)
        await stage.launched(failing)
        stage.fake.finish(clean, 0)
        stage.fake.finish(failing, 1)  # handled no earlier than the exit 0 before it
        await stage.wait_state(failing, "Failed")
        assert await stage.state(clean) == "Submitted"
        assert errors_of(await stage.logs(clean)) == []


async def test_oom_kill_fails_the_run_and_says_so(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        stage.fake.finish(run_id, 137, oom=True)
        run = await stage.wait_state(run_id, "Failed")
        assert "exited with code 137 after being OOM-killed (out of memory)" in run["state_message"]
        [report] = errors_of(await stage.wait_log(run_id, "OOMKilled: true"))
        assert "Exit code: 137" in report


async def test_container_removed_behind_the_agents_back_fails_the_run(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        name = stage.fake.container(run_id).name  # type: ignore[union-attr]
        stage.fake.vanish(run_id)  # no event: only the watcher's sweep can notice
        run = await stage.wait_state(run_id, "Failed")
        assert run["state_message"] == f"Flow run container {name} disappeared while the run was Submitted"
        assert any("removed outside the agent" in m for m in errors_of(await stage.logs(run_id)))


async def test_exit_after_a_final_state_does_not_overwrite_it(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        flow_id = await stage.flow()
        done, failing = await stage.flow_run(flow_id), await stage.flow_run(flow_id)
        await stage.launched(done)
        await stage.launched(failing)
        await set_state(stage, done, "Running")
        await set_state(stage, done, "Success")
        stage.fake.finish(done, 1)
        stage.fake.finish(failing, 1)  # handled no earlier than the exit before it
        await stage.wait_state(failing, "Failed")
        assert await stage.state(done) == "Success"
        assert errors_of(await stage.logs(done)) == []
