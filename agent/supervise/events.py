"""`EventFollower`: the engine's container events (`start`/`die` of our labelled containers), read in a
daemon thread and handed to the watcher's loop. A broken stream is reopened with backoff; the watcher's
periodic sweep covers whatever happened meanwhile."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from loguru import logger

from agent.runtime.port import ContainerRuntime, Stream


class EventFollower:
    """Reads Docker's event stream in a daemon thread and hands (action, container id) to `notify`."""

    def __init__(self, runtime: ContainerRuntime, labels: dict[str, str | None],
                 notify: Callable[[str, str], None]) -> None:
        self.runtime, self.labels, self.notify = runtime, labels, notify
        self._stopped = threading.Event()
        self._stream: Stream | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="docker-events")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(Exception):
            if self._stream is not None:
                self._stream.close()

    def _run(self) -> None:
        since, delay = int(time.time()), 1.0
        while not self._stopped.is_set():
            try:
                self._stream = self.runtime.events(self.labels, since=since)
                for event in self._stream:
                    since = max(since, int(event.get("time") or since))
                    self.notify(str(event.get("Action") or event.get("status")), str(event.get("id")))
                    delay = 1.0
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect; the sweep covers the gap
                logger.debug("docker event stream broke: {error}", error=exc)
            self._stopped.wait(delay)
            delay = min(delay * 2, 30.0)
