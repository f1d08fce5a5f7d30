"""The poll loop, in process: the server's long poll, backoff after failed polls, MAX_CONCURRENT_RUNS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.launch import poller
from agent.ops.backoff import FailureBackoff
from tests.support.orchestration import Stage, eventually

pytestmark = pytest.mark.usefixtures("clean_prefect_env")


class RecordedBackoff(FailureBackoff):
    """The poll loop's backoff, 20x faster and without jitter, with every delay it chose recorded."""

    delays: list[float] = []

    def __init__(self) -> None:
        super().__init__(base=0.05, cap=30.0, jitter=0.0)

    def failed(self) -> float:
        delay = super().failed()
        RecordedBackoff.delays.append(delay)
        return delay


@pytest.fixture(autouse=True)
def recorded_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    RecordedBackoff.delays = []
    monkeypatch.setattr(poller, "FailureBackoff", RecordedBackoff)
    yield RecordedBackoff.delays


async def test_the_server_long_poll_is_used(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(long_poll_seconds=2.0)
        await eventually(lambda: stage.server.queue_polls())
        run_id = await stage.flow_run()  # arrives while the agent waits in a long poll
        await stage.launched(run_id)
        polls = stage.server.queue_polls()
        assert polls and all(poll.get("wait_seconds") == 2.0 for poll in polls)


async def test_failed_polls_back_off_exponentially_then_polling_resumes(
        tmp_path: Path, recorded_backoff: list[float]) -> None:
    async with Stage.open(tmp_path) as stage:
        stage.server.fail_queue_polls(3)
        await stage.start_agent()
        await eventually(lambda: stage.logged("polling again after 3 failed poll(s)"))
        assert recorded_backoff == [0.05, 0.1, 0.2]
        assert [len(stage.logged(f"poll failed ({n} in a row)")) for n in (1, 2, 3, 4)] == [1, 1, 1, 0]
        run_id = await stage.flow_run()
        await stage.launched(run_id)


async def test_max_concurrent_runs_is_never_exceeded(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        await stage.start_agent(max_concurrent_runs=2)
        flow_id = await stage.flow()
        runs = [await stage.flow_run(flow_id) for _ in range(4)]
        await eventually(lambda: len(stage.fake.running()) == 2)
        polls = len(stage.server.queue_polls())
        await eventually(lambda: len(stage.server.queue_polls()) >= polls + 3)  # kept polling at its limit
        states = [await stage.state(run_id) for run_id in runs]
        assert sorted(states) == ["Scheduled", "Scheduled", "Submitted", "Submitted"]
        for container in stage.fake.running():
            stage.fake.finish(container, 0)
        await eventually(lambda: all(stage.fake.container(run_id) for run_id in runs))
        assert stage.fake.peak_running == 2
        assert sorted(args[0] for args in stage.fake.called("launch")) == sorted(
            stage.fake.container(run_id).name for run_id in runs)  # type: ignore[union-attr]
