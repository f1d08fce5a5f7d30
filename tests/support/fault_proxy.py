"""An HTTP-aware Docker API proxy on a unix socket that injects engine faults at create and start.

The agent under test gets `base_url=proxy.base_url`; every Docker API call goes through an aiohttp server on a
background thread and is forwarded to the real daemon. Responses are streamed chunk by chunk as the daemon
sends them (events, `logs --follow`, pull progress), so the agent's event watcher works through the proxy.
The agent never attaches or execs (no `Connection: Upgrade` / hijacked endpoints), so those are refused with
501 rather than half-supported.

Knobs (`configure(...)`, at any time, from any thread):

* `fail_create`, `fail_start`: the fraction of `POST /containers/create` and `POST /containers/{id}/start`
  calls answered with 500, decided by a seeded `random.Random`;
* `mode`: `before` (answer without forwarding: Docker never saw the call), `after` (forward, let Docker act,
  then replace its answer: the container really was created or started) or `mixed` (each fault picks one);
* `delay_s` before each call of `delay_endpoints` is forwarded (launches stay in flight longer).

The injected message carries `message` (default: a connection reset, which the agent's own rules read as a
transient engine race), so the faults model the infrastructure, not a broken run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

DOCKER_SOCKET = "/var/run/docker.sock"
MODES = ("before", "after", "mixed")
DEFAULT_MESSAGE = "injected fault: read unix @->/run/containerd/containerd.sock: connection reset by peer"
ENDPOINTS: dict[str, tuple[str, re.Pattern[str]]] = {
    "create": ("POST", re.compile(r"^(/v[0-9.]+)?/containers/create/?$")),
    "start": ("POST", re.compile(r"^(/v[0-9.]+)?/containers/[^/]+/start/?$")),
    "events": ("GET", re.compile(r"^(/v[0-9.]+)?/events/?$")),  # counted only: shows the watchers stream
}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass(frozen=True)
class FaultConfig:
    fail_create: float = 0.0
    fail_start: float = 0.0
    mode: str = "before"
    delay_s: float = 0.0
    delay_endpoints: frozenset[str] = frozenset({"create", "start"})
    message: str = DEFAULT_MESSAGE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not (0.0 <= self.fail_create <= 1.0 and 0.0 <= self.fail_start <= 1.0):
            raise ValueError("fail_create and fail_start are fractions in [0, 1]")


@dataclass
class ProxyCounters:
    """What went through: requests per endpoint (`create`, `start`, `events`, `other`), faults per
    (endpoint, mode)."""

    requests: Counter[str] = field(default_factory=Counter)
    faults: Counter[tuple[str, str]] = field(default_factory=Counter)
    delayed: Counter[str] = field(default_factory=Counter)  # requests held `delay_s`, per endpoint

    @property
    def faults_total(self) -> int:
        return sum(self.faults.values())

    def as_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests),
                "faults": {f"{endpoint}/{mode}": n for (endpoint, mode), n in sorted(self.faults.items())},
                "faults_total": self.faults_total}


def endpoint_of(method: str, path: str) -> str:
    for name, (wanted, pattern) in ENDPOINTS.items():
        if method == wanted and pattern.match(path):
            return name
    return "other"


class FaultProxy:
    """The proxy; `start()` serves it from a daemon thread, `close()` stops it and removes the socket dir."""

    def __init__(self, upstream: str = DOCKER_SOCKET, seed: int = 0, **config: Any) -> None:
        self.upstream = upstream
        self._dir = Path(tempfile.mkdtemp(prefix="lat-fault-proxy-"))
        self.path = str(self._dir / "docker.sock")
        self._config = FaultConfig(**config)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counters = ProxyCounters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return f"unix://{self.path}"

    @property
    def config(self) -> FaultConfig:
        with self._lock:
            return self._config

    def configure(self, **changes: Any) -> FaultConfig:
        """Change some knobs now (validated); calls already past their decision keep theirs."""
        with self._lock:
            self._config = replace(self._config, **changes)
            return self._config

    def counters(self) -> ProxyCounters:
        """A copy of the counters (safe to read while the proxy serves)."""
        with self._lock:
            counted = self._counters
            return ProxyCounters(Counter(counted.requests), Counter(counted.faults), Counter(counted.delayed))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        started = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()'s caller
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name="fault-proxy")
        self._thread.start()
        if not started.wait(15) or errors:
            raise RuntimeError(f"fault proxy did not start: {errors[0] if errors else 'timeout'}")

    async def _serve(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.upstream, limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None,
                                    handler_cancellation=True)  # a client gone ends its upstream stream
        await self._runner.setup()
        await web.UnixSite(self._runner, self.path).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def _decide(self, endpoint: str) -> tuple[FaultConfig, str | None]:
        """Count the request and draw its fate: the fault mode to inject, or None."""
        with self._lock:
            config = self._config
            self._counters.requests[endpoint] += 1
            rate = {"create": config.fail_create, "start": config.fail_start}.get(endpoint, 0.0)
            if rate <= 0 or self._rng.random() >= rate:
                return config, None
            mode = config.mode if config.mode != "mixed" else self._rng.choice(("before", "after"))
            self._counters.faults[(endpoint, mode)] += 1
            return config, mode

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade") or "upgrade" in request.headers.get("Connection", "").lower():
            refusal = {"message": "fault proxy: hijacked endpoints are not proxied"}
            return web.json_response(refusal, status=501)
        endpoint = endpoint_of(request.method, request.path)
        config, fault = self._decide(endpoint)
        if config.delay_s > 0 and endpoint in config.delay_endpoints:
            with self._lock:
                self._counters.delayed[endpoint] += 1
            await asyncio.sleep(config.delay_s)
        if fault == "before":
            return self._fault(endpoint, fault, config)
        body = await request.read()
        assert self._session is not None
        upstream = await self._session.request(
            request.method, f"http://docker{request.rel_url}", data=body or None, allow_redirects=False,
            headers={k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP})
        try:
            if fault == "after":
                await upstream.read()  # Docker has acted; its answer is lost on the way back
                return self._fault(endpoint, fault, config)
            return await self._stream(request, upstream)
        finally:
            upstream.release()

    @staticmethod
    def _fault(endpoint: str, mode: str, config: FaultConfig) -> web.Response:
        return web.json_response({"message": f"{config.message} ({endpoint}, {mode})"}, status=500)

    @staticmethod
    async def _stream(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Relay status, headers and body chunk by chunk, as the daemon sends them."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientPayloadError):
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


@contextlib.contextmanager
def fault_proxy(seed: int = 0, **config: Any) -> Iterator[FaultProxy]:
    proxy = FaultProxy(seed=seed, **config)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
