"""The agent survives an API outage: polls fail, it backs off, and it picks up work once the API is back."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.server_fixtures import ServerHandle


def test_api_outage_is_retried_with_backoff_and_work_resumes(
    server: ServerHandle,
    agent_factory: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    stand_in_image: str,
) -> None:
    name, _, tag = stand_in_image.rpartition(":")
    flow_id = api.register_docker_flow(server, name="outage", image_name=name, image_tag=tag)
    agent = agent_factory(server, long_poll_seconds=2)
    agent.wait_for_output("Waiting for flow runs...")
    server.stop()
    agent.wait_for_output("poll failed (2 in a row)", timeout=20)
    assert agent.returncode is None
    server.start()  # same port, same database
    run_id = api.create_flow_run(server, flow_id)
    deadline = time.monotonic() + 30
    while not any("Submitted for execution" in log["message"] for log in api.run_logs(server, run_id)):
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.2)
    assert agent.returncode is None
    assert "Traceback" not in agent.output()


@contextlib.contextmanager
def black_hole_registry() -> Iterator[str]:
    """A port that accepts TCP connections and never answers: pulls from it hang (launch stays in flight)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("second_signal", [False, True], ids=["drain-timeout", "second-signal"])
def test_shutdown_drains_then_abandons_a_stuck_launch(
    server: ServerHandle,
    agent_factory: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    second_signal: bool,
) -> None:
    with black_hole_registry() as registry:
        flow_id = api.register_docker_flow(
            server, name="stuck", image_name="hangs", image_tag="v1", registry_url=registry
        )
        run_id = api.create_flow_run(server, flow_id)
        agent = agent_factory(server, drain_timeout=2)
        agent.wait_for_output(f"pulling image {registry}/hangs:v1")
        agent.proc.send_signal(signal.SIGTERM)
        agent.wait_for_output("SIGTERM received")
        started = time.monotonic()
        if second_signal:
            agent.proc.send_signal(signal.SIGTERM)
            assert agent.wait(5) == 1
            assert "second SIGTERM: abandoning 1 launch(es) in flight" in agent.output()
        else:
            assert agent.wait(10) == 0
            assert "drain timeout: abandoned 1 launch(es) in flight" in agent.output()
            assert 1.5 <= time.monotonic() - started < 8
    assert api.flow_run(server, run_id)["state"] == "Submitted"  # claimed before the pull; never failed
