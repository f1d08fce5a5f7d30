"""Claimed-but-never-launched recovery only reschedules runs claimed on THIS Docker host.

Agents with the same name and labels on two hosts share one registered agent id, and neither can see the
other's containers. Real server over HTTP, real Docker daemon (its `docker info` ID is the host id), and the
Prefect 1.4.1 client reading back the Submitted state the agent writes.
"""

from __future__ import annotations

import asyncio
import json

import docker
from loguru import logger

from agent.api.cloud import CloudClient
from agent.api.models import claimed_on, submitted_state
from agent.runtime.docker import DockerRuntime
from agent.runtime.engine import DockerEngine
from agent.supervise import reconcile
from tests.support import api
from tests.support.docker_fixtures import RUN_ID
from tests.support.prefect_fixtures import PrefectVenv
from tests.support.server_fixtures import ServerHandle

OTHER_HOST = "OTHER:DOCKER:HOST:ID"


async def claim_and_recover(server: ServerHandle, runtime: DockerRuntime, runs: dict[str, str | None],
                            host: str) -> tuple[int, set[str]]:
    """Claim `runs` ({run id: host marker}) as one registered agent, then run the recovery as `host`."""
    cloud = CloudClient(server.url)
    await cloud.connect()
    try:
        agent_id = await cloud.register_agent(f"twin-host-{RUN_ID}", ["twin"],
                                              await cloud.first_tenant_id())
        cloud.set_agent_id(agent_id)
        for run_id, marker in runs.items():
            await cloud.set_flow_run_state(run_id, submitted_state({"type": "Scheduled"}, agent_host=marker),
                                           None)
        candidates = await reconcile.submitted_ids(cloud, agent_id)
        requeued = await reconcile.requeue_orphans(
            cloud, DockerEngine(runtime, 2), agent_id=agent_id, agent_name="twin-host", host=host, busy=set(),
            candidates=candidates)
        return requeued, candidates
    finally:
        await cloud.close()


def test_only_runs_claimed_on_this_docker_host_are_rescheduled(
    server: ServerHandle, runtime: DockerRuntime, docker_client: docker.DockerClient,
    prefect_venv: PrefectVenv,
) -> None:
    host = asyncio.run(DockerEngine(runtime, 2).host_id())
    assert host == docker_client.info()["ID"]  # the daemon's id, not this process's hostname
    flow_id = api.register_docker_flow(server, name="twin-host", image_name="none/flow", image_tag="1")
    here, elsewhere, unmarked = (api.create_flow_run(server, flow_id) for _ in range(3))
    logs: list[str] = []
    sink = logger.add(logs.append, level="INFO", format="{message}")
    try:
        requeued, candidates = asyncio.run(claim_and_recover(
            server, runtime, {here: host, elsewhere: OTHER_HOST, unmarked: None}, host))
    finally:
        logger.remove(sink)
    assert requeued == 1
    assert api.flow_run(server, here)["state"] == "Scheduled"
    # Host A's run has no container on this host, but this host did not claim it: never rescheduled here.
    other = api.flow_run(server, elsewhere)
    assert other["state"] == "Submitted" and claimed_on(other["serialized_state"]) == OTHER_HOST
    assert api.flow_run(server, unmarked)["state"] == "Submitted"
    assert candidates == set()  # neither becomes ours later: no more API reads for them
    assert any(unmarked in line and "without the claiming host's id" in line for line in logs), logs
    # The unmodified Prefect 1.4.1 client reads the stored Submitted state, marker included.
    stored = json.dumps(other["serialized_state"])
    result = prefect_venv.run(
        "import json, sys; from prefect.engine.state import State, Submitted\n"
        f"s = State.deserialize(json.loads({stored!r}))\n"
        "assert isinstance(s, Submitted) and s.state.is_scheduled(), s\n"
        "print(s.context['agent_host'])", check=True)
    assert result.stdout.strip() == OTHER_HOST
