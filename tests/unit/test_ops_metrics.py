"""Metric bookkeeping: failure reasons, API and Docker error counting, heartbeats while launching."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

import pytest

from agent.api.cloud import ApiError, AuthenticationError, StateUpdateFailed, TransientApiError
from agent.launch.heartbeats import run_heartbeats
from agent.launch.plan import LaunchError
from agent.ops.metrics import METRICS, AgentMetrics, failure_reason
from agent.runtime.docker_types import (
    ContainerCreateError,
    DockerError,
    DockerUnavailable,
    ImageNotFound,
    ImagePullError,
)


@pytest.mark.parametrize(("exc", "reason"), [
    (LaunchError("bad run config"), "config"),
    (ImagePullError("x:1", "manifest unknown"), "image"),
    (ImageNotFound("x:1"), "image"),
    (ContainerCreateError("no"), "container"),
    (DockerError("other"), "docker"),
])
def test_failure_reasons(exc: Exception, reason: str) -> None:
    assert failure_reason(exc) == reason


def test_api_errors_are_counted_by_kind_and_re_raised() -> None:
    metrics = AgentMetrics()
    for exc in (TransientApiError("x"), AuthenticationError("x"), StateUpdateFailed("x"), ApiError("x")):
        with pytest.raises(ApiError), metrics.counting_api_errors():
            raise exc
    with metrics.counting_api_errors():
        pass
    assert [metrics.value("local_agent_api_errors_total", kind=k)
            for k in ("transient", "auth", "conflict", "other")] == [1, 1, 1, 1]


def test_failed_docker_calls_are_counted() -> None:
    metrics = AgentMetrics()
    for outcome in (None, DockerUnavailable("unix:///x", "gone"), DockerError("409"), ValueError("bug")):
        future: Future[Any] = Future()
        if outcome is None:
            future.set_result(1)
        else:
            future.set_exception(outcome)
        metrics.docker_call_done(future)
    assert metrics.value("local_agent_docker_errors_total", kind="unavailable") == 1
    assert metrics.value("local_agent_docker_errors_total", kind="other") == 1


class RecordingCloud:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    async def heartbeat(self, flow_run_id: str) -> None:
        self.calls.append(("heartbeat", {"flow_run_id": flow_run_id}))
        if self.fail:
            raise TransientApiError("down")


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "api-down"])
async def test_heartbeats_while_the_body_runs_and_not_after(fail: bool) -> None:
    cloud = RecordingCloud(fail)
    before = METRICS.value("local_agent_run_heartbeats_total")
    async with run_heartbeats(cloud, "run-1", 0.05):  # type: ignore[arg-type]
        await asyncio.sleep(0.28)
    sent = len(cloud.calls)
    await asyncio.sleep(0.15)
    assert 4 <= sent <= 6 and len(cloud.calls) == sent  # stopped with the body; failures did not end it
    assert cloud.calls[0] == ("heartbeat", {"flow_run_id": "run-1"})
    assert METRICS.value("local_agent_run_heartbeats_total") - before == (0 if fail else sent)
