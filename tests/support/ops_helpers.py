"""Helpers for the operations tests (tests/*/test_ops_*.py): the agent's health server, metrics, waiting."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
from prometheus_client.parser import text_string_to_metric_families

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.server_fixtures import ServerHandle

T = TypeVar("T")
HEALTH_LINE = re.compile(r"Health server listening on http://([\d.]+):(\d+)")
RUN_LABEL = "io.prefect.flow-run-id"


def health_url(agent: AgentProcess) -> str:
    out = agent.wait_for_output("Health server listening on", timeout=20)
    match = HEALTH_LINE.search(out)
    assert match, out
    return f"http://{match[1]}:{match[2]}"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = get(url)
    return status, json.loads(body)


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, parsed by prometheus-client's own parser: {(name, labels): value}."""
    status, text = get(base + "/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, /,
           **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def eventually(check: Callable[[], T | None], timeout: float, message: Callable[[], str] | str = "",
               interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; AssertionError with `message` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message or "condition not met")
        time.sleep(interval)


def containers_of(client: docker.DockerClient, run_id: str) -> list[Any]:
    """The run's containers, inspected; retried when one is removed between docker-py's list and inspect."""
    for _ in range(5):
        try:
            return client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
        except docker.errors.NotFound:
            continue
    return client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})


has_log = api.has_log


def stand_in_flow(server: ServerHandle, image: str, name: str | None = None, **kwargs: Any) -> str:
    """A flow with Docker storage naming `image` (the stand-in image runs without Prefect)."""
    image_name, _, tag = image.rpartition(":")
    return api.register_docker_flow(server, name=name or f"flow-{uuid.uuid4().hex[:6]}",
                                    image_name=image_name, image_tag=tag, **kwargs)


def stand_in_run(server: ServerHandle, flow_id: str, **env: str) -> str:
    return api.create_flow_run(server, flow_id, run_config={"type": "DockerRun", "env": env})


def state(type_: str, message: str) -> dict[str, Any]:
    """A state as the Prefect client sends it (what a flow runner would report)."""
    return {"type": type_, "message": message, "context": {}, "cached_inputs": {}, "__version__": "1.4.1",
            "_result": {"type": "NoResultType", "__version__": "1.4.1"}}
