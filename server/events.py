"""In-process wake-ups for long-polling `get_runs_in_queue` calls.

Long polls wait in worker threads, so this is a `threading.Condition` with a generation counter: a waiter
remembers the generation it saw, and any change (a run created or moved into a queue state) or shutdown wakes
it. Writes from *other* server processes are not seen here; the long poll re-checks the database on a short
interval for those.
"""

from __future__ import annotations

import threading


class QueueEvents:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._closed = False

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self) -> None:
        """Something may have become claimable; wake every waiter."""
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
