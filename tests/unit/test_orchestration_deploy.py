"""Deploy, in process: the real server over HTTP, `LocalAgent` on a fake container engine (no Docker).

One flow run from the queue to a started container, and every way that can end otherwise: the claim lost to
another agent, storage the agent cannot run, a failed pull, the operator's policy, Docker refusing the
container, and Docker going away (the run goes back to the queue, never Failed).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agent.launch import poller
from agent.ops.backoff import FailureBackoff
from agent.runtime.docker_types import ContainerCreateError, ImageNotFound, ImagePullError
from tests.support import api
from tests.support.ops_helpers import state
from tests.support.orchestration import IMAGE, Stage, eventually

pytestmark = pytest.mark.usefixtures("clean_prefect_env")


@pytest.fixture(autouse=True)
def quick_poll_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Polls after a failure (engine away) retry within tenths of a second instead of 1, 2, 4 ... s."""
    monkeypatch.setattr(poller, "FailureBackoff", partial(FailureBackoff, base=0.05, cap=0.2))
    yield


def errors_of(logs: list[dict[str, Any]]) -> list[str]:
    return [log["message"] for log in logs if log["level"] == "ERROR"]


async def test_claim_won_launches_one_container_and_logs_its_id(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run()
        container_id = await stage.launched(run_id)
        run = await stage.wait_state(run_id, "Submitted")
        logs = await stage.wait_log(run_id, f"Submitted for execution: Container ID: {container_id}")
        assert [args[1] for args in stage.fake.called("launch")] == [IMAGE]
        assert run["agent_id"] and errors_of(logs) == []
        spec = stage.fake.containers[container_id].spec
        assert spec is not None and spec.command == ["prefect", "execute", "flow-run"]
        assert spec.environment["PREFECT__CONTEXT__FLOW_RUN_ID"] == run_id


async def test_claim_lost_to_another_agent_is_left_alone(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        lost: list[str] = []

        async def another_agent_claims_first(*_: Any) -> None:
            """Right before this agent's claim (its engine check): someone else submits the run."""
            version = (await stage.run(lost[0]))["version"]
            answer = await stage.do(api.set_flow_run_state, lost[0], state("Submitted", "claimed elsewhere"),
                                    version)
            assert "errors" not in answer, answer

        stage.fake.before_next("ping", another_agent_claims_first)
        flow_id = await stage.flow()
        lost.append(await stage.flow_run(flow_id))
        await eventually(lambda: stage.logged(f"flow run {lost[0]} was claimed by another agent"),
                         message="the agent never tried to claim the run")
        won = await stage.flow_run(flow_id)  # the agent goes on with the next run
        await stage.launched(won)
        run = await stage.run(lost[0])
        assert run["state"] == "Submitted" and run["state_message"] == "claimed elsewhere"
        assert stage.fake.container(lost[0]) is None
        assert len(stage.fake.called("launch")) == 1
        assert errors_of(await stage.logs(lost[0])) == []


async def test_flow_without_docker_storage_is_failed_with_the_reason(tmp_path: Path) -> None:
    local = {"type": "Local", "__version__": "1.4.1", "directory": "/root/.prefect/flows",
             "flows": {"local-flow": "/root/.prefect/flows/local-flow.prefect"}, "stored_as_script": False,
             "secrets": []}
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run(await stage.flow(storage=local))
        run = await stage.wait_state(run_id, "Failed")
        assert "was not deployed with Docker storage (storage type: Local)" in run["state_message"]
        logs = await stage.wait_log(run_id, "was not deployed with Docker storage")
        assert any("Docker storage" in message for message in errors_of(logs))
        assert stage.fake.called("launch") == [] and stage.fake.called("pull") == []


async def test_pull_failure_fails_the_run_with_the_registry_message(tmp_path: Path) -> None:
    image = "registry.example.com/team/flow:2"
    refusal = "manifest for registry.example.com/team/flow:2 not found: manifest unknown"
    async with Stage.open(tmp_path) as stage:
        stage.fake.fail_pull(image, ImagePullError(image, refusal))
        await stage.start_agent()
        run_id = await stage.flow_run(await stage.flow(image))
        run = await stage.wait_state(run_id, "Failed")
        assert refusal in run["state_message"]
        logs = await stage.wait_log(run_id, refusal)
        messages = [log["message"] for log in logs]
        failure = next(i for i, message in enumerate(messages) if refusal in message)
        assert messages.index(f"Pulling image {image}") < failure
        assert stage.fake.called("pull") == [(image,)] and stage.fake.called("launch") == []


async def test_policy_denial_fails_the_run_naming_the_override(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_id = await stage.flow_run(run_config={"type": "DockerRun", "host_config": {"privileged": True}})
        run = await stage.wait_state(run_id, "Failed")
        assert "add 'privileged' to PREFECT__CLOUD__AGENT__ALLOWED_RUN_OVERRIDES" in run["state_message"]
        logs = await stage.wait_log(run_id, "ALLOWED_RUN_OVERRIDES")
        assert any("privileged" in message for message in errors_of(logs))
        assert stage.fake.called("launch") == []


async def test_docker_refusing_the_container_fails_the_run_with_its_message(tmp_path: Path) -> None:
    refusal = "Docker could not create container x from local/flow:1: invalid mount config"
    async with Stage.open(tmp_path) as stage:
        stage.fake.fail_launch(IMAGE, ContainerCreateError(refusal, status_code=400))
        await stage.start_agent()
        run_id = await stage.flow_run()
        run = await stage.wait_state(run_id, "Failed")
        assert refusal in run["state_message"]
        assert refusal in "\n".join(errors_of(await stage.wait_log(run_id, refusal)))
        assert stage.fake.containers == {}


async def test_a_transient_create_error_never_fails_the_run(tmp_path: Path) -> None:
    busy = ContainerCreateError("Docker could not create container x: 500 Internal Server Error",
                                status_code=500, transient=True)
    async with Stage.open(tmp_path) as stage:
        stage.fake.fail_launch(IMAGE, busy)
        await stage.start_agent()
        run_id = await stage.flow_run()

        async def settled() -> str | None:  # relaunched after going back to the queue, or failed
            found = await stage.state(run_id)
            return found if stage.fake.container(run_id) or found == "Failed" else None

        assert await eventually(settled) == "Submitted"
        assert errors_of(await stage.logs(run_id)) == []


async def test_a_transient_error_that_clears_is_retried_in_place(tmp_path: Path) -> None:
    sandbox = ContainerCreateError("Docker created container x but could not start it: failed to add "
                                   "interface veth0 to sandbox", status_code=500, transient=True)
    async with Stage.open(tmp_path) as stage:
        stage.fake.fail_launch(IMAGE, sandbox, times=2)  # attempts 1 and 2 fail, the third launches
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        assert len(stage.fake.called("launch")) == 3
        assert await stage.state(run_id) == "Submitted"  # never Failed, never back in the queue
        assert errors_of(await stage.logs(run_id)) == []


async def test_a_transient_error_that_persists_puts_the_run_back_with_the_reason(tmp_path: Path) -> None:
    busy = ContainerCreateError("Docker could not create container x: 500 Internal Server Error",
                                status_code=500, transient=True)
    async with Stage.open(tmp_path) as stage:
        stage.fake.fail_launch(IMAGE, busy, times=3)  # every attempt of the first claim fails
        await stage.start_agent()
        run_id = await stage.flow_run()
        reason = "Rescheduled by the agent: the Docker engine failed transiently 3 time(s)"
        logs = await stage.wait_log(run_id, reason)
        assert "500 Internal Server Error" in "\n".join(e["message"] for e in logs)
        await stage.launched(run_id)  # the next claim of the same run launches it
        assert len(stage.fake.called("launch")) == 4
        assert errors_of(await stage.logs(run_id)) == []


async def test_image_gone_between_check_and_create_is_looked_at_again(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        stage.fake.fail_launch(IMAGE, ImageNotFound(IMAGE))
        await stage.start_agent()
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        assert len(stage.fake.called("launch")) == 2
        assert await stage.state(run_id) == "Submitted"


async def test_engine_down_at_claim_time_leaves_the_run_scheduled(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()

        async def engine_goes_away(*_: Any) -> None:  # the engine check right before the claim fails
            stage.fake.down = True

        stage.fake.before_next("ping", engine_goes_away)
        run_id = await stage.flow_run()
        await eventually(lambda: stage.logged(f"not claiming flow run {run_id}"),
                         message="the agent never considered the run")
        await eventually(lambda: stage.logged("poll failed (2 in a row)"))  # rechecks the engine, backs off
        assert await stage.state(run_id) == "Scheduled"
        assert stage.fake.called("launch") == []
        stage.fake.down = False  # the engine is back: the same run is claimed and launched
        await stage.launched(run_id)
        await stage.wait_state(run_id, "Submitted")
        assert stage.logged("Docker daemon at fake:///engine is reachable again")
        assert errors_of(await stage.logs(run_id)) == []


async def test_engine_lost_after_the_claim_puts_the_run_back_in_the_queue(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()

        async def engine_goes_away(*_: Any) -> None:
            stage.fake.down = True

        stage.fake.before_next("launch", engine_goes_away)
        run_id = await stage.flow_run()
        await eventually(lambda: stage.fake.called("launch"))
        run = await stage.wait_state(run_id, "Scheduled")
        assert "Rescheduled by the agent: its Docker daemon was unreachable" in run["state_message"]
        stage.fake.down = False
        await stage.launched(run_id)
        await stage.wait_state(run_id, "Submitted")
        assert errors_of(await stage.logs(run_id)) == []
