"""Flow containers get a token for their own run, in process: the real server (auth=token) mints it, the
fake engine shows what the container would hold, and the server judges what that token may do."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.api.cloud import CloudClient
from agent.launch.run_tokens import RunGone, RunTokens
from tests.support import api
from tests.support.orchestration import Stage

pytestmark = pytest.mark.usefixtures("clean_prefect_env")
OTHER_RUN = "query($id: uuid!) { flow_run(where: {id: {_eq: $id}}) { id } }"


def _env(stage: Stage, run_id: str) -> dict[str, str]:
    container = stage.fake.container(run_id)
    assert container is not None and container.spec is not None
    return container.spec.environment


async def test_each_container_holds_its_own_runs_token_and_not_the_agents(tmp_path: Path) -> None:
    async with Stage.open(tmp_path, auth="token") as stage:
        await stage.start_agent()
        flow_id = await stage.flow()
        first, second = await stage.flow_run(flow_id), await stage.flow_run(flow_id)
        await stage.launched(first)
        await stage.launched(second)
        tokens = {_env(stage, run)["PREFECT__CLOUD__API_KEY"] for run in (first, second)}
        assert len(tokens) == 2 and stage.server.runner_token not in tokens
        mine = _env(stage, first)["PREFECT__CLOUD__API_KEY"]
        assert _env(stage, first)["PREFECT__CLOUD__AUTH_TOKEN"] == mine
        own = await stage.do(api.call, OTHER_RUN, {"id": first}, mine)
        assert [row["id"] for row in own["flow_run"]] == [first]
        answer = await stage.do(lambda server: server.graphql(OTHER_RUN, {"id": second}, token=mine))
        assert answer == {"data": {"flow_run": []}}  # another run is out of its sight
        assert not any(token in line for token in tokens for line in stage.lines)  # never in a log line


async def test_a_backend_that_cannot_mint_gets_the_agents_token_and_a_warning(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:  # auth none: no flow_run_tokens capability
        await stage.start_agent(api_token="agent-token-value")
        run_id = await stage.flow_run()
        await stage.launched(run_id)
        assert _env(stage, run_id)["PREFECT__CLOUD__API_KEY"] == "agent-token-value"
        assert stage.logged("this API cannot mint per-run tokens")


@pytest.mark.parametrize("name", [
    "PREFECT__CLOUD__API", "PREFECT__cloud__api_key", "PREFECT__SERVER__HOST",
    "PREFECT__CONTEXT__FLOW_RUN_ID", "PREFECT__CONTEXT__CONFIG__CLOUD__API", "PREFECT__USER_CONFIG_PATH",
    "PREFECT__HOME_DIR", "HTTP_PROXY", "https_proxy", "REQUESTS_CA_BUNDLE",
    "PREFECT__ENGINE__FLOW_RUNNER__default_class", "PREFECT__CLOUD",
    "PREFECT__ENGINE__EXECUTOR__DASK__ADDRESS",
])
async def test_a_run_env_that_redirects_the_flow_runner_is_denied(tmp_path: Path, name: str) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        run_config = {"type": "DockerRun", "env": {name: "http://attacker.example"}}
        run_id = await stage.flow_run(run_config=run_config)
        run = await stage.wait_state(run_id, "Failed")
        assert name in run["state_message"] and "api_env" in run["state_message"]
        assert stage.fake.container(run_id) is None


async def test_a_prefect_setting_that_interpolates_the_key_is_denied(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent()
        env = {"PREFECT__LOGGING__FORMAT": "${cloud.api_key} %(message)s", "PLAIN": "$HOME is fine here"}
        run_id = await stage.flow_run(run_config={"type": "DockerRun", "env": env})
        run = await stage.wait_state(run_id, "Failed")
        assert "PREFECT__LOGGING__FORMAT" in run["state_message"] and "PLAIN" not in run["state_message"]


async def test_the_operator_may_allow_a_run_to_choose_its_api(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(allowed_run_overrides=["api_env"])
        run_config = {"type": "DockerRun", "env": {"PREFECT__CLOUD__API": "http://elsewhere:4200"}}
        run_id = await stage.flow_run(run_config=run_config)
        await stage.launched(run_id)
        assert _env(stage, run_id)["PREFECT__CLOUD__API"] == "http://elsewhere:4200"


async def test_a_run_that_ended_before_its_launch_gets_no_token(tmp_path: Path) -> None:
    """RunGone, not a refusal: the pipeline then leaves the run as it is instead of failing it."""
    async with Stage.open(tmp_path, auth="token") as stage:
        run_id = await stage.flow_run()
        await stage.do(api.set_flow_run_state, run_id, {"type": "Cancelled", "message": "by hand"})
        cloud = CloudClient(stage.server.url, stage.server.runner_token)
        await cloud.connect()
        try:
            tokens = RunTokens(cloud, mint=True, agent_token=None)
            for gone in (run_id, str(uuid.uuid4())):
                with pytest.raises(RunGone):
                    await tokens.for_run(gone)
        finally:
            await cloud.close()
