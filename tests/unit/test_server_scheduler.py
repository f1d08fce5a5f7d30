"""The scheduler (`server.scheduler`), in process: runs created ahead, removed when the schedule goes off or
a new version takes over, never twice; registration refuses what it cannot honour.

Schedules are hand-built in Prefect 1.4.1's serialized form (what `ScheduleSchema().dump` writes).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from server import auto_runs, db, scheduler
from server.schedules import next_events as next_events_of
from server.schedules import parse_schedule
from tests.support import api
from tests.support.replicas import wait_until
from tests.support.server_fixtures import InProcessServer

HOUR_US = 3600 * 1_000_000
CREATE_FLOW = "mutation($input: create_flow_input!) { create_flow(input: $input) { id } }"


def interval_clock(interval_us: int = HOUR_US, start: str = "2020-01-01T00:00:00",
                   **extra: Any) -> dict[str, Any]:
    return {"type": "IntervalClock", "interval": interval_us, "start_date": {"dt": start, "tz": "UTC"},
            "end_date": None, "parameter_defaults": {}, "labels": None, "__version__": "1.4.1", **extra}


def schedule_of(*clocks: dict[str, Any]) -> dict[str, Any]:
    return {"clocks": list(clocks), "filters": [], "or_filters": [], "not_filters": [], "adjustments": [],
            "__version__": "1.4.1"}


def flow_input(name: str, schedule: dict[str, Any] | None, parameters: list[dict[str, Any]] | None = None,
               active: bool = True, project_id: str = "") -> dict[str, Any]:
    serialized = {
        "__version__": "1.4.1", "name": name, "type": "prefect.core.flow.Flow", "schedule": schedule,
        "parameters": parameters or [], "reference_tasks": [], "environment": None,
        "storage": api.docker_storage(name, "img", "1"), "run_config": None, "edges": [],
        "tasks": [{"name": t, "slug": f"{t}-1", "type": "prefect.tasks.core.function.FunctionTask",
                   "__version__": "1.4.1"} for t in ("a", "b", "c")],
    }
    return {"input": {"project_id": project_id, "serialized_flow": serialized, "set_schedule_active": active,
                      "version_group_id": None}}


def register(server: InProcessServer, name: str = "nightly", schedule: dict[str, Any] | None = None,
             **kwargs: Any) -> str:
    variables = flow_input(name, schedule_of(interval_clock()) if schedule is None else schedule,
                           project_id=api.ensure_project(server, "tests"), **kwargs)
    return api.call(server, CREATE_FLOW, variables)["create_flow"]["id"]  # type: ignore[no-any-return]


def runs_of(server: InProcessServer, flow_id: str | None = None) -> list[Any]:
    """Every flow run row (of one flow), in scheduled order."""
    fr = db.flow_run
    stmt = select(fr).order_by(fr.c.scheduled_start_time, fr.c.id)
    if flow_id is not None:
        stmt = stmt.where(fr.c.flow_id == flow_id)
    with db.read_tx(server.services.engine) as conn:
        return list(conn.execute(stmt))


def count(server: InProcessServer, table: Any) -> int:
    with db.read_tx(server.services.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def set_schedule(server: InProcessServer, flow_id: str, active: bool) -> None:
    name = "set_schedule_active" if active else "set_schedule_inactive"
    api.call(server, f"mutation($input: {name}_input!) {{ {name}(input: $input) {{ success }} }}",
             {"input": {"flow_id": flow_id}})


@pytest.fixture
def factory(inproc_factory: Callable[..., InProcessServer]) -> Callable[..., InProcessServer]:
    return inproc_factory


@pytest.fixture
def server(inproc_factory: Callable[..., InProcessServer]) -> InProcessServer:
    return inproc_factory()


# ------------------------------------------------------------------------------------------ creation


def test_a_round_creates_the_next_runs_once(server: InProcessServer) -> None:
    flow_id = register(server)
    before = db.utcnow()
    assert scheduler.schedule_round(server.services) == 10
    runs = runs_of(server, flow_id)
    times = [run.scheduled_start_time for run in runs]
    assert len(runs) == 10 and all(run.auto_scheduled and run.state == "Scheduled" for run in runs)
    assert times[0] > before and times[0].minute == times[0].second == 0  # on the clock's hours
    assert all(b - a == timedelta(hours=1) for a, b in zip(times, times[1:], strict=False))
    assert [run.idempotency_key for run in runs] == [f"auto-scheduled:{t.isoformat()}" for t in times]
    assert [run.serialized_state["start_time"] for run in runs] == [t.isoformat() for t in times]
    assert all(count_task_runs(server, run.id) == 3 for run in runs)  # made by create_flow_run itself
    assert scheduler.schedule_round(server.services) == 0
    assert len(runs_of(server)) == 10


def count_task_runs(server: InProcessServer, run_id: str) -> int:
    with db.read_tx(server.services.engine) as conn:
        return int(conn.execute(select(func.count()).where(db.task_run.c.flow_run_id == run_id)).scalar_one())


def test_a_run_whose_creation_was_cut_short_is_finished(server: InProcessServer) -> None:
    """A crash between a run's insert and its first state leaves it invisible; the next round finishes it."""
    flow_id = register(server)
    scheduler.schedule_round(server.services)
    cut = runs_of(server, flow_id)[3]
    with db.write_tx(server.services.engine) as conn:
        conn.execute(db.task_run.delete().where(db.task_run.c.flow_run_id == cut.id))
        conn.execute(db.flow_run_state.delete().where(db.flow_run_state.c.flow_run_id == cut.id))
        conn.execute(update(db.flow_run).where(db.flow_run.c.id == cut.id).values(state=None,
                                                                                  serialized_state=None))
    scheduler.schedule_round(server.services)
    runs = runs_of(server, flow_id)
    assert len(runs) == 10 and runs[3].id == cut.id and runs[3].state == "Scheduled"
    assert count_task_runs(server, cut.id) == 3


def test_no_more_than_max_days_ahead(factory: Callable[..., InProcessServer]) -> None:
    server = factory(scheduler_max_days=3)
    flow_id = register(server, schedule=schedule_of(interval_clock(24 * HOUR_US)))
    scheduler.schedule_round(server.services)
    runs = runs_of(server, flow_id)
    assert len(runs) == 3 and runs[-1].scheduled_start_time <= db.utcnow() + timedelta(days=3)


def test_a_later_round_continues_after_the_latest_run(factory: Callable[..., InProcessServer],
                                                      database_url: str) -> None:
    small = factory(scheduler_max_runs=3, database_url=database_url)
    flow_id = register(small)
    assert scheduler.schedule_round(small.services) == 3
    first = [run.scheduled_start_time for run in runs_of(small, flow_id)]
    larger = factory(scheduler_max_runs=5, database_url=database_url)  # a restart with another setting
    assert scheduler.schedule_round(larger.services) == 2
    times = [run.scheduled_start_time for run in runs_of(larger, flow_id)]
    assert times[:3] == first
    assert times[3:] == [first[-1] + timedelta(hours=1), first[-1] + timedelta(hours=2)]


def test_clock_parameters_and_labels_go_into_the_run(server: InProcessServer) -> None:
    clock = interval_clock(parameter_defaults={"y": 3}, labels=["gpu"])
    parameters = [{"name": "x", "default": 1, "required": False},
                  {"name": "y", "default": 2, "required": False}]
    flow_id = register(server, schedule=schedule_of(clock), parameters=parameters)
    scheduler.schedule_round(server.services)
    run = runs_of(server, flow_id)[0]
    assert (run.parameters, run.labels) == ({"x": 1, "y": 3}, ["gpu"])
    assert run.idempotency_key.startswith(f"auto-scheduled:{run.scheduled_start_time.isoformat()}:")


def test_two_clocks_at_one_time_with_other_parameters_each_get_their_run(server: InProcessServer) -> None:
    clocks = [interval_clock(24 * HOUR_US, parameter_defaults={"who": name}) for name in ("ann", "bob")]
    flow_id = register(server, schedule=schedule_of(*clocks))
    scheduler.schedule_round(server.services)
    runs = runs_of(server, flow_id)
    assert len(runs) == 10 and len({run.idempotency_key for run in runs}) == 10
    assert sorted(run.parameters["who"] for run in runs) == ["ann"] * 5 + ["bob"] * 5


def test_a_stored_schedule_it_cannot_honour_stops_only_its_own_flow(server: InProcessServer) -> None:
    """A flow registered by an older server with a schedule this one refuses: the others still get runs."""
    broken, fine = register(server, name="broken"), register(server, name="fine")
    schedule = schedule_of({**interval_clock(), "type": "WeeklyClock"})
    with db.write_tx(server.services.engine) as conn:
        conn.execute(update(db.flow).where(db.flow.c.id == broken).values(schedule=schedule))
    assert scheduler.schedule_round(server.services) == 10
    assert runs_of(server, broken) == [] and len(runs_of(server, fine)) == 10


def test_a_schedule_failing_in_any_way_stops_only_its_own_flow(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only refusals: an error computing one flow's events (an overflow, a cron date never found) must
    not stop the flows after it, round after round. The flow sorted first is the broken one."""
    first, second = sorted([register(server, name="one"), register(server, name="two")])
    stored = schedule_of(interval_clock(2 * HOUR_US, start="9999-12-30T00:00:00"))
    with db.write_tx(server.services.engine) as conn:
        conn.execute(update(db.flow).where(db.flow.c.id == first).values(schedule=stored))
    broken = parse_schedule(stored)

    def next_events(schedule: Any, after: datetime, n: int, until: datetime | None = None) -> Any:
        if schedule == broken:  # what the computation raises past year 9999
            raise OverflowError("date value out of range")
        return next_events_of(schedule, after, n, until)

    monkeypatch.setattr(scheduler, "next_events", next_events)
    for _ in range(2):
        assert scheduler.schedule_round(server.services) == (10 if _ == 0 else 0)
    assert runs_of(server, first) == [] and len(runs_of(server, second)) == 10
    assert "OverflowError" in scheduler._reported[first]


def test_three_clocks_at_the_same_times_lose_no_run_at_the_cut(
    factory: Callable[..., InProcessServer], database_url: str
) -> None:
    """10 runs of 3 clocks end with one of the fourth time's three: the others come in the next round that
    may make more, not the fifth time's runs instead."""
    clocks = [interval_clock(parameter_defaults={"who": name}) for name in ("ann", "bob", "cy")]
    small = factory(database_url=database_url)
    flow_id = register(small, schedule=schedule_of(*clocks))
    assert scheduler.schedule_round(small.services) == 10
    larger = factory(scheduler_max_runs=12, database_url=database_url)
    assert scheduler.schedule_round(larger.services) == 2
    runs = runs_of(larger, flow_id)
    times = sorted({run.scheduled_start_time for run in runs})
    assert len(times) == 4 and len(runs) == 12 and len({run.idempotency_key for run in runs}) == 12
    for time in times:
        who = sorted(run.parameters["who"] for run in runs if run.scheduled_start_time == time)
        assert who == ["ann", "bob", "cy"]


def test_flows_without_an_active_schedule_get_no_runs(server: InProcessServer) -> None:
    unscheduled = api.register_docker_flow(server, name="plain", image_name="i", image_tag="1")
    inactive = register(server, name="off", active=False)
    assert scheduler.schedule_round(server.services) == 0
    assert runs_of(server, unscheduled) == runs_of(server, inactive) == []


def test_two_schedulers_at_once_create_every_run_once(factory: Callable[..., InProcessServer],
                                                      database_url: str) -> None:
    """No lease here: the unique index on (flow_id, idempotency_key) alone keeps the runs single."""
    servers = [factory(database_url=database_url) for _ in range(3)]
    flow_ids = [register(servers[0], name=f"f{i}") for i in range(3)]
    barrier = threading.Barrier(len(servers))
    failures: list[BaseException] = []

    def race(handle: InProcessServer) -> None:
        barrier.wait()
        try:
            for _ in range(3):
                scheduler.schedule_round(handle.services)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=race, args=(handle,)) for handle in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    for flow_id in flow_ids:
        runs = runs_of(servers[0], flow_id)
        assert len(runs) == 10 and len({run.scheduled_start_time for run in runs}) == 10
        assert all(run.state == "Scheduled" for run in runs)  # each one finished, none half-made


# ------------------------------------------------------------------------------------------ removal


def test_schedule_off_deletes_the_unclaimed_future_runs_and_on_brings_them_back(
    server: InProcessServer,
) -> None:
    flow_id = register(server)
    scheduler.schedule_round(server.services)
    runs = runs_of(server, flow_id)
    claimed = runs[0]
    api.set_flow_run_state(server, claimed.id, {"type": "Submitted"}, claimed.version)
    by_hand = api.create_flow_run(server, flow_id, scheduled_start_time=runs[-1].scheduled_start_time)
    due = auto_run(server, flow_id, db.utcnow() - timedelta(minutes=1))  # due already: an agent may be on it
    set_schedule(server, flow_id, active=False)
    assert {run.id for run in runs_of(server, flow_id)} == {claimed.id, by_hand, due}
    assert count(server, db.task_run) == 3 * 3 and count(server, db.flow_run_state) == 2 + 1 + 1
    assert scheduler.schedule_round(server.services) == 0  # off: nothing comes back
    set_schedule(server, flow_id, active=True)
    assert scheduler.schedule_round(server.services) == 9
    again = [run for run in runs_of(server, flow_id) if run.auto_scheduled and run.id != due]
    assert [run.scheduled_start_time for run in again] == [run.scheduled_start_time for run in runs]
    assert again[0].id == claimed.id


def auto_run(server: InProcessServer, flow_id: str, start: datetime) -> str:
    """A run as the scheduler makes it, at any time."""
    from server.context import RequestContext
    from server.resolvers.runs import create_flow_run

    key = auto_runs.idempotency_key(start, {}, None)
    args = {"flow_id": flow_id, "scheduled_start_time": start, "idempotency_key": key}
    return create_flow_run(RequestContext(server.services), args, auto_scheduled=True)


def test_a_new_version_takes_the_schedule_over(server: InProcessServer) -> None:
    old = register(server)
    scheduler.schedule_round(server.services)
    assert len(runs_of(server, old)) == 10
    new = register(server, schedule=schedule_of(interval_clock(2 * HOUR_US)))
    assert runs_of(server, old) == []  # archived: its unclaimed runs went with it
    assert count(server, db.task_run) == 0
    scheduler.schedule_round(server.services)
    times = [run.scheduled_start_time for run in runs_of(server, new)]
    assert len(times) == 10
    assert all(b - a == timedelta(hours=2) for a, b in zip(times, times[1:], strict=False))


def test_stray_runs_and_tombstones_are_removed_by_the_next_round(server: InProcessServer) -> None:
    """A run created just as its flow was archived, and a removal cut short (a crash), leave rows behind."""
    flow_id = register(server)
    scheduler.schedule_round(server.services)
    runs = runs_of(server, flow_id)
    with db.write_tx(server.services.engine) as conn:
        conn.execute(update(db.flow).where(db.flow.c.id == flow_id).values(archived=True))
        conn.execute(update(db.flow_run).where(db.flow_run.c.id == runs[0].id).values(
            state=None, idempotency_key=None))
    api.set_flow_run_state(server, runs[1].id, {"type": "Submitted"}, runs[1].version)
    assert auto_runs.remove_stray(server.services.engine, 2, 1800) == 9
    assert [run.id for run in runs_of(server, flow_id)] == [runs[1].id]
    assert count(server, db.task_run) == 3


# ------------------------------------------------------------------------------------------ registration


@pytest.mark.parametrize(("schedule", "parameters", "message"), [
    (schedule_of({**interval_clock(), "type": "WeeklyClock"}), None, "unsupported clock type"),
    (schedule_of(interval_clock(1_000_000)), None, "less than one minute"),
    (schedule_of(interval_clock()), [{"name": "x", "required": True}], "required parameters: ['x']"),
])
def test_registration_refuses_a_schedule_it_cannot_honour(
    server: InProcessServer, schedule: dict[str, Any], parameters: Any, message: str
) -> None:
    variables = flow_input("bad", schedule, parameters, project_id=api.ensure_project(server, "tests"))
    body = server.graphql(CREATE_FLOW, variables)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert message in body["errors"][0]["message"]
    assert count(server, db.flow) == 0


def test_required_parameters_with_a_default_in_every_clock_may_be_scheduled(server: InProcessServer) -> None:
    flow_id = register(server, schedule=schedule_of(interval_clock(parameter_defaults={"x": 5})),
                       parameters=[{"name": "x", "required": True}])
    scheduler.schedule_round(server.services)
    assert {run.parameters["x"] for run in runs_of(server, flow_id)} == {5}


# ------------------------------------------------------------------------------------------ the loop


@pytest.fixture
def loop_server(factory: Callable[..., InProcessServer]) -> Iterator[InProcessServer]:
    """The scheduler's loop in a thread, with an interval no test waits for: only a wake-up runs a round."""
    server = factory(scheduler_interval_s=3600)
    stop: list[asyncio.Event] = []
    ready = threading.Event()

    async def main() -> None:
        stop.append(asyncio.Event())
        ready.set()
        await scheduler.run(server.services, stop[0])

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    ready.wait(30)
    yield server
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(60)
    loop.close()


def test_set_schedule_active_wakes_the_scheduler(loop_server: InProcessServer) -> None:
    flow_id = register(loop_server, active=False)
    wait_until(lambda: lease_held(loop_server), what="the scheduler's first round")
    set_schedule(loop_server, flow_id, active=True)
    wait_until(lambda: len(runs_of(loop_server, flow_id)) == 10, what="runs after the wake-up")


def lease_held(server: InProcessServer) -> bool:
    with db.read_tx(server.services.engine) as conn:
        holder = conn.execute(select(db.lease.c.holder).where(db.lease.c.name == "scheduler")).scalar()
    return holder == server.services.instance_id


def test_the_lease_is_released_on_stop(factory: Callable[..., InProcessServer]) -> None:
    server = factory()
    stop = asyncio.Event()

    async def one_round() -> None:
        task = asyncio.create_task(scheduler.run(server.services, stop))
        await asyncio.to_thread(wait_until, lambda: lease_held(server), 30.0, "the lease")
        stop.set()
        await task

    asyncio.run(one_round())
    assert not lease_held(server)


def test_event_times_are_utc(server: InProcessServer) -> None:
    register(server, schedule=schedule_of(interval_clock(start="2020-01-01T00:30:00")))
    before = datetime.now(UTC)  # the first run may be due by the time the round ends
    scheduler.schedule_round(server.services)
    assert all(run.scheduled_start_time.tzinfo == UTC and run.scheduled_start_time.minute == 30
               for run in runs_of(server))
    assert all(run.scheduled_start_time > before for run in runs_of(server))
