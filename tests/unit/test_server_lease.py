"""Leases (`server.lease`) on SQLite and PostgreSQL, and the zombie sweep running only under its lease."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from server import db, lazarus, lease
from server.context import Services
from server.settings import ServerSettings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (f"sqlite:///{tmp_path / 'lease.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    engine = db.create_db_engine(url, pool_size=40)
    db.metadata.create_all(engine)
    yield engine
    engine.dispose()


def holder_of(engine: Engine, name: str) -> str | None:
    with db.read_tx(engine) as conn:
        return conn.execute(select(db.lease.c.holder).where(db.lease.c.name == name)).scalar()


def expire(engine: Engine, name: str) -> None:
    with db.write_tx(engine) as conn:
        conn.execute(update(db.lease).where(db.lease.c.name == name).values(
            expires=db.utcnow() - timedelta(seconds=1)))


def test_one_holder_until_it_expires_or_is_released(engine: Engine) -> None:
    assert lease.hold(engine, "job", "a", 60)
    assert lease.hold(engine, "job", "a", 60)  # renewal
    assert not lease.hold(engine, "job", "b", 60)
    assert holder_of(engine, "job") == "a"
    expire(engine, "job")  # a died: its lease runs out
    assert lease.hold(engine, "job", "b", 60)
    assert not lease.hold(engine, "job", "a", 60)
    assert not lease.release(engine, "job", "a")  # not a's to release
    assert lease.release(engine, "job", "b")
    assert holder_of(engine, "job") is None
    assert lease.hold(engine, "job", "a", 60)
    assert lease.hold(engine, "other", "b", 60)  # leases are independent


@pytest.mark.parametrize("expired", [False, True], ids=["absent", "expired"])
def test_a_race_for_a_free_lease_has_exactly_one_winner(engine: Engine, expired: bool) -> None:
    if expired:
        assert lease.hold(engine, "job", "old", 60)
        expire(engine, "job")
    holders = [f"h{i}" for i in range(24)]
    start = threading.Barrier(len(holders))
    won: list[str] = []
    errors: list[BaseException] = []

    def contend(holder: str) -> None:
        start.wait()
        try:
            if lease.hold(engine, "job", holder, 60):
                won.append(holder)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(won) == 1 and holder_of(engine, "job") == won[0]


def test_lease_object_logs_and_releases(engine: Engine) -> None:
    first, second = lease.Lease(engine, "job", 60), lease.Lease(engine, "job", 60)
    assert first.holder != second.holder
    assert first.renew() and first.held
    assert not second.renew() and not second.held
    first.release()
    assert not first.held and holder_of(engine, "job") is None
    assert second.renew()
    first.release()  # not held: nothing happens
    assert holder_of(engine, "job") == second.holder


def test_only_the_lease_holder_sweeps_and_a_clean_stop_hands_it_over(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ServerSettings(database_url="sqlite://", zombie_check_interval_s=0.05, zombie_lease_ttl_s=60)
    replicas = [Services(settings=settings, engine=engine) for _ in range(3)]
    swept: list[str] = []
    original = lazarus.sweep

    def recording_sweep(services: Services) -> int:
        swept.append(services.instance_id)
        return original(services)

    async def scenario() -> None:
        stops = [asyncio.Event() for _ in replicas]
        tasks = [asyncio.create_task(lazarus.run(s, stop)) for s, stop in zip(replicas, stops, strict=True)]
        await _until(lambda: len(swept) >= 5)
        owner = holder_of(engine, lazarus.LEASE_NAME)
        assert set(swept) == {owner}
        index = [s.instance_id for s in replicas].index(owner)
        stops[index].set()
        await tasks[index]  # released on the way out; another replica takes it long before the 60 s ttl
        swept.clear()
        await _until(lambda: len(swept) >= 5)
        successor = holder_of(engine, lazarus.LEASE_NAME)
        assert successor not in (None, owner) and set(swept) == {successor}
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks)
        assert holder_of(engine, lazarus.LEASE_NAME) is None

    monkeypatch.setattr(lazarus, "sweep", recording_sweep)
    asyncio.run(scenario())


async def _until(condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    """Wait for a condition (a generous deadline against a hang, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)
