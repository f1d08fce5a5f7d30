"""Container `start` events of one daemon, counted across daemon restarts.

A daemon restart ends every event stream; the collector reconnects with `since=` the last event it saw, and
the new daemon replays what happened in between, so no start is missed or counted twice.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import docker
import docker.errors
import requests


class StartEvents:
    """Collects `start` events of containers carrying `label` (key=value), keyed by another label's value."""

    def __init__(self, host: str, label: str, key_label: str) -> None:
        self.host, self.label, self.key_label = host, label, key_label
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.reconnects = 0
        self._seen: set[tuple[str, int]] = set()
        self._since = time.time() - 1
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="docker-start-events", daemon=True)

    def __enter__(self) -> StartEvents:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a stream whose daemon is gone can fail; we are done with it anyway
                pass
        self._thread.join(5)

    def count(self, key: str) -> int:
        with self._lock:
            return len(self.starts.get(key, []))

    def times(self, key: str) -> list[float]:
        with self._lock:
            return list(self.starts.get(key, []))

    def _run(self) -> None:
        while not self._stop.is_set():
            client = docker.DockerClient(base_url=self.host, timeout=30)
            try:
                filters = {"type": "container", "event": "start", "label": self.label}
                self._stream = client.events(since=int(self._since), decode=True, filters=filters)
                for event in self._stream:
                    self._record(event)
            except (docker.errors.DockerException, requests.RequestException, OSError):
                pass  # daemon down or restarting: reconnect below
            finally:
                client.close()
            if not self._stop.is_set():
                self.reconnects += 1
                time.sleep(0.5)

    def _record(self, event: dict[str, Any]) -> None:
        marker = (event["id"], int(event["timeNano"]))
        key = event.get("Actor", {}).get("Attributes", {}).get(self.key_label, "")
        with self._lock:
            if marker in self._seen:
                return
            self._seen.add(marker)
            self.starts[key].append(int(event["timeNano"]) / 1e9)
            self._since = max(self._since, int(event["time"]))
