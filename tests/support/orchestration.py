"""The stage for in-process orchestration tests: the real server and `LocalAgent` in one event loop.

`Stage` serves the real `server/` app (`server.app.build_app`, SQLite under tmp_path, auth none) on a free
127.0.0.1 port of the test's own event loop, and runs `LocalAgent(settings, runtime=FakeRuntime())` there as a
task: real GraphQL over HTTP, no Docker. The seeding helpers of `tests.support.api` are blocking, so the stage
runs them in a thread (`await stage.do(api.create_flow_run, flow_id)`) while the loop serves them.

The server side can count what the agent asked (`stage.server.requests`) and answer the next queue polls with
HTTP 503 (`fail_queue_polls`), as an overloaded or restarting backend does.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

import requests
from aiohttp import web
from loguru import logger

from agent.agent import LocalAgent
from agent.settings import Settings, load_settings
from server.app import GRAPHQL_KEY, build_app
from server.auth import create_token
from server.serve import open_services
from server.settings import ServerSettings
from tests.support import api
from tests.support.fake_runtime import FakeRuntime
from tests.support.server_fixtures import free_port

T = TypeVar("T")
IMAGE = "local/flow:1"  # present on the fake engine unless a test says otherwise
FAST = {  # every interval the agent waits on, small: outcomes are asserted, never durations
    "watch_interval": 0.1, "heartbeat_interval": 0.2, "cancel_grace_seconds": 0.1, "long_poll_seconds": 1.0,
    "drain_timeout": 2.0, "docker_outage_exit_s": 0.0, "prefetch_seconds": 10.0,
}


@overload
async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = ...,
                     message: str | Callable[[], str] = ..., interval: float = ...) -> T: ...
@overload
async def eventually(check: Callable[[], T | None], timeout: float = ...,
                     message: str | Callable[[], str] = ..., interval: float = ...) -> T: ...
async def eventually(check: Callable[[], Any], timeout: float = 10.0,
                     message: str | Callable[[], str] = "condition not met", interval: float = 0.02) -> Any:
    """Poll `check` (sync or async) without blocking the loop until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        await asyncio.sleep(interval)


class LoopServer:
    """The real server app on this loop; `graphql` is blocking (call it from a thread, see `Stage.do`)."""

    def __init__(self, tmp_path: Path, auth: str = "none") -> None:
        self.settings = ServerSettings(database_url=f"sqlite:///{tmp_path / 'server.db'}", auth=auth,
                                       zombies_enabled=False, long_poll_recheck_s=0.2)
        self.services = open_services(self.settings)
        # auth=token: the test's own calls go with a USER token, the agent gets a RUNNER one
        self.token = create_token(self.services.engine, "USER", "test") if auth == "token" else None
        self.runner_token = create_token(self.services.engine, "RUNNER", "agent") if auth == "token" else None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (query text, variables) as received
        self.failing_polls = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = build_app(self.services)
        service = app[GRAPHQL_KEY]
        real_run = service.run

        def run(body: dict[str, Any], headers: dict[str, str], caller: Any = None) -> tuple[int, Any]:
            variables = body.get("variables") or {}
            self.requests.append((str(body.get("query")), variables if isinstance(variables, dict) else {}))
            if self.failing_polls and "get_runs_in_queue" in str(body.get("query")):
                self.failing_polls -= 1
                return 503, {"errors": [{"message": "Service unavailable (test)",
                                         "extensions": {"code": "UNAVAILABLE"}}]}
            return real_run(body, headers, caller)

        service.run = run  # type: ignore[method-assign]
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def fail_queue_polls(self, n: int) -> None:
        """The next `n` queue polls are answered with HTTP 503."""
        self.failing_polls = n

    def queue_polls(self) -> list[dict[str, Any]]:
        """The `input` of every get_runs_in_queue request received."""
        return [v.get("input") or {} for q, v in self.requests if "get_runs_in_queue" in q]

    async def close(self) -> None:
        self.services.events.close()  # long polls return now
        if self._runner is not None:
            await self._runner.cleanup()
        self.services.engine.dispose()

    def graphql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
        sent = {"Content-Type": "application/json", "X-PREFECT-CORE-VERSION": "1.4.1", **(headers or {})}
        body = {"query": query, "variables": json.dumps(variables)}
        token = token or self.token
        if token:
            sent["Authorization"] = f"Bearer {token}"
        with requests.Session() as session:
            response = session.post(self.url + "/", data=json.dumps(body), headers=sent, timeout=30)
        return response.json()  # type: ignore[no-any-return]


class AgentRun:
    """One `LocalAgent.run()` task; `stop()` sets the stop signal and awaits the end."""

    def __init__(self, agent: LocalAgent) -> None:
        self.agent = agent
        self.task = asyncio.create_task(agent.run(), name="agent")

    async def started(self) -> None:
        await eventually(lambda: self.agent.health.phase == "running" or self.task.done(), 10,
                         "the agent did not reach its poll loop")
        if self.task.done():
            self.task.result()  # its start-up error, if any
            raise AssertionError("the agent stopped during start-up")

    async def stop(self) -> None:
        self.agent.stop.set()
        await asyncio.wait_for(self.task, 15)


class Stage:
    """Server + fake engine + agents; `async with Stage.open(tmp_path) as stage:`."""

    def __init__(self, tmp_path: Path, server: LoopServer, fake: FakeRuntime) -> None:
        self.tmp_path, self.server, self.fake = tmp_path, server, fake
        self.agents: list[AgentRun] = []
        self.lines: list[str] = []  # every agent log line, "LEVEL message"
        self.name = f"agent-{uuid.uuid4().hex[:8]}"

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, tmp_path: Path, fake: FakeRuntime | None = None,
                   auth: str = "none") -> AsyncIterator[Stage]:
        server = LoopServer(tmp_path, auth)
        await server.start()
        stage = cls(tmp_path, server, fake or FakeRuntime(images=(IMAGE,)))
        sink = logger.add(lambda m: stage.lines.append(f"{m.record['level'].name} {m.record['message']}"),
                          level="DEBUG", format="{message}")
        try:
            yield stage
        finally:
            for run in stage.agents:
                if not run.task.done():
                    with contextlib.suppress(Exception):
                        await run.stop()
            logger.remove(sink)
            await server.close()

    # ------------------------------------------------------------------ the agent
    def settings(self, **overrides: Any) -> Settings:
        token = {"api_token": self.server.runner_token} if self.server.runner_token else {}
        return load_settings(**{"api": self.server.url, "name": self.name, **FAST, **token, **overrides})

    async def start_agent(self, **overrides: Any) -> AgentRun:
        run = AgentRun(LocalAgent(self.settings(**overrides), runtime=self.fake))
        self.agents.append(run)
        await run.started()
        return run

    def logged(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    # ------------------------------------------------------------------ the API
    async def do(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(server, *args, **kwargs)` of `tests.support.api`, in a thread while this loop serves it."""
        return await asyncio.to_thread(fn, self.server, *args, **kwargs)

    async def flow(self, image: str = IMAGE, **kwargs: Any) -> str:
        name, _, tag = image.rpartition(":")
        return await self.do(api.register_docker_flow, name=f"flow-{uuid.uuid4().hex[:6]}", image_name=name,
                             image_tag=tag, **kwargs)

    async def flow_run(self, flow_id: str | None = None, **kwargs: Any) -> str:
        return await self.do(api.create_flow_run, flow_id or await self.flow(), **kwargs)

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self.do(api.flow_run, run_id)

    async def state(self, run_id: str) -> str:
        return str((await self.run(run_id))["state"])

    async def logs(self, run_id: str) -> list[dict[str, Any]]:
        return await self.do(api.run_logs, run_id)

    async def wait_state(self, run_id: str, states: str | Iterable[str],
                         timeout: float = 10.0) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else set(states)
        last: dict[str, Any] = {}

        async def reached() -> dict[str, Any] | None:
            nonlocal last
            last = await self.run(run_id)
            return last if last["state"] in wanted else None

        return await eventually(reached, timeout, lambda: f"run is {last.get('state')!r}, not in {wanted}: "
                                f"{last.get('state_message')!r}; agent said:\n" + "\n".join(self.lines[-40:]))

    async def wait_log(self, run_id: str, text: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The run's logs once one contains `text` (the agent batches its run logs, one write a second)."""
        logs: list[dict[str, Any]] = []

        async def found() -> list[dict[str, Any]] | None:
            nonlocal logs
            logs = await self.logs(run_id)
            return logs if any(text in log["message"] for log in logs) else None

        return await eventually(found, timeout,
                                lambda: f"no run log containing {text!r}: {[x['message'] for x in logs]}")

    async def flow_runner_started(self, run_id: str, *, task_runs: bool = False) -> None:
        """What the flow runner in the container reports first: the run Running (version-locked), and with
        `task_runs` each of its task runs Running too, as a runner in the middle of its tasks leaves them."""
        run = await self.run(run_id)
        running = {"type": "Running", "message": "Running flow."}
        answer = await self.do(api.set_flow_run_state, run_id, running, run["version"])
        assert "errors" not in answer, answer
        for task_run in run["task_runs"] if task_runs else []:
            await self.do(api.set_task_run_state, task_run["id"], {"type": "Running"})

    async def launched(self, run_id: str, timeout: float = 10.0) -> str:
        """The id of the run's container once the fake engine runs it."""
        container = await eventually(lambda: (c := self.fake.container(run_id)) and c.running and c, timeout,
                                     lambda: f"no running container for {run_id}; agent said:\n"
                                     + "\n".join(self.lines[-40:]))
        return container.id
