"""Claiming a run: the Submitted state carries the claiming host, the pipeline claims with this host's marker,
and a requeue is counted only once the run is back in the queue."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.api.cloud import ApiError
from agent.api.models import AGENT_HOST_KEY, FlowRun, claimed_on, submitted_state
from agent.launch.admission import Admission
from agent.launch.pipeline import Deployer
from agent.launch.plan import Identity
from agent.ops.metrics import METRICS
from agent.session import Session
from agent.settings import Settings
from agent.stop import StopSignal


def make_run(name: str | None = "brave-otter") -> FlowRun:
    return FlowRun.model_validate({
        "id": "run-1", "version": 3, "state": "Scheduled", "name": name,
        "serialized_state": {"type": "Scheduled", "start_time": "2024-01-01T00:00:00+00:00"},
        "flow": {"id": "flow-1", "name": "my flow", "core_version": "1.4.1"},
    })


def test_submitted_state_records_the_host_in_the_prefect_context_field() -> None:
    plain = submitted_state({"type": "Scheduled"})
    marked = submitted_state({"type": "Scheduled"}, agent_host="HOST:A")
    assert list(marked) == list(plain)  # the §4.8 shape is unchanged: same keys, same order
    assert plain["context"] == {} and claimed_on(plain) is None
    assert marked["context"] == {AGENT_HOST_KEY: "HOST:A"} and claimed_on(marked) == "HOST:A"
    assert claimed_on(None) is None and claimed_on({"context": None}) is None


class RecordingClaims:
    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []

    async def set_state(self, run_id: str, state: dict[str, Any], version: int | None) -> None:
        self.states.append(state)


class FakeCloud:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.states: list[dict[str, Any]] = []
        self.logs: list[str] = []

    async def set_flow_run_state(self, run_id: str, state: dict[str, Any], version: int | None) -> None:
        if self.fail:
            raise ApiError("backend down")
        self.states.append(state)

    async def write_run_log(self, run_id: str, name: str, message: str, level: str = "INFO") -> None:
        self.logs.append(f"{level} {message}")


def deployer(cloud: Any, host: str = "HOST:A") -> Deployer:
    identity = Identity("agent-x", [], "tenant", "http://api", [], host_id=host)
    session, settings = Session(identity, "agent-id", frozenset()), Settings()
    admission = Admission(settings, None)  # type: ignore[arg-type]  # no engine call in these tests
    return Deployer(settings, cloud, None, session, admission, StopSignal(),  # type: ignore[arg-type]
                    on_launched=lambda run, result: None)


def test_the_pipeline_claims_with_this_hosts_marker() -> None:
    pipeline = deployer(FakeCloud())
    claims = RecordingClaims()
    pipeline.claims = claims  # type: ignore[assignment]
    assert asyncio.run(pipeline.claim(make_run()))
    assert [claimed_on(s) for s in claims.states] == ["HOST:A"]
    assert claims.states[0]["type"] == "Submitted"


def test_requeue_is_counted_only_once_the_run_is_back_in_the_queue() -> None:
    def requeued() -> float:
        return METRICS.value("local_agent_runs_requeued_total", reason="docker_unavailable")

    before, why = requeued(), "its Docker daemon was unreachable (gone)"
    asyncio.run(deployer(FakeCloud(fail=True)).requeue(make_run(), why, "docker_unavailable"))
    assert requeued() == before
    cloud = FakeCloud()
    asyncio.run(deployer(cloud).requeue(make_run(), why, "docker_unavailable"))
    assert requeued() == before + 1 and cloud.states[0]["type"] == "Scheduled"
    assert cloud.logs == [f"WARNING Rescheduled by the agent: {why}"]  # written before the state
