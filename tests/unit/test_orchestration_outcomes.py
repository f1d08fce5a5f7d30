"""The outcome line, in process: every run the agent launched or adopted ends with ONE INFO line in the
agent's log (name, id, final state, exit code, duration), a successful one included (fake engine, real API).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.runtime.docker_types import ContainerInfo
from agent.supervise.outcome import describe
from tests.support import api
from tests.support.fake_runtime import SIGTERM_EXIT
from tests.support.ops_helpers import state
from tests.support.orchestration import Stage, eventually

pytestmark = pytest.mark.usefixtures("clean_prefect_env")

SECONDS = r"\d+\.\d s"


async def set_state(stage: Stage, run_id: str, type_: str) -> None:
    """What the flow runner in the container reports (version-locked, as Prefect's client does)."""
    version = (await stage.run(run_id))["version"]
    answer = await stage.do(api.set_flow_run_state, run_id, state(type_, f"{type_} (flow runner)"), version)
    assert "errors" not in answer, answer


def ended(stage: Stage, run_id: str) -> list[str]:
    return [line for line in stage.logged(f"({run_id}) ended: ") if line.startswith("INFO ")]


async def the_line(stage: Stage, run_id: str) -> str:
    [line] = await eventually(lambda: ended(stage, run_id), 5,
                              lambda: "no outcome line; agent said:\n" + "\n".join(stage.lines[-30:]))
    return line


async def test_a_successful_run_ends_with_success_exit_zero_and_its_duration(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        name = (await stage.run(run_id))["name"]
        await set_state(stage, run_id, "Running")
        await set_state(stage, run_id, "Success")  # the flow runner's last write, before its exit
        stage.fake.finish(run_id, 0)
        line = await the_line(stage, run_id)
        assert re.fullmatch(rf"INFO flow run '{re.escape(name)}' \({run_id}\) ended: Success, exit code 0, "
                            rf"{SECONDS}", line), line


@pytest.mark.parametrize(("code", "oom", "said"), [(3, False, "exit code 3"),
                                                  (137, True, r"exit code 137 \(OOM-killed\)")])
async def test_a_failed_run_says_failed_and_its_exit_code(tmp_path: Path, code: int, oom: bool,
                                                          said: str) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        await stage.flow_runner_started(run_id)
        stage.fake.finish(run_id, code, oom=oom)
        await stage.wait_state(run_id, "Failed")
        line = await the_line(stage, run_id)
        assert re.search(rf"ended: Failed, {said}, {SECONDS}$", line), line


async def test_a_cancelled_run_says_cancelled_with_the_stop_signals_exit_code(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        await stage.flow_runner_started(run_id)
        assert await stage.do(api.cancel_flow_run, run_id) == "Cancelling"
        await stage.wait_state(run_id, "Cancelled")
        line = await the_line(stage, run_id)
        assert f"ended: Cancelled, exit code {SIGTERM_EXIT}, " in line, line


async def test_exit_zero_without_a_final_state_says_the_run_is_still_running(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(cleanup_interval=0.1)  # the cleanup re-settles it every sweep: still one line
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        await stage.flow_runner_started(run_id)
        stage.fake.finish(run_id, 0)
        line = await the_line(stage, run_id)
        assert "ended: state still Running, exit code 0, " in line, line
        await eventually(lambda: len(stage.logged("exited 0 without a final state")) >= 3, 5,
                         "the cleanup did not settle the exit again")
        assert len(ended(stage, run_id)) == 1
        assert await stage.state(run_id) == "Running"


async def test_one_line_per_run_for_a_batch_and_for_one_settled_at_restart(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        first = await stage.start_agent()
        flow_id = await stage.flow()
        runs = [await stage.flow_run(flow_id) for _ in range(3)]
        for run_id in runs:
            await stage.launched(run_id)
        await first.stop()
        stage.fake.finish(runs[0], 4)  # nobody is listening: settled by the next agent's recovery
        await stage.start_agent()
        await the_line(stage, runs[0])
        for code, run_id in enumerate(runs[1:], start=1):
            stage.fake.finish(run_id, code)
        for run_id in runs:
            await stage.wait_state(run_id, "Failed")
        lines = [await the_line(stage, run_id) for run_id in runs]
        assert [re.search(r"exit code (\d+)", line)[1] for line in lines] == ["4", "1", "2"]  # type: ignore[index]
        assert len(stage.logged(") ended: ")) == 3


async def test_a_resubmitted_run_gets_its_line_only_when_its_last_container_ends(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(infra_retries=1)
        run_id = await stage.flow_run()
        first = await stage.launched(run_id)
        await stage.flow_runner_started(run_id)
        stage.fake.restart_daemon()  # the daemon stopped it: the run goes on, no outcome yet
        await stage.wait_log(run_id, "resubmitted, attempt 2 of 2")
        await eventually(lambda: (c := stage.fake.container(run_id)) and c.id != first and c.running)
        assert ended(stage, run_id) == []
        await stage.flow_runner_started(run_id)
        stage.fake.restart_daemon()  # the retries are spent: Failed
        line = await the_line(stage, run_id)
        assert f"ended: Failed, exit code {SIGTERM_EXIT}, " in line, line


def test_a_run_name_cannot_forge_a_second_line_and_times_come_from_the_engine() -> None:
    info = ContainerInfo(id="c1", name="prefect-r1", status="exited", labels={}, exit_code=0,
                         oom_killed=False, created="", started_at="2026-01-01T10:00:00.000000000Z",
                         finished_at="2026-01-01T10:00:12.400000000Z")
    line = describe("r1", "evil\nINFO flow run 'x' ended: Success", "Success", info, watched_since=None)
    assert "\n" not in line and line.endswith("ended: Success, exit code 0, 12.4 s")
    gone = describe("r1", "fox", None, None, watched_since=100.0, now=102.5)
    assert gone == "flow run 'fox' (r1) ended: unknown, exit code unknown (container gone), " \
                   "2.5 s since the agent started watching"
