"""Agent start-up against the real server subprocess and the real Docker daemon: banner and lines in order,
token handling (never logged, RUNNER scope only, required by a token backend), Docker unreachable, SIGTERM.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import docker

from agent.banner import BANNER
from tests.support.agent_fixtures import AgentProcess
from tests.support.server_fixtures import ServerHandle

STARTUP_LINES = (
    "Starting LocalAgent",
    "Agent documentation can be found at",
    "Agent successfully connected to Prefect Cloud",
    "Waiting for flow runs...",
)
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - agent - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - "
)

AgentFactory = Callable[..., AgentProcess]


def assert_in_order(text: str, parts: tuple[str, ...]) -> None:
    position = -1
    for part in parts:
        found = text.find(part, position + 1)
        assert found > position, f"{part!r} missing or out of order in:\n{text}"
        position = found


def test_banner_then_startup_lines_in_order_and_clean_sigterm(
    server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient
) -> None:
    agent = agent_factory(server, level="INFO")
    out = agent.wait_for_output("Waiting for flow runs...")
    assert out.lstrip("\n").startswith(BANNER.strip("\n"))
    assert_in_order(out, STARTUP_LINES)
    assert f"Agent successfully connected to Prefect Cloud at {server.url}" in out
    log_lines = [line for line in out.splitlines() if " - agent - " in line]
    assert log_lines and all(LOG_LINE.match(line) for line in log_lines), log_lines
    assert agent.stop(signal.SIGTERM) == 0
    assert "Agent stopped" in agent.output()


def test_token_mode_never_logs_the_token_even_at_debug(
    token_server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient
) -> None:
    token = token_server.create_token("RUNNER", "agent")
    agent = agent_factory(token_server, token=token, level="DEBUG")
    agent.wait_for_output("Waiting for flow runs...")
    agent.wait_for_output("long polling")
    assert agent.stop(signal.SIGINT) == 0
    out = agent.output()
    assert " - agent - DEBUG - " in out  # DEBUG really was on
    assert token not in out


def test_token_of_the_wrong_scope_is_refused(
    token_server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient
) -> None:
    token = token_server.create_token("USER", "person")
    agent = agent_factory(token_server, token=token)
    assert agent.wait(20) == 1
    out = agent.output()
    assert "scope USER" in out and "RUNNER" in out
    assert "Waiting for flow runs..." not in out
    assert token not in out


def test_no_token_against_a_token_backend_says_what_to_do(
    token_server: ServerHandle, agent_factory: AgentFactory, docker_client: docker.DockerClient
) -> None:
    agent = agent_factory(token_server)
    assert agent.wait(20) == 1
    assert (
        "this backend requires a token; pass -t/--token or set PREFECT__CLOUD__AGENT__API_TOKEN"
        in agent.output()
    )


def test_docker_unreachable_is_one_clear_line_and_exit_3(
    server: ServerHandle, agent_factory: AgentFactory
) -> None:
    agent = agent_factory(server, args=("--base-url", "unix:///nonexistent.sock"))
    assert agent.wait(20) == 3
    errors = [line for line in agent.output().splitlines() if " - ERROR - " in line]
    assert len(errors) == 1, agent.output()
    assert "unix:///nonexistent.sock" in errors[0]
    assert "Traceback" not in agent.output()


def test_import_is_cheap_and_the_python_api_starts_the_same_agent(
    server: ServerHandle, tmp_path: Any, docker_client: docker.DockerClient
) -> None:
    """`from agent import LocalAgent` loads nothing heavy; `LocalAgent(**kw).start()` runs until SIGTERM."""
    code = (
        "import sys; import agent; assert 'agent.agent' not in sys.modules and 'docker' not in sys.modules;"
        "from agent import LocalAgent; "
        f"LocalAgent(api={server.url!r}, name='py-api', drain_timeout=5).start()"
    )
    env = {"PATH": "/usr/bin:/bin", "PREFECT__HOME_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Waiting for flow runs..." in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert_in_order(out, STARTUP_LINES)
    assert proc.returncode == 0, out
