"""The scheduler (`server.scheduler`) when a schedule stops: turned off or archived while a round runs, runs
that already ran, creations cut short long ago, a lease lost mid-round; what registration checks; and the
`flow.schedule` column the rounds read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from server import auto_runs, db, migrate, scheduler
from server.context import RequestContext
from server.lease import Lease
from server.resolvers.runs import ScheduleStopped, create_flow_run
from tests.support import api
from tests.support.server_fixtures import InProcessServer
from tests.unit.test_server_scheduler import (
    CREATE_FLOW,
    flow_input,
    interval_clock,
    register,
    runs_of,
    schedule_of,
    set_schedule,
)


@pytest.fixture
def server(inproc_factory: Callable[..., InProcessServer]) -> InProcessServer:
    return inproc_factory()


def stored_schedule(server: InProcessServer, flow_id: str) -> Any:
    with db.read_tx(server.services.engine) as conn:
        return conn.execute(select(db.flow.c.schedule).where(db.flow.c.id == flow_id)).scalar_one()


# ------------------------------------------------------------------------------------------ races


def test_a_round_that_read_the_flow_before_the_schedule_went_off_creates_nothing(
    server: InProcessServer,
) -> None:
    """The round's flow list is from before set_schedule_inactive; its inserts come after the removal."""
    flow_id = register(server)
    schedule = stored_schedule(server, flow_id)
    set_schedule(server, flow_id, active=False)
    assert scheduler.schedule_flow(server.services, flow_id, schedule, auto_runs.Ahead()) == 0
    assert runs_of(server, flow_id) == []
    assert flow_id not in scheduler._reported  # stopped quietly, not a problem of the flow


def test_a_round_that_read_a_version_before_it_was_archived_creates_nothing(server: InProcessServer) -> None:
    old = register(server)
    schedule = stored_schedule(server, old)
    register(server)  # the next version archives this one
    assert scheduler.schedule_flow(server.services, old, schedule, auto_runs.Ahead()) == 0
    assert runs_of(server, old) == [] and old not in scheduler._reported


def test_a_run_inserted_before_the_schedule_went_off_is_not_scheduled_after(server: InProcessServer) -> None:
    """Inserted (no state yet) when the removal ran, so the removal did not see it: finishing it now
    leaves a tombstone, which the next round removes, instead of a Scheduled run nobody asked for."""
    flow_id = register(server)
    scheduler.schedule_round(server.services)
    run = runs_of(server, flow_id)[0]
    with db.write_tx(server.services.engine) as conn:  # as right after its insert
        conn.execute(update(db.flow_run).where(db.flow_run.c.id == run.id).values(
            state=None, serialized_state=None, version=0))
    set_schedule(server, flow_id, active=False)
    args = {"flow_id": flow_id, "idempotency_key": run.idempotency_key,
            "scheduled_start_time": run.scheduled_start_time}
    with pytest.raises(ScheduleStopped):
        create_flow_run(RequestContext(server.services), args, auto_scheduled=True)
    (left,) = runs_of(server, flow_id)
    assert (left.id, left.state, left.idempotency_key) == (run.id, None, None)
    scheduler.schedule_round(server.services)
    assert runs_of(server, flow_id) == []


def test_schedule_off_keeps_a_run_that_already_ran(server: InProcessServer) -> None:
    """Claimed early, run, and set back to Scheduled (a retry): its state matches, its past does not."""
    flow_id = register(server)
    scheduler.schedule_round(server.services)
    run = runs_of(server, flow_id)[-1]
    assert run.version == 1  # what create_flow_run leaves: the row's first state, Scheduled
    api.set_flow_run_state(server, run.id, {"type": "Submitted"}, run.version)
    api.set_flow_run_state(server, run.id, {"type": "Scheduled", "start_time": None}, run.version + 1)
    (again,) = [r for r in runs_of(server, flow_id) if r.id == run.id]
    assert (again.state, again.version) == ("Scheduled", 3)
    set_schedule(server, flow_id, active=False)
    assert [r.id for r in runs_of(server, flow_id)] == [run.id]
    assert auto_runs.remove_stray(server.services.engine, 10, 1800) == 0


def test_a_creation_cut_short_long_ago_is_removed(server: InProcessServer) -> None:
    """No round finishes a half-made run of an archived version (or a past one): it goes once stale."""
    old = register(server)
    scheduler.schedule_round(server.services)
    runs = runs_of(server, old)
    cut = [run.id for run in runs[:2]]
    with db.write_tx(server.services.engine) as conn:
        conn.execute(update(db.flow_run).where(db.flow_run.c.id.in_(cut)).values(state=None))
        conn.execute(update(db.flow_run).where(db.flow_run.c.id == cut[0]).values(
            created=db.utcnow() - timedelta(hours=1)))
    register(server)  # archives `old`: its Scheduled runs go now, the half-made ones stay
    assert sorted(run.id for run in runs_of(server, old)) == sorted(cut)
    assert auto_runs.remove_stray(server.services.engine, 10, 1800) == 1
    assert [run.id for run in runs_of(server, old)] == [cut[1]]  # not stale yet: perhaps being made


# ------------------------------------------------------------------------------------------ the lease


def test_the_round_renews_the_lease_and_stops_once_it_is_lost(server: InProcessServer) -> None:
    engine = server.services.engine
    lease = Lease(engine, "scheduler", 30.0, "me")
    assert lease.renew()
    now = [0.0]
    stopping = scheduler.lease_keeper(lease, lambda: False, clock=lambda: now[0])
    with db.read_tx(engine) as conn:
        first = conn.execute(select(db.lease.c.expires)).scalar_one()
    now[0] = 11.0
    assert stopping() is False
    with db.read_tx(engine) as conn:
        assert conn.execute(select(db.lease.c.expires)).scalar_one() > first  # renewed mid-round
    with db.write_tx(engine) as conn:  # another replica took it (this one stalled past the ttl)
        conn.execute(update(db.lease).values(holder="other"))
    assert stopping() is False  # not due yet: no write per run
    now[0] = 22.0
    assert stopping() is True


def test_a_round_stops_when_asked(server: InProcessServer) -> None:
    flow_id = register(server)
    asked = iter([False, False, False, True])
    assert scheduler.schedule_round(server.services, lambda: next(asked, True)) == 2
    assert len(runs_of(server, flow_id)) == 2


# ------------------------------------------------------------------------------------------ registration


def test_registration_refuses_a_schedule_without_events_it_can_compute(server: InProcessServer) -> None:
    cron = {**interval_clock(), "type": "CronClock", "cron": "0 0 30 2 *"}
    del cron["interval"]
    variables = flow_input("never", schedule_of(cron), project_id=api.ensure_project(server, "tests"))
    body = server.graphql(CREATE_FLOW, variables)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_required_parameters_are_checked_when_the_schedule_is_turned_on(server: InProcessServer) -> None:
    """Like Prefect Server: registering with the schedule off is fine; turning it on is refused."""
    flow_id = register(server, active=False, parameters=[{"name": "x", "required": True}])
    name = "set_schedule_active"
    body = server.graphql(f"mutation($input: {name}_input!) {{ {name}(input: $input) {{ success }} }}",
                          {"input": {"flow_id": flow_id}})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "required parameters: ['x']" in body["errors"][0]["message"]
    with db.read_tx(server.services.engine) as conn:
        assert conn.execute(select(db.flow_group.c.schedule_active)).scalar_one() is False
    assert scheduler.schedule_round(server.services) == 0


# ------------------------------------------------------------------------------------ the schedule column


def test_the_round_reads_the_schedule_column_not_the_serialized_flow(server: InProcessServer) -> None:
    """Registration stores the schedule apart, so a round never loads whole serialized flows."""
    flow_id = register(server)
    with db.write_tx(server.services.engine) as conn:
        stored = conn.execute(select(db.flow.c.schedule).where(db.flow.c.id == flow_id)).scalar_one()
        conn.execute(update(db.flow).where(db.flow.c.id == flow_id).values(serialized_flow={"name": "x"}))
    assert stored == schedule_of(interval_clock())
    assert scheduler.schedule_round(server.services) == 10


def test_revision_0005_copies_each_flows_schedule(empty_database_url: str) -> None:
    engine = db.create_db_engine(empty_database_url, pool_size=2)
    try:
        from alembic import command

        with db.write_tx(engine) as conn:
            command.upgrade(migrate.alembic_config(conn), "0004")
        flows: dict[str, dict[str, Any]] = {"with": {"name": "a", "schedule": schedule_of(interval_clock())},
                 "none": {"name": "b", "schedule": None}, "absent": {"name": "c"}}
        with db.write_tx(engine) as conn:
            _legacy_rows(conn, flows)
        assert migrate.upgrade(engine) == migrate.head()  # through 0005, which copies the schedules
        with db.read_tx(engine) as conn:
            stored = dict(conn.execute(select(db.flow.c.id, db.flow.c.schedule)).all())
        assert stored == {"with": schedule_of(interval_clock()), "none": None, "absent": None}
    finally:
        engine.dispose()


def _legacy_rows(conn: Any, flows: dict[str, dict[str, Any]]) -> None:
    now = db.utcnow()
    conn.execute(db.tenant.insert().values(id="t", name="t", slug="t", created=now))
    conn.execute(db.project.insert().values(id="p", tenant_id="t", name="p", created=now))
    conn.execute(db.flow_group.insert().values(id="g", tenant_id="t", schedule_active=True, created=now))
    for flow_id, serialized in flows.items():
        conn.execute(db.flow.insert().values(
            id=flow_id, tenant_id="t", project_id="p", flow_group_id="g", version_group_id="g", name=flow_id,
            version=1, serialized_flow=serialized, archived=False, ready=True, created=now))
