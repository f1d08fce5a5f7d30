"""The agent as a real subprocess (`python -m agent start`), registered in tests/conftest.py.

`agent_factory(server, token=None, **settings)` starts one agent against a `ServerHandle`; settings become
`PREFECT__CLOUD__AGENT__*` env vars (lists/dicts as JSON), so the token never shows in `ps`. Every agent gets
a unique name and the session's test label on its containers; teardown kills the agents and removes their
containers.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.api_surface import agent_base_url
from tests.support.docker_fixtures import RUN_ID, TEST_RUN_LABEL
from tests.support.images import REPO_ROOT

AGENT_LABEL = "io.local-agent.agent"
_COUNTER = itertools.count(1)


class ServerLike(Protocol):
    url: str


class AgentProcess:
    """One `python -m agent start` process; output (stdout + stderr) goes to a file, so it never blocks."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, name: str) -> None:
        self.command, self.env, self.log_path, self.name = command, env, log_path, name
        self._log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 15.0) -> str:
        """Wait until `text` appears in the output; fail with the whole output when it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if text in out:
                return out
            if self.proc.poll() is not None:
                out = self.output()
                if text in out:
                    return out
                raise AssertionError(f"agent exited {self.proc.returncode} before {text!r}:\n{out}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in agent output after {timeout}s:\n{self.output()}")

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"agent still running after {timeout}s:\n{self.output()}") from exc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


def agent_env(
    server: ServerLike | None, token: str | None, home: Path, settings: dict[str, Any]
) -> dict[str, str]:
    """os.environ without any PREFECT__* of the developer's shell, plus this agent's settings; its Docker
    calls go through the API-surface recorder unless the test gives a base_url."""
    if settings.get("base_url") is None:
        settings = {**settings, "base_url": agent_base_url(str(settings.get("engine") or "docker"))}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env.update({"PYTHONUNBUFFERED": "1", "PREFECT__HOME_DIR": str(home)})
    if server is not None:
        env["PREFECT__CLOUD__API"] = server.url
    if token:
        env["PREFECT__CLOUD__AGENT__API_TOKEN"] = token
    for key, value in settings.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
        env[f"PREFECT__CLOUD__AGENT__{key.upper()}"] = text
    return env


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """`factory(server, token=None, *, args=(), **settings) -> AgentProcess` (started, not yet waited on)."""
    started: list[AgentProcess] = []
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)

    def factory(
        server: ServerLike | None, token: str | None = None, *, args: tuple[str, ...] = (), **settings: Any
    ) -> AgentProcess:
        process = start_agent(server, token, tmp_path, home, args=args, **settings)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.kill()
    remove_agent_containers([p.name for p in started])


def start_agent(server: ServerLike | None, token: str | None, workdir: Path, home: Path, *,
                args: tuple[str, ...] = (), **settings: Any) -> AgentProcess:
    """`python -m agent start` with test defaults (DEBUG, a short drain, the test-run label on every flow
    container, a unique name unless given); the caller kills it and `remove_agent_containers`."""
    name = settings.pop("name", None) or f"test-agent-{RUN_ID}-{next(_COUNTER)}"
    labels = {TEST_RUN_LABEL: RUN_ID, **settings.pop("container_labels", {})}
    settings = {"level": "DEBUG", "drain_timeout": 10, **settings, "name": name, "container_labels": labels}
    env = agent_env(server, token, home, settings)
    command = [sys.executable, "-m", "agent", "start", *args]
    return AgentProcess(command, env, workdir / f"{name}.log", name)


def remove_agent_containers(names: list[str]) -> None:
    """Remove the containers these agents launched (found by their agent-name label)."""
    if not names:
        return
    try:
        import docker

        from tests.support.docker_fixtures import remove_containers

        client = docker.from_env(timeout=30)
    except Exception:  # no daemon: nothing can have been launched
        return
    try:
        for name in names:
            remove_containers(client, f"{AGENT_LABEL}={name}")
    finally:
        client.close()
