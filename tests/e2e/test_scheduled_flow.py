"""End to end: a flow the real Prefect 1.4.1 client registered with an `IntervalClock` runs by itself.

The server's scheduler creates the flow's runs ahead, at the clock's times (Prefect's own `schedule.next`
is the reference); our agent launches the first in the example flow image and it ends Success (the next
ones wait a minute each: their launches are the scheduler's and the agent's own tests' to cover); one run
per scheduled time; `set_schedule_inactive`, sent by the Prefect client, removes the future runs no agent
claimed and no more are created.

Prefect 1.4.1's serializer refuses an interval under a minute ("Interval can not be less than one minute"),
so the clock is the shortest the client can register: one minute, its first event a few seconds after
registration. The scheduler loop runs every second here. Lateness (the agent's "Submitted for execution"
line minus the scheduled start) is printed, never asserted: `python -m benchmarks schedule-lateness`
measures it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.prefect_fixtures import FLOWS_DIR, PrefectBackend, PrefectVenv, running_backend

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

INTERVAL_S = 60  # the client's minimum
# the clock's first event, counted from just before the client registers (its imports are done by then):
# registering wakes the scheduler at once, so the run exists a second or two later
FIRST_IN_S = 8
SCHEDULER_INTERVAL_S = 1
MAX_RUNS = 3
RUNS_TO_SUCCEED = 1  # the next ones are created ahead and checked against Prefect's times, not waited for
SUBMITTED = "Submitted for execution"

REGISTER = """
import json, sys
from datetime import timedelta
import pendulum
from prefect import Client
from prefect.schedules import Schedule
from prefect.schedules.clocks import IntervalClock
from prefect.utilities.storage import extract_flow_from_file
path, interval, first_in = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
flow = extract_flow_from_file(file_path=path)
flow.storage.add_flow(flow)
start = pendulum.now("UTC").add(seconds=first_in)
flow.schedule = Schedule(clocks=[IntervalClock(timedelta(seconds=interval), start_date=start)])
Client().create_project(project_name="scheduled")
flow_id = flow.register(project_name="scheduled", build=False, set_schedule_active=True, no_url=True)
events = [e.isoformat() for e in flow.schedule.next(20, after=start.subtract(seconds=1))]
print(json.dumps({"flow_id": flow_id, "events": events}))
"""

# Started once the flow is registered: it imports Prefect while the runs run, then waits for a line on stdin.
DEACTIVATE = """
import json, sys
from prefect import Client
sys.stdin.readline()
result = Client().graphql(
    "mutation($input: set_schedule_inactive_input!) { set_schedule_inactive(input: $input) { success } }",
    variables={"input": {"flow_id": sys.argv[1]}},
)
print(json.dumps(result.data.set_schedule_inactive.success))
"""

RUNS = """query($flow: uuid) {
  flow_run(where: {flow_id: {_eq: $flow}}, order_by: {scheduled_start_time: asc}) {
    id state scheduled_start_time } }"""


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _runs(backend: PrefectBackend, flow_id: str) -> list[dict[str, Any]]:
    rows = api.call(backend.server, RUNS, {"flow": flow_id}, backend.user_token)["flow_run"]
    return [{**row, "at": _at(row["scheduled_start_time"])} for row in rows]


def _wait_for_successes(backend: PrefectBackend, flow_id: str, agent: AgentProcess) -> list[dict[str, Any]]:
    """Until RUNS_TO_SUCCEED runs are Success; any Failed run fails the test with the agent's output."""
    deadline = time.monotonic() + FIRST_IN_S + INTERVAL_S * RUNS_TO_SUCCEED + 120
    while time.monotonic() < deadline:
        runs = _runs(backend, flow_id)
        failed = [r for r in runs if r["state"] == "Failed"]
        assert not failed, f"{failed}\n--- agent output\n{agent.output()[-6000:]}"
        if sum(r["state"] == "Success" for r in runs) >= RUNS_TO_SUCCEED:
            return runs
        time.sleep(1)
    raise AssertionError(f"not {RUNS_TO_SUCCEED} runs Success: {_runs(backend, flow_id)}\n--- agent output\n"
                         f"{agent.output()[-6000:]}\n--- server log\n{backend.server.logs()[-4000:]}")


def _lateness(backend: PrefectBackend, run: dict[str, Any]) -> float:
    """The agent's submission line minus the scheduled start; exactly one such line (one container)."""
    logs = api.run_logs(backend.server, run["id"], backend.user_token)
    submitted = [log for log in logs if SUBMITTED in log["message"]]
    assert len(submitted) == 1, [log["message"] for log in logs]
    scheduled: datetime = run["at"]
    return (_at(submitted[0]["timestamp"]) - scheduled).total_seconds()


def _check_clock_times(runs: list[dict[str, Any]], events: list[datetime]) -> None:
    """One run per time, each time one of Prefect's own events, consecutive, none skipped but (maybe) the
    first (if the first scheduler pass came after it)."""
    times = [r["at"] for r in runs]
    assert len(times) == len(set(times)), times
    assert set(times) <= set(events), (times, events)
    first = events.index(times[0])
    assert first <= 1, (times, events)
    assert times == events[first:first + len(times)], (times, events)


def _runs_ahead_once_launched(backend: PrefectBackend, flow_id: str, agent: AgentProcess,
                              events: list[datetime]) -> list[dict[str, Any]]:
    """Once RUNS_TO_SUCCEED runs are Success, checked against Prefect's clock: the runs created ahead."""
    runs = _wait_for_successes(backend, flow_id, agent)
    _check_clock_times(runs, events)
    done = [r for r in runs if r["state"] == "Success"]
    late = [round(_lateness(backend, r), 3) for r in done]
    print("lateness (Submitted line - scheduled start), s:", late)
    ahead = [r for r in runs if r["state"] == "Scheduled" and r["at"] > datetime.now(UTC)]
    assert 1 <= len(ahead) <= MAX_RUNS, runs  # created ahead, no more than the setting allows
    return ahead


def test_interval_clock_runs_are_created_launched_and_stopped(
    flow_image: str,
    prefect_venv: PrefectVenv,
    agent_factory: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    scheduler = {"LOCAL_AGENT_SERVER_SCHEDULER_INTERVAL_S": str(SCHEDULER_INTERVAL_S),
                 "LOCAL_AGENT_SERVER_SCHEDULER_MAX_RUNS": str(MAX_RUNS)}
    with running_backend("server", tmp_path / "server", host="0.0.0.0", env=scheduler) as backend:
        args = ["-c", REGISTER, str(FLOWS_DIR / "hello.py"), str(INTERVAL_S), str(FIRST_IN_S)]
        proc = prefect_venv.run(args, env=backend.env(), timeout=120, check=True)
        registered = json.loads(proc.stdout.strip().splitlines()[-1])
        flow_id, events = registered["flow_id"], [_at(e) for e in registered["events"]]
        deactivate = prefect_venv.start_waiting(DEACTIVATE, flow_id, env=backend.env())
        try:
            agent = agent_factory(backend.server)
            ahead = _runs_ahead_once_launched(backend, flow_id, agent, events)
            deactivated_at = datetime.now(UTC)
            out, err = deactivate.communicate("go\n", timeout=120)
        finally:
            if deactivate.poll() is None:
                deactivate.kill()
                deactivate.communicate()
        assert deactivate.returncode == 0, f"{out}\n{err}"
        assert out.strip().splitlines()[-1] == "true", out
        after = _runs(backend, flow_id)
        left = {r["id"] for r in after}
        assert not {r["id"] for r in ahead} & left, after  # the unclaimed future runs are gone
        assert not [r for r in after if r["state"] == "Scheduled" and r["at"] > deactivated_at], after

        time.sleep(5 * SCHEDULER_INTERVAL_S + 2)  # several scheduler passes: none may create a run
        assert {r["id"] for r in _runs(backend, flow_id)} == left
