"""The SQLite writers' gate: a bounded wait and no self-deadlock (threads in one process, no server)."""

from __future__ import annotations

import threading

import pytest

from server import db
from server.write_gate import FairGate, WriteLockTimeout, gate_for

pytestmark = pytest.mark.sqlite_only(reason="the gate orders one process's SQLite writers; Postgres has none")


def hold(gate: FairGate, entered: threading.Event, release: threading.Event) -> threading.Thread:
    def run() -> None:
        with gate.turn():
            entered.set()
            release.wait(60)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(60)
    return thread


def test_a_waiter_gives_up_with_a_retryable_error_and_the_queue_goes_on() -> None:
    gate = FairGate(timeout_s=0.05)
    entered, release = threading.Event(), threading.Event()
    holder = hold(gate, entered, release)
    with pytest.raises(WriteLockTimeout, match="SQLITE_BUSY_TIMEOUT_MS") as raised:
        with gate.turn():
            pass
    assert raised.value.code == "DATABASE_BUSY"
    release.set()
    holder.join(60)
    with gate.turn():  # the abandoned ticket is skipped, not waited for
        pass


def test_a_nested_write_in_one_thread_is_refused_not_a_deadlock() -> None:
    gate = FairGate(timeout_s=60)
    with gate.turn():
        with pytest.raises(RuntimeError, match="nested write transaction"):
            with gate.turn():
                pass
    with gate.turn():
        pass


def test_write_tx_uses_the_engines_busy_timeout(database_url: str) -> None:
    engine = db.create_db_engine(database_url, busy_timeout_ms=1234)
    try:
        gate = gate_for(engine)
        assert gate is not None and gate.timeout_s == pytest.approx(1.234)
        with db.write_tx(engine):
            with pytest.raises(RuntimeError, match="nested"):
                with db.write_tx(engine):
                    pass
    finally:
        engine.dispose()
