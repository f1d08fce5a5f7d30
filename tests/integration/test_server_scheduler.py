"""The scheduler in real server processes: two replicas with the scheduler on one database, restarts, turning
the schedule off and on over HTTP, and a new flow version taking the schedule over.

The flows have a daily clock at midnight UTC: the runs ahead are the next ten midnights, whatever second
the test runs at (a test crossing midnight may see one more run, never a duplicate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from server import db
from tests.support import api
from tests.support.replicas import direct_engine, wait_until
from tests.support.server_fixtures import ServerHandle

DAY_US = 24 * 3600 * 1_000_000
ENV = {"LOCAL_AGENT_SERVER_SCHEDULER_INTERVAL_S": "0.2"}
CREATE_FLOW = "mutation($input: create_flow_input!) { create_flow(input: $input) { id } }"


def daily_flow(name: str, project_id: str, interval_us: int = DAY_US) -> dict[str, Any]:
    clock = {"type": "IntervalClock", "interval": interval_us,
             "start_date": {"dt": "2020-01-01T00:00:00", "tz": "UTC"}, "end_date": None,
             "parameter_defaults": {}, "labels": None, "__version__": "1.4.1"}
    schedule = {"clocks": [clock], "filters": [], "or_filters": [], "not_filters": [], "adjustments": [],
                "__version__": "1.4.1"}
    serialized = {
        "__version__": "1.4.1", "name": name, "type": "prefect.core.flow.Flow", "schedule": schedule,
        "parameters": [], "reference_tasks": [], "environment": None, "run_config": None, "edges": [],
        "storage": api.docker_storage(name, "img", "1"),
        "tasks": [{"name": "say", "slug": "say-1", "type": "prefect.tasks.core.function.FunctionTask",
                   "__version__": "1.4.1"}],
    }
    return {"input": {"project_id": project_id, "serialized_flow": serialized, "set_schedule_active": True,
                      "version_group_id": None}}


def register(server: ServerHandle, name: str = "nightly", interval_us: int = DAY_US) -> str:
    variables = daily_flow(name, api.ensure_project(server, "tests"), interval_us)
    return api.call(server, CREATE_FLOW, variables)["create_flow"]["id"]  # type: ignore[no-any-return]


def set_schedule(server: ServerHandle, flow_id: str, active: bool) -> None:
    name = "set_schedule_active" if active else "set_schedule_inactive"
    api.call(server, f"mutation($input: {name}_input!) {{ {name}(input: $input) {{ success }} }}",
             {"input": {"flow_id": flow_id}})


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    created = direct_engine(database_url)
    yield created
    created.dispose()


@pytest.fixture
def pair(server_factory: Callable[..., ServerHandle], database_url: str) -> list[ServerHandle]:
    return [server_factory(database_url=database_url, env=ENV) for _ in range(2)]


def runs(engine: Engine, flow_id: str) -> list[Any]:
    fr = db.flow_run
    with engine.connect() as conn:
        return list(conn.execute(select(fr.c.id, fr.c.scheduled_start_time, fr.c.state, fr.c.auto_scheduled,
                                        fr.c.idempotency_key)
                                 .where(fr.c.flow_id == flow_id).order_by(fr.c.scheduled_start_time)))


def lease(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(db.lease).where(db.lease.c.name == "scheduler")).first()


def rounds_pass(engine: Engine, count: int = 2) -> None:
    """Wait for `count` renewals of the scheduler's lease: a whole round ran between the last two."""
    for _ in range(count):
        before = lease(engine)
        wait_until(lambda before=before: lease(engine) not in (None, before), what="a scheduler round")


def midnights_ahead(start: datetime, end: datetime) -> int:
    """Ten, plus one for each midnight UTC passed while the test ran."""
    return 10 + (end.astimezone(UTC).date() - start.astimezone(UTC).date()).days


def assert_single_runs(engine: Engine, flow_id: str, started: datetime) -> list[Any]:
    found = runs(engine, flow_id)
    times = [run.scheduled_start_time for run in found]
    assert len(set(times)) == len(times), "a run was created twice"
    assert len({run.idempotency_key for run in found}) == len(found)
    assert all(run.auto_scheduled and run.state == "Scheduled" for run in found)
    assert len(found) in (10, midnights_ahead(started, datetime.now(UTC)))
    return found


def ten_runs(engine: Engine, flow_id: str) -> bool:
    """Ten runs made whole: a run is inserted without a state and its Scheduled state follows
    (server.resolvers.runs), so a run read in between is still being made."""
    return sum(run.state is not None for run in runs(engine, flow_id)) >= 10


def test_two_schedulers_and_restarts_create_each_run_once(pair: list[ServerHandle], engine: Engine) -> None:
    started = datetime.now(UTC)
    flow_id = register(pair[0])
    wait_until(lambda: ten_runs(engine, flow_id), what="the runs ahead")
    first = assert_single_runs(engine, flow_id, started)
    assert all(run.scheduled_start_time.time() == datetime.min.time() for run in first)
    holder = next(s for s in pair if lease(engine).holder in s.logs())
    other = pair[1] if holder is pair[0] else pair[0]
    holder.stop()  # releases the lease: the other replica takes over at its next round
    wait_until(lambda: lease(engine) is not None and lease(engine).holder in other.logs(),
               what="the other replica to take the lease")
    rounds_pass(engine)
    holder.start()
    other.stop()
    other.start()
    rounds_pass(engine)
    again = assert_single_runs(engine, flow_id, started)
    assert [run.id for run in again][:9] == [run.id for run in first][:9]


def test_schedule_off_removes_unclaimed_runs_and_on_creates_them_again(
    pair: list[ServerHandle], engine: Engine
) -> None:
    started = datetime.now(UTC)
    flow_id = register(pair[0])
    wait_until(lambda: ten_runs(engine, flow_id), what="the runs ahead")
    claimed = runs(engine, flow_id)[0]
    run = api.flow_run(pair[1], claimed.id)
    api.set_flow_run_state(pair[1], claimed.id, {"type": "Submitted"}, run["version"])
    set_schedule(pair[1], flow_id, active=False)
    assert [run.id for run in runs(engine, flow_id)] == [claimed.id]  # removed before the answer
    rounds_pass(engine)
    assert [run.id for run in runs(engine, flow_id)] == [claimed.id]  # and not made again while off
    set_schedule(pair[1], flow_id, active=True)
    wait_until(lambda: ten_runs(engine, flow_id), what="the runs ahead again")
    found = runs(engine, flow_id)
    assert found[0].id == claimed.id and found[0].state == "Submitted"
    assert len({run.scheduled_start_time for run in found}) == len(found)
    assert len(found) in (10, midnights_ahead(started, datetime.now(UTC)))


def test_a_new_version_takes_the_schedule_over(pair: list[ServerHandle], engine: Engine) -> None:
    old = register(pair[0])
    wait_until(lambda: ten_runs(engine, old), what="the old version's runs")
    new = register(pair[1], interval_us=2 * DAY_US)
    assert runs(engine, old) == []
    wait_until(lambda: len(runs(engine, new)) >= 5, what="the new version's runs")
    rounds_pass(engine)
    times = [run.scheduled_start_time for run in runs(engine, new)]
    assert len(times) == 5  # ten days ahead at most: every other midnight
    assert all(later - earlier == timedelta(days=2) for earlier, later in zip(times, times[1:], strict=False))
    assert runs(engine, old) == []
