"""The health server: liveness, readiness with reasons, Prometheus metrics, and `local-agent check`."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.cli import main
from agent.ops.health import HealthServer, HealthState, check, parse_address
from agent.ops.metrics import AgentMetrics
from agent.runtime.docker_types import DockerUnavailable
from agent.runtime.status import EngineStatus
from agent.settings import Settings


@pytest.mark.parametrize(("address", "expected"), [
    ("0.0.0.0:8080", ("0.0.0.0", 8080)), (":9000", ("0.0.0.0", 9000)), ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::1]:8080", ("::1", 8080)), ("agent:80", ("agent", 80)),
])
def test_addresses(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["8080", "host:", "host:99999", "a b:1"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(address)


def test_settings_refuse_a_bad_health_address() -> None:
    assert main(["config", "--health-address", "8080"]) == 2


def test_readiness_needs_running_docker_and_a_recent_poll() -> None:
    state = HealthState(poll_window=60, liveness_window=120)
    assert state.readiness()[0] is False and state.liveness()[0] is True  # starting: alive, not ready
    state.running()
    assert state.readiness()[0] is True
    state.docker.went_down(DockerUnavailable("unix:///x.sock", "No such file"))
    ok, body = state.readiness()
    assert not ok and "Docker daemon unreachable" in body["reasons"][0] and body["docker"] == "unreachable"
    state.docker.came_back()
    state.last_poll_ok = time.monotonic() - 61
    state.poll_failed(RuntimeError("HTTP 502"))
    ok, body = state.readiness()
    assert not ok and "no successful poll" in body["reasons"][0] and "HTTP 502" in body["reasons"][0]
    state.last_tick = time.monotonic() - 121
    assert state.liveness()[0] is False
    state.phase = "stopping"
    assert state.liveness()[0] is True and state.readiness()[1]["reasons"] == ["agent is stopping"]


def test_windows_follow_the_poll_settings() -> None:
    state = HealthState.for_settings(Settings(long_poll_seconds=30, request_timeout=15), EngineStatus())
    assert state.poll_window == 135 and state.liveness_window == 165
    assert HealthState.for_settings(Settings(), EngineStatus()).poll_window == 75


async def test_endpoints_and_check_against_the_real_server() -> None:
    metrics = AgentMetrics()
    metrics.runs_claimed.inc(3)
    state = HealthState(poll_window=60, liveness_window=120)
    server = HealthServer(state, "127.0.0.1:0", metrics)
    await server.start()
    try:
        settings = Settings(health_address=f"127.0.0.1:{server.port}")
        code, message = await asyncio.to_thread(check, settings, True)
        assert code == 1 and "503" in message and "agent is starting" in message
        state.running()
        assert (await asyncio.to_thread(check, settings, True))[0] == 0
        code, message = await asyncio.to_thread(check, settings)
        assert code == 0 and message.endswith("Docker live-restore: unknown")
        state.live_restore = False
        code, message = await asyncio.to_thread(check, settings)
        assert code == 0 and "Docker live-restore: off (a daemon restart stops running flows" in message
        state.last_tick -= 1000
        code, message = await asyncio.to_thread(check, settings)
        assert code == 1 and "stalled" in message
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["local_agent_runs_claimed"].samples[0].value == 3
        assert "local_agent_image_pull_seconds" in families
    finally:
        await server.stop()
    assert (await asyncio.to_thread(check, settings))[0] == 1  # nobody listens any more


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_check_without_a_usable_address() -> None:
    code, message = check(Settings())
    assert code == 1 and "disabled" in message and "HEALTH_ADDRESS" in message
    assert check(Settings(health_address=":0"))[0] == 1
    assert main(["check"]) == 1


def test_check_never_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--health-address", "8080"]) == 1  # invalid configuration
    assert "invalid configuration" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["check", "--no-such-flag"])
    assert exc.value.code == 1
    with pytest.raises(SystemExit) as exc:
        main(["config", "--no-such-flag"])
    assert exc.value.code == 2  # other subcommands keep argparse's usage error code
    assert main(["config", "--health-address", "8080"]) == 2
