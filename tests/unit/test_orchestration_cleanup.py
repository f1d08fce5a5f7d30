"""A successful run's container is removed as soon as the run ended, in process (fake engine, real API).

Only after the agent read everything it reports from it (the outcome line, its output with
--show-flow-logs); failed runs' containers, and successful ones under KEEP_SUCCESSFUL_CONTAINERS_HOURS, stay.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import api
from tests.support.ops_helpers import state
from tests.support.orchestration import Stage, eventually

pytestmark = pytest.mark.usefixtures("clean_prefect_env")


async def succeed(stage: Stage, run_id: str) -> None:
    """What the flow runner in the container reports before it exits 0."""
    await stage.flow_runner_started(run_id)
    version = (await stage.run(run_id))["version"]
    success = state("Success", "All reference tasks succeeded.")
    answer = await stage.do(api.set_flow_run_state, run_id, success, version)
    assert "errors" not in answer, answer


def removes(stage: Stage, container_id: str) -> list[tuple[object, ...]]:
    return [args for args in stage.fake.called("remove") if args[0] == container_id]


async def outcome(stage: Stage, run_id: str) -> str:
    [line] = await eventually(lambda: stage.logged(f"({run_id}) ended: "), 5,
                              lambda: "no outcome line; agent said:\n" + "\n".join(stage.lines[-30:]))
    return line


async def test_successful_container_goes_at_once_a_failed_one_stays(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(show_flow_logs=True)  # cleanup sweep: every 300 s, i.e. never in this test
        failed_run, good_run = await stage.flow_run(), await stage.flow_run()
        failed_id, good_id = await stage.launched(failed_run), await stage.launched(good_run)
        await stage.flow_runner_started(failed_run)
        stage.fake.finish(failed_id, 3)
        await stage.wait_state(failed_run, "Failed")
        assert "ended: Failed, exit code 3" in await outcome(stage, failed_run)

        await succeed(stage, good_run)
        stage.fake.say(good_id, "the flow's last words")
        stage.fake.finish(good_id, 0)
        await eventually(lambda: stage.fake.container(good_id) is None, 5,
                         lambda: "\n".join(stage.lines[-30:]))
        assert "ended: Success, exit code 0" in await outcome(stage, good_run)  # read before the removal
        assert len(removes(stage, good_id)) == 1
        assert "the flow's last words" in capsys.readouterr().out  # printed before the removal
        assert stage.logged(f"flow run {good_run}: removed container ")

        # The failed run settled first, and its removal would have been spawned then: it stays.
        assert stage.fake.container(failed_id) is not None and not removes(stage, failed_id)


async def test_kept_successful_containers_stay_until_the_sweep_finds_them_old_enough(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(keep_successful_containers_hours=1, cleanup_interval=0.1)
        run_id = await stage.flow_run()
        container_id = await stage.launched(run_id)
        await succeed(stage, run_id)
        stage.fake.finish(container_id, 0)
        assert "ended: Success, exit code 0" in await outcome(stage, run_id)
        seen = len(stage.fake.calls)
        # A cleanup sweep after the outcome line: any removal spawned at settling was recorded before it.
        def swept() -> bool | None:  # find(all=True): the cleanup's listing
            return any(name == "find" and args[1] is True for name, args in stage.fake.calls[seen:]) or None

        await eventually(swept, 5, "no cleanup sweep")
        assert stage.fake.container(container_id) is not None and not removes(stage, container_id)
