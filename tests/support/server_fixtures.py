"""The real `server/` as a subprocess on a free port (registered in tests/conftest.py).

`start_server(tmp_path, auth=...)` runs `python -m server start ...` and waits until `query { hello }`
answers. Fixtures: `server` (auth none), `token_server` (auth token), `server_factory`
(`factory(**start_server kwargs)`), `inproc_server` and `inproc_factory` (no HTTP); every server a fixture
started is stopped at teardown. Each runs on a fresh database of the test's `db_backend`
(tests/support/database_fixtures.py: SQLite, or also PostgreSQL in the server test modules) unless given a
`database_url`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host != "0.0.0.0" else "", 0))
        return int(sock.getsockname()[1])


class ServerHandle:
    """One server process; `stop()` + `start()` restarts it on the same port and database."""

    def __init__(self, *, workdir: Path, auth: str, host: str, port: int, database_url: str,
                 env: dict[str, str] | None = None) -> None:
        self.workdir, self.auth, self.host, self.port = workdir, auth, host, port
        self.database_url = database_url
        self.url = f"http://127.0.0.1:{port}"
        self.extra_env = dict(env or {})
        self.log_path = workdir / f"server-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    # ------------------------------------------------------------ process
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCAL_AGENT_SERVER_")}
        env.update({"LOCAL_AGENT_SERVER_LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run `python -m server <args> --database-url <this db>` (the server's environment, plus `env`)."""
        return subprocess.run([sys.executable, "-m", "server", *args, "--database-url", self.database_url],
                              env={**self._env(), **(env or {})}, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        command = [sys.executable, "-m", "server", "start", "--host", self.host, "--port", str(self.port),
                   "--database-url", self.database_url, "--auth", self.auth]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, env=self._env(), cwd=REPO_ROOT, stdout=log,
                                         stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if "data" in self.graphql("query { hello }", timeout=2):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer within {START_TIMEOUT_S} s:\n{self.logs()}")

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code, self.proc = self.proc.returncode, None
        self.session.close()
        self.session = requests.Session()
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------ API
    def graphql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 45) -> dict[str, Any]:
        """POST like the Prefect client does (variables as a JSON string); returns the whole JSON body."""
        sent = {"Content-Type": "application/json", "X-PREFECT-CORE-VERSION": "1.4.1", **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        body = {"query": query, "variables": json.dumps(variables)}
        response = self.session.post(self.url + "/", data=json.dumps(body), headers=sent, timeout=timeout)
        return response.json()  # type: ignore[no-any-return]

    def create_token(self, scope: str = "RUNNER", name: str = "test") -> str:
        """What `local-agent-server token create` does (`server.auth.create_token` on this server's database),
        done in this process: a CLI subprocess per token cost a second or two of imports each time. The CLI
        itself is tested in tests/integration/test_server_process.py."""
        from server import db
        from server.auth import create_token

        engine = db.create_db_engine(self.database_url, pool_size=1)
        try:
            return create_token(engine, scope, name)
        finally:
            engine.dispose()

    def tenant_id(self, token: str | None = None) -> str:
        body = self.graphql("query { tenant { id } }", token=token)
        return body["data"]["tenant"][0]["id"]  # type: ignore[no-any-return]


class InProcessServer:
    """The GraphQL service without HTTP (fast unit tests): same parsing, auth, execution, JSON round trip."""

    def __init__(self, tmp_path: Path, auth: str = "none", *, database_url: str | None = None,
                 **settings: Any) -> None:
        from server.app import GraphQLService
        from server.serve import open_services
        from server.settings import ServerSettings

        self.database_url = database_url or f"sqlite:///{tmp_path / 'inproc.db'}"
        self.services = open_services(ServerSettings(database_url=self.database_url, auth=auth,
                                                     zombies_enabled=False, **settings))
        self.service = GraphQLService(self.services)
        self.auth = auth
        self.last_status = 0

    def graphql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
        from server.app import parse_body

        sent = {"x-prefect-core-version": "1.4.1", **{k.lower(): v for k, v in (headers or {}).items()}}
        if token:
            sent["authorization"] = f"Bearer {token}"
        body = parse_body(json.dumps({"query": query, "variables": json.dumps(variables)}).encode())
        self.last_status, payload = self.service.run(body, sent)
        return json.loads(json.dumps(payload))  # type: ignore[no-any-return]

    def create_token(self, scope: str = "RUNNER", name: str = "test") -> str:
        from server.auth import create_token

        return create_token(self.services.engine, scope, name)

    def close(self) -> None:
        self.services.events.close()
        self.service.executor.shutdown(wait=False)
        self.service.poll_executor.shutdown(wait=False)
        self.services.engine.dispose()


def start_server(tmp_path: Path, *, auth: str = "none", host: str = "127.0.0.1", port: int | None = None,
                 env: dict[str, str] | None = None, database_url: str | None = None) -> ServerHandle:
    """Start a server subprocess (its own SQLite file under tmp_path unless database_url is given)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    database_url = database_url or f"sqlite:///{tmp_path / f'server-{port}.db'}"
    handle = ServerHandle(workdir=tmp_path, auth=auth, host=host, port=port, database_url=database_url,
                          env=env)
    handle.start()
    return handle


@pytest.fixture
def server_factory(
    tmp_path: Path, database_url_factory: Callable[..., str]
) -> Iterator[Callable[..., ServerHandle]]:
    """`factory(**start_server kwargs)`: each server on a fresh database unless `database_url` is given
    (pass another server's `database_url` for two processes on one database)."""
    started: list[ServerHandle] = []

    def factory(**kwargs: Any) -> ServerHandle:
        path = kwargs.pop("tmp_path", tmp_path / f"srv{len(started)}")
        kwargs.setdefault("database_url", database_url_factory())
        handle = start_server(path, **kwargs)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()


@pytest.fixture
def inproc_factory(
    tmp_path: Path, database_url_factory: Callable[..., str]
) -> Iterator[Callable[..., InProcessServer]]:
    """`factory(auth="none", **settings)`: in-process servers, each on a fresh database of the test's backend
    unless `database_url` is given; all closed at teardown."""
    opened: list[InProcessServer] = []

    def factory(auth: str = "none", **settings: Any) -> InProcessServer:
        settings.setdefault("database_url", database_url_factory())
        handle = InProcessServer(tmp_path / f"inproc{len(opened)}", auth, **settings)
        opened.append(handle)
        return handle

    yield factory
    for handle in opened:
        handle.close()


@pytest.fixture
def inproc_server(inproc_factory: Callable[..., InProcessServer]) -> InProcessServer:
    """The API in this process (no HTTP, auth none): for fast unit tests of resolvers and rules."""
    return inproc_factory()


@pytest.fixture
def server(server_factory: Callable[..., ServerHandle]) -> ServerHandle:
    """A fresh server with `--auth none` (Prefect Server behaviour)."""
    return server_factory(auth="none")


@pytest.fixture
def token_server(server_factory: Callable[..., ServerHandle]) -> ServerHandle:
    """A fresh server with `--auth token` (Prefect Cloud behaviour); make tokens with `create_token`."""
    return server_factory(auth="token")
