"""Long-poll wake-ups across server replicas on PostgreSQL: LISTEN/NOTIFY on one fixed channel.

Every `QueueEvents.notify()` (a run became claimable, committed) also runs `Publisher`, which sends
`pg_notify(CHANNEL, <this process's id>)` in a short transaction of its own; PostgreSQL delivers it to every
listening session once that commits. Each server process runs one `Listener`: a daemon thread with its own
psycopg connection (not from the pool: it sits in LISTEN for the process's lifetime) that wakes the local long
polls for every notification another process sent. Either side failing costs only latency: the long poll
still re-reads the database every `long_poll_recheck_s`. The listener reconnects by itself with backoff,
logs once when an outage starts and once when it ends, and wakes the local long polls after reconnecting
(notifications sent meanwhile are lost).
"""

from __future__ import annotations

import threading
from typing import Any

from loguru import logger
from sqlalchemy import Engine, func, select

from server.errors import first_line
from server.events import QueueEvents

CHANNEL = "local_agent_queue"
POLL_S = 0.5  # how often the listener looks at its stop flag between notifications
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 5.0
# A dead peer (no RST, e.g. a vanished host) is noticed by TCP keepalives instead of never.
CONNECT_DEFAULTS: dict[str, Any] = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                                    "keepalives_interval": 5, "keepalives_count": 3}


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class Publisher:
    """Tells the other replicas that something may have become claimable; never raises."""

    def __init__(self, engine: Engine, sender_id: str) -> None:
        self.engine, self.sender_id = engine, sender_id
        self._failing = False

    def __call__(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(select(func.pg_notify(CHANNEL, self.sender_id)))
        except Exception as exc:  # the write itself has committed; the others' re-check finds it
            if not self._failing:
                logger.warning("pg_notify failed, other replicas notice changes by polling: {}",
                               first_line(exc))
            self._failing = True
            return
        if self._failing:
            logger.info("pg_notify works again")
            self._failing = False


class Listener:
    """LISTEN in a daemon thread; each notification from another process wakes the local long polls."""

    def __init__(self, engine: Engine, events: QueueEvents, sender_id: str) -> None:
        self.events, self.sender_id = events, sender_id
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        self._cargs, self._cparams = cargs, {**CONNECT_DEFAULTS, **cparams, "autocommit": True}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self.connected = threading.Event()  # set while LISTEN is active (tests and health wait for it)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay, down = BACKOFF_MIN_S, False
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    self._connected(down)
                    delay, down = BACKOFF_MIN_S, False
                    self._drain(conn)
            except Exception as exc:  # connection refused, reset, server shut down: reconnect
                if not down:
                    logger.warning("LISTEN {}: connection lost, reconnecting with backoff: {}", CHANNEL,
                                   first_line(exc))
                down = True
            self.connected.clear()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(*self._cargs, **self._cparams)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connected(self, after_outage: bool) -> None:
        self.connected.set()
        if after_outage:
            logger.info("LISTEN {}: reconnected", CHANNEL)
            self.events.wake()  # whatever was notified while we were away
        else:
            logger.debug("LISTEN {}: listening", CHANNEL)

    def _drain(self, conn: Any) -> None:
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=POLL_S):
                if notify.payload != self.sender_id:
                    self.events.wake()


def start_listener(engine: Engine, events: QueueEvents, sender_id: str) -> Listener | None:
    """The running listener on PostgreSQL, None elsewhere."""
    if not is_postgres(engine):
        return None
    listener = Listener(engine, events, sender_id)
    listener.start()
    return listener
