"""Health endpoints for orchestrators: liveness, readiness and Prometheus metrics, plus `local-agent check`.

* `GET /api/health` (also `/livez`, Prefect 1.x's path): 200 while the poll loop ticks. It is 503 only when
  the loop has not ticked for `liveness_window` seconds, i.e. the agent is wedged and a restart helps.
* `GET /ready` (also `/readyz`): 200 when the agent can take work: connected to the backend, the Docker daemon
  answers, and the last successful poll is recent. Otherwise 503 with the reasons as JSON.
* `GET /metrics`: `agent.ops.metrics` in the Prometheus text format.

The server runs in the agent's own event loop (aiohttp `AppRunner`, `access_log=None` so probes do not flood
the log): if the loop is blocked, the probe times out, which is the right answer too.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST

from agent.ops.logs import SECRETS
from agent.ops.metrics import METRICS, AgentMetrics
from agent.runtime.status import EngineStatus
from agent.settings import Settings

if TYPE_CHECKING:  # aiohttp.web is imported when a health server starts: ~1.5 MiB and 10 ms otherwise
    from aiohttp import web

LIVENESS_PATHS = ("/api/health", "/livez", "/healthz")
READINESS_PATHS = ("/ready", "/readyz")
_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[^:\s]*):(?P<port>\d{1,5})$")
ANY_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[::1]:PORT` -> (host, port); ValueError otherwise."""
    match = _ADDRESS.match(address.strip())
    if not match or int(match["port"]) > 65535:
        raise ValueError(f"invalid health address {address!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    host = match["host"].strip("[]")
    return host or "0.0.0.0", int(match["port"])


@dataclass
class HealthState:
    """What the probes report; the agent updates it, the endpoints only read it (monotonic clock)."""

    poll_window: float  # a successful poll older than this makes the agent not ready
    liveness_window: float  # no loop tick for this long makes the agent not alive
    phase: str = "starting"  # starting -> running -> stopping
    started: float = field(default_factory=time.monotonic)
    last_tick: float = field(default_factory=time.monotonic)
    last_poll_ok: float | None = None
    last_poll_error: str | None = None
    docker: EngineStatus = field(default_factory=EngineStatus)  # owned by the admission; reported here
    live_restore: bool | None = None  # the daemon's, read at start: without it a daemon restart stops flows
    engine: str | None = None  # the engine's kind and version, read at start ("Podman 4.3.1 (rootless, ...)")

    @classmethod
    def for_settings(cls, settings: Settings, docker: EngineStatus) -> HealthState:
        # A long poll may legitimately last long_poll + request_timeout; failures back off up to 30 s.
        cycle = settings.long_poll_seconds + settings.request_timeout
        return cls(poll_window=max(60.0, 3 * cycle), liveness_window=max(120.0, 3 * cycle + 30.0),
                   docker=docker)

    def running(self) -> None:
        """Start-up is done; connecting to the backend counts as the first successful contact."""
        self.phase, self.last_poll_ok = "running", time.monotonic()
        self.tick()

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def poll_succeeded(self, seconds: float) -> None:
        self.last_poll_ok, self.last_poll_error = time.monotonic(), None
        METRICS.poll_succeeded(seconds)

    def poll_failed(self, error: BaseException) -> None:
        self.last_poll_error = str(error)[:500]

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        since_tick = time.monotonic() - self.last_tick
        alive = self.phase != "running" or since_tick < self.liveness_window
        return alive, {"status": "ok" if alive else "stalled", "phase": self.phase,
                       "seconds_since_loop_tick": round(since_tick, 3),
                       "docker_live_restore": self.live_restore, "engine": self.engine}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        now, reasons = time.monotonic(), []
        if self.phase != "running":
            reasons.append(f"agent is {self.phase}")
        if self.docker.down:
            reasons.append(f"Docker daemon unreachable for {self.docker.outage_seconds():.0f}s: "
                           f"{self.docker.error}")
        poll_age = None if self.last_poll_ok is None else now - self.last_poll_ok
        if self.phase == "running" and (poll_age is None or poll_age > self.poll_window):
            last = "never" if poll_age is None else f"{poll_age:.0f}s ago"
            reasons.append(f"no successful poll of the API in {self.poll_window:.0f}s (last: {last}"
                           + (f"; error: {self.last_poll_error})" if self.last_poll_error else ")"))
        reasons = [SECRETS(reason) for reason in reasons]  # served over HTTP: a URL may hold a password
        body = {"ready": not reasons, "reasons": reasons, "phase": self.phase,
                "seconds_since_successful_poll": None if poll_age is None else round(poll_age, 3),
                "docker": "unreachable" if self.docker.down else "ok"}
        return not reasons, body


class HealthServer:
    """The aiohttp site serving the three endpoints; `start()` logs the bound address (port 0 is allowed)."""

    def __init__(self, state: HealthState, address: str, metrics: AgentMetrics = METRICS) -> None:
        self.state, self.metrics = state, metrics
        self.host, self.port = parse_address(address)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application()
        for path in LIVENESS_PATHS:
            app.router.add_get(path, self._liveness)
        for path in READINESS_PATHS:
            app.router.add_get(path, self._readiness)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []  # the real port when 0 was asked for
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        logger.info("Health server listening on http://{host}:{port} (/api/health, /ready, /metrics)",
                    host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _liveness(self, _request: web.Request) -> web.Response:
        from aiohttp import web

        ok, body = self.state.liveness()
        return web.json_response(body, status=200 if ok else 503)

    async def _readiness(self, _request: web.Request) -> web.Response:
        from aiohttp import web

        ok, body = self.state.readiness()
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def check(settings: Settings, ready: bool = False, timeout: float = 5.0) -> tuple[int, str]:
    """`local-agent check`: (exit code, message) from the running agent's own health endpoint.

    For the image's HEALTHCHECK: urllib only (no curl in the image), same address setting as the agent.
    """
    if not settings.health_address:
        return 1, ("the health server is disabled: set PREFECT__CLOUD__AGENT__HEALTH_ADDRESS "
                   "(e.g. 0.0.0.0:8080) or --health-address")
    host, port = parse_address(settings.health_address)
    if port == 0:
        return 1, "the health address uses port 0 (a random port): check cannot know where to ask"
    host = "127.0.0.1" if host in ANY_HOSTS else host
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}{READINESS_PATHS[0] if ready else LIVENESS_PATHS[0]}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own endpoint
            body = response.read()
            return (0 if response.status == 200 else 1), (f"{url}: {response.status} {body!r}{_engine(body)}"
                                                          f"{_restore(body)}")
    except urllib.error.HTTPError as exc:
        return 1, f"{url}: {exc.code} {_body(exc)}"
    except (urllib.error.URLError, OSError) as exc:
        return 1, f"{url}: {getattr(exc, 'reason', exc)}"


def _engine(body: bytes) -> str:
    """The engine's kind and version as the agent read them at start (`Engine: Podman 4.3.1 (...)`)."""
    try:
        value = json.loads(body).get("engine")
    except (ValueError, AttributeError):
        return ""
    return f"; Engine: {value}" if isinstance(value, str) and value else ""


def _restore(body: bytes) -> str:
    """The daemon's live-restore, in words: without it, restarting Docker stops every running flow."""
    try:
        value = json.loads(body).get("docker_live_restore", "absent")
    except (ValueError, AttributeError):
        return ""
    words = {True: "on", False: "off (a daemon restart stops running flows; they are resubmitted)",
             None: "unknown"}
    return f"; Docker live-restore: {words[value]}" if value in words else ""


def _body(exc: urllib.error.HTTPError) -> str:
    try:
        return json.dumps(json.loads(exc.read() or b"{}"))
    except (ValueError, OSError):
        return ""
