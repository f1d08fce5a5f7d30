"""A round-robin TCP load balancer for tests: what sits in front of server replicas in production.

`Balancer([(host, port), ...])` listens on a free port of 127.0.0.1 (`url`); each accepted connection goes to
the next upstream in turn, and an upstream whose connect fails (a replica killed or restarting) is skipped
for that connection, as any load balancer's health check would do. Bytes are relayed both ways unchanged; a
connection ends when either side closes it, so a replica killed mid-request resets its clients' connections
exactly as it would behind a real balancer. When no upstream accepts, the client's connection is closed
at once. It runs on its own event loop in a daemon thread, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Sequence

from tests.support.server_fixtures import free_port

CONNECT_TIMEOUT_S = 1.0
CHUNK = 64 * 1024


class Balancer:
    def __init__(self, upstreams: Sequence[tuple[str, int]], host: str = "127.0.0.1") -> None:
        if not upstreams:
            raise ValueError("a balancer needs at least one upstream")
        self.upstreams = list(upstreams)
        self.host, self.port = host, free_port(host)
        self.connections: Counter[tuple[str, int]] = Counter()  # accepted per upstream
        self.skipped: Counter[tuple[str, int]] = Counter()  # connects that failed, per upstream
        self.active: Counter[tuple[str, int]] = Counter()  # relayed connections open now, per upstream
        self.refused = 0  # clients closed because no upstream accepted
        self._next = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def counts(self) -> dict[str, object]:
        with self._lock:
            return {"connections": {f"{h}:{p}": n for (h, p), n in self.connections.items()},
                    "skipped": {f"{h}:{p}": n for (h, p), n in self.skipped.items()}, "refused": self.refused}

    def open_to(self, upstream: tuple[str, int]) -> int:
        """Connections relayed to `upstream` right now (what a kill of it would cut)."""
        with self._lock:
            return self.active[upstream]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Balancer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, self.port, reuse_address=True))
            except BaseException as exc:  # reported to start()'s caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name="balancer")
        self._thread.start()
        if not ready.wait(10) or errors:
            raise RuntimeError(f"balancer did not start: {errors[0] if errors else 'timeout'}")
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ connections
    def _order(self) -> list[tuple[str, int]]:
        """Every upstream once, starting with the next one in turn."""
        with self._lock:
            first = self._next
            self._next = (self._next + 1) % len(self.upstreams)
        return self.upstreams[first:] + self.upstreams[:first]

    async def _connect(self) -> tuple[tuple[str, int], asyncio.StreamReader, asyncio.StreamWriter] | None:
        for upstream in self._order():
            try:
                pair = await asyncio.wait_for(asyncio.open_connection(*upstream), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                with self._lock:
                    self.skipped[upstream] += 1
                continue
            with self._lock:
                self.connections[upstream] += 1
                self.active[upstream] += 1
            return (upstream, *pair)
        with self._lock:
            self.refused += 1
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            await _close(writer)
            return
        target, up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            with self._lock:
                self.active[target] -= 1


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or a reset, then close this direction's writer (the other pipe then ends too)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


@contextlib.contextmanager
def balancer(upstreams: Sequence[tuple[str, int]]) -> Iterator[Balancer]:
    started = Balancer(upstreams).start()
    try:
        yield started
    finally:
        started.close()
