"""Batched claims (`partial_states`) and batched run logs against the real server over HTTP."""

from __future__ import annotations

import asyncio

import pytest

from agent.api.cloud import CloudClient, StateUpdateFailed
from agent.api.models import submitted_state
from agent.launch.claims import CAPABILITY, ClaimBatcher
from agent.launch.run_logs import RunLogBuffer
from tests.support import api
from tests.support.server_fixtures import ServerHandle


@pytest.fixture
def runs(server: ServerHandle) -> list[str]:
    flow_id = api.register_docker_flow(server, name="batching", image_name="img", image_tag="1")
    return [api.create_flow_run(server, flow_id) for _ in range(5)]


class CountingCloud(CloudClient):
    """The real client, counting the requests it sends per operation."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sent: list[str] = []

    async def _execute_once(self, name, variables, timeout):  # type: ignore[no-untyped-def]
        self.sent.append(name)
        return await super()._execute_once(name, variables, timeout)


async def claim_all(cloud: CloudClient, runs: list[str], partial: bool) -> list[BaseException | None]:
    batcher = ClaimBatcher(cloud, partial=partial)
    outcomes = await asyncio.gather(
        *(batcher.set_state(run_id, submitted_state({"type": "Scheduled"}), 1) for run_id in runs),
        return_exceptions=True)
    await batcher.close()
    return list(outcomes)


async def test_due_claims_go_in_one_request_and_a_lost_one_fails_alone(server: ServerHandle,
                                                                       runs: list[str]) -> None:
    api.set_flow_run_state(server, runs[2], submitted_state({"type": "Scheduled"}), 1)  # another agent won
    cloud = CountingCloud(server.url)
    await cloud.connect()
    try:
        assert CAPABILITY in await cloud.capabilities()
        cloud.sent.clear()
        outcomes = await claim_all(cloud, runs, partial=True)
    finally:
        await cloud.close()
    assert cloud.sent == ["set_flow_run_states"]
    assert [type(o) for o in outcomes] == [type(None)] * 2 + [StateUpdateFailed] + [type(None)] * 2
    assert [api.flow_run(server, r)["state"] for r in runs] == ["Submitted"] * 5
    assert [api.flow_run(server, r)["version"] for r in runs] == [2] * 5  # each claimed exactly once


async def test_without_the_capability_each_claim_is_its_own_request(server: ServerHandle,
                                                                    runs: list[str]) -> None:
    cloud = CountingCloud(server.url)
    await cloud.connect()
    try:
        outcomes = await claim_all(cloud, runs[:3], partial=False)
    finally:
        await cloud.close()
    assert outcomes == [None, None, None]
    assert cloud.sent == ["set_flow_run_states"] * 3


async def test_run_logs_are_flushed_together_and_on_close(server: ServerHandle, runs: list[str]) -> None:
    cloud = CountingCloud(server.url)
    await cloud.connect()
    buffer = RunLogBuffer(cloud, interval=60.0)
    try:
        for index, run_id in enumerate(runs):
            buffer.add(run_id, "agent", f"Submitted for execution: Container ID: {index}", "INFO")
        assert cloud.sent == []  # nothing before the interval, the size limit or close()
        await buffer.close()
    finally:
        await cloud.close()
    assert cloud.sent == ["write_run_logs"]
    for index, run_id in enumerate(runs):
        message = api.run_logs(server, run_id)[-1]["message"]
        assert message == f"Submitted for execution: Container ID: {index}"


async def test_a_line_the_api_refuses_for_good_does_not_hold_back_the_others(server: ServerHandle,
                                                                             runs: list[str]) -> None:
    cloud = CountingCloud(server.url)
    await cloud.connect()
    buffer = RunLogBuffer(cloud, interval=60.0)
    try:
        buffer.add(runs[0], "agent", "first", "INFO")
        buffer.add("00000000-0000-4000-8000-000000000000", "agent", "a run that does not exist", "INFO")
        buffer.add(runs[1], "agent", "second", "INFO")
        assert await buffer.flush()
    finally:
        await cloud.close()
    assert cloud.sent == ["write_run_logs"] * 4  # the refused batch, then each line alone
    assert [api.run_logs(server, r)[-1]["message"] for r in runs[:2]] == ["first", "second"]
