"""Arrival-order admission of one process's SQLite writers, with a deadline and no self-deadlock."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from server.errors import ApiError


class WriteLockTimeout(ApiError):
    """No write turn within `sqlite_busy_timeout_ms`: retryable, like SQLite's "database is locked"."""

    code = "DATABASE_BUSY"


class FairGate:
    """A first-come, first-served lock for one process's SQLite writers.

    SQLite's busy handler polls with growing sleeps, so a writer that commits and begins again at once (a
    long write done in batches) would win the lock over and over while a heartbeat waits. Queuing writers
    in arrival order here means each batch lets every writer that arrived meanwhile go first. A waiter gives
    up after `timeout_s` (SQLite's own busy timeout), so a stuck writer cannot pile up every worker thread;
    a nested write in the thread that holds the gate would wait for itself forever, so it is refused.
    """

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()
        self._holder: int | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._holder == me:
                raise RuntimeError("nested write transaction in one thread: it would wait for itself")
            ticket = self._next_ticket
            self._next_ticket += 1
            if not self._cond.wait_for(lambda: ticket == self._serving, timeout=self.timeout_s):
                self._abandoned.add(ticket)
                raise WriteLockTimeout(
                    f"The database is busy: no write turn within {self.timeout_s * 1000:.0f} ms "
                    "(LOCAL_AGENT_SERVER_SQLITE_BUSY_TIMEOUT_MS); try again.")
            self._holder = me
        try:
            yield
        finally:
            with self._cond:
                self._holder = None
                self._serving += 1
                while self._serving in self._abandoned:  # skip waiters that gave up
                    self._abandoned.discard(self._serving)
                    self._serving += 1
                self._cond.notify_all()


_GATES: weakref.WeakKeyDictionary[Engine, FairGate] = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def register_gate(engine: Engine, gate: FairGate) -> None:
    with _GATES_LOCK:
        _GATES[engine] = gate


def gate_for(engine: Engine) -> FairGate | None:
    """The engine's gate (SQLite only: PostgreSQL has row locks and fair lock queues of its own)."""
    if engine.dialect.name != "sqlite":
        return None
    with _GATES_LOCK:
        return _GATES.setdefault(engine, FairGate())
