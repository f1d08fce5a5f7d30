"""Wake-ups for long-polling `get_runs_in_queue` calls.

Long polls wait in worker threads, so this is a `threading.Condition` with a generation counter: a waiter
remembers the generation it saw, and any change (a run created or moved into a queue state) or shutdown wakes
it. `notify()` is called after the change has committed; it wakes this process's waiters and hands the news
to the publishers (on PostgreSQL, `server.pg_notify` tells the other replicas, whose listeners call `wake()`).
Without a publisher (SQLite) other processes' writes are found by the long poll's periodic re-check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class QueueEvents:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._closed = False
        self._publishers: list[Callable[[], None]] = []

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    def add_publisher(self, publish: Callable[[], None]) -> None:
        """`publish()` runs on every `notify()`, in the notifying thread; it must not raise."""
        self._publishers.append(publish)

    def notify(self) -> None:
        """Something may have become claimable (committed): wake every waiter, tell the other replicas."""
        self.wake()
        for publish in self._publishers:
            publish()

    def wake(self) -> None:
        """Wake this process's waiters only (news from another replica)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Shutdown: every current and future wait returns at once."""
        with self._cond:
            self._closed = True
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the generation moves past `seen`, the server closes, or `timeout`; return it."""
        with self._cond:
            if self._generation == seen and not self._closed and timeout > 0:
                self._cond.wait(timeout)
            return self._generation
