"""A counting reverse proxy in front of the server: one per agent, so requests are attributed exactly.

Neither agent nor server is changed to be measured; each agent is simply pointed at its own proxy port. Every
request is recorded with its arrival time and the GraphQL root field it asks for (`get_runs_in_queue`,
`set_flow_run_states`, ...), which gives idle requests per minute, requests per launched run, and the
agent's first poll (the start-up figure).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
from aiohttp import web

POLL_OPERATION = "get_runs_in_queue"
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}
_FIRST_FIELD = re.compile(r"\{\s*(?:\w+\s*:\s*)?(\w+)")


@dataclass
class Request:
    at: float  # wall clock (time.time()) when the request arrived
    operation: str
    status: int = 0  # 0 while in flight (a long poll stays in flight for up to 30 s)


def operation_of(body: bytes) -> str:
    """The root field of a GraphQL request (`get_runs_in_queue`), or `?` when the body is not GraphQL."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "?"
    if isinstance(payload, list):  # a batched request: name it after its first member
        payload = payload[0] if payload else {}
    query = payload.get("query") if isinstance(payload, dict) else None
    if not isinstance(query, str):
        return "?"
    match = _FIRST_FIELD.search(query)
    return match.group(1) if match else "?"


class CountingProxy:
    """`with CountingProxy(upstream) as proxy:` serves on `proxy.url` from a thread of its own."""

    def __init__(self, upstream: str, name: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.name = name
        self.port = 0
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{name}", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _start(self) -> None:
        # No total timeout: our agent's long polls hold a request open for up to 30 s.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        body = await request.read()
        record = Request(arrived, operation_of(body))
        with self._lock:  # recorded on arrival: a long poll's first poll must be visible before it returns
            self._requests.append(record)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        assert self._session is not None
        target = self.upstream + str(request.rel_url)  # path and query string, as the agent sent them
        try:
            async with self._session.request(request.method, target, data=body, headers=headers) as upstream:
                payload = await upstream.read()
                reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                record.status = upstream.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            record.status = 502
            return web.Response(status=502, text=f"bench proxy: upstream failed: {exc}")
        return web.Response(body=payload, status=record.status, headers=reply_headers)

    # ------------------------------------------------------------ queries over the record

    def requests(self, since: float = 0.0, until: float = float("inf")) -> list[Request]:
        with self._lock:
            return [r for r in self._requests if since <= r.at < until]

    def by_operation(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        """Request counts per GraphQL root field in the window, most frequent first."""
        counts = Counter(r.operation for r in self.requests(since, until))
        return dict(counts.most_common())

    def first_poll_after(self, since: float) -> float | None:
        polls = [r.at for r in self.requests(since) if r.operation == POLL_OPERATION]
        return min(polls) if polls else None

    def wait_first_poll(self, since: float, timeout: float) -> float | None:
        """Block until the first `get_runs_in_queue` after `since` arrives; its arrival time, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = self.first_poll_after(since)
            if first is not None:
                return first
            time.sleep(0.02)
        return None

    def wait_quiet(self, quiet_s: float, timeout: float, ignore: str = POLL_OPERATION) -> None:
        """Wait until no request other than `ignore` has arrived for `quiet_s` (the tail of a burst)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [r.at for r in self.requests(time.time() - quiet_s) if r.operation != ignore]
            if not busy:
                return
            time.sleep(0.1)
