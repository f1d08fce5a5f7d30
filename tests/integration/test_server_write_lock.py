"""A flow at the task limit is registered, run and cancelled while a second client keeps writing.

Real server process over HTTP. The long writes (tasks, pre-created task runs, the cancel cascade) go in
bounded batches, so the second client's heartbeats and claims never fail ("database is locked") - this
asserts outcomes only; the latencies are printed (timings belong to `benchmarks/write_lock.py`).
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.support import api
from tests.support.prefect_fixtures import PrefectVenv, prefect_env
from tests.support.server_fixtures import ServerHandle

TASK_LIMIT = 10_000  # the default of LOCAL_AGENT_SERVER_MAX_TASKS_PER_FLOW
CLAIMS = 400
CREATE_COMPRESSED = ("mutation($input: create_flow_from_compressed_string_input!) "
                     "{ create_flow_from_compressed_string(input: $input) { id } }")


def compressed_flow(tasks: int, name: str) -> str:
    """What `prefect.utilities.graphql.compress` sends: base64(gzip(json))."""
    flow = {"__version__": "1.4.1", "name": name, "type": "prefect.core.flow.Flow", "parameters": [],
            "storage": api.docker_storage(name, "img", "1"), "run_config": None,
            "tasks": [{"name": f"t{i}", "slug": f"t{i}-1", "type": "prefect.core.task.Task",
                       "__version__": "1.4.1"} for i in range(tasks)],
            "edges": [{"upstream_task": {"slug": f"t{i}-1"}, "downstream_task": {"slug": f"t{i + 1}-1"}}
                      for i in range(0, tasks - 1, 2)]}
    return base64.b64encode(gzip.compress(json.dumps(flow).encode())).decode()


class SecondClient(threading.Thread):
    """Heartbeats one run and claims (Submitted, version 1) queued ones, one write after another."""

    def __init__(self, url: str, heartbeat_run: str, claimable: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.heartbeat_run, self.claimable = url, heartbeat_run, list(claimable)
        self.session = requests.Session()
        self.stop_event = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def write(self, query: str, variables: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            response = self.session.post(self.url + "/", json={"query": query, "variables": variables},
                                         timeout=120)
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            self.failures.append(repr(exc))
            return
        self.latencies.append(time.perf_counter() - started)
        if response.status_code != 200 or body.get("errors"):
            self.failures.append(f"HTTP {response.status_code}: {body}")

    def run(self) -> None:
        api.heartbeat_and_claim(self.write, self.heartbeat_run, self.claimable, self.stop_event)


def while_writing(server: ServerHandle, work: Callable[[], Any]) -> tuple[Any, SecondClient]:
    small = api.register_docker_flow(server, name="small", image_name="img", image_tag="1")
    heartbeat_run = api.create_flow_run(server, small)
    claimable = [api.create_flow_run(server, small) for _ in range(CLAIMS)]
    client = SecondClient(server.url, heartbeat_run, claimable)
    client.start()
    try:
        result = work()
    finally:
        client.stop_event.set()
        client.join(timeout=150)
    return result, client


def test_a_flow_at_the_task_limit_never_blocks_another_clients_writes(server: ServerHandle) -> None:
    project = api.ensure_project(server, "big")

    def register_run_and_cancel() -> tuple[str, str]:
        body = server.graphql(CREATE_COMPRESSED, {"input": {
            "project_id": project, "serialized_flow": compressed_flow(TASK_LIMIT, "at-limit")}}, timeout=300)
        assert "errors" not in body, body
        run_id = api.create_flow_run(server, body["data"]["create_flow_from_compressed_string"]["id"])
        return run_id, api.cancel_flow_run(server, run_id)

    (run_id, cancelled), client = while_writing(server, register_run_and_cancel)
    print(f"\nsecond client: {len(client.latencies)} writes, max latency {max(client.latencies):.3f} s")
    assert cancelled == "Cancelled"
    states = [t["state"] for t in api.flow_run(server, run_id)["task_runs"]]
    assert len(states) == TASK_LIMIT and set(states) == {"Cancelled"}
    assert client.failures == []
    assert len(client.latencies) > 2 * 10  # it kept writing throughout, not just before or after
    assert "database is locked" not in server.logs()


def test_a_flow_of_200000_tasks_is_refused_with_the_limit_error(server: ServerHandle) -> None:
    project = api.ensure_project(server, "huge")
    body = server.graphql(CREATE_COMPRESSED, {"input": {
        "project_id": project, "serialized_flow": compressed_flow(200_000, "huge")}}, timeout=300)
    error = body["errors"][0]
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert error["message"] == ("Number of tasks in the flow (200000) exceeds the limit of 10000 "
                                "(LOCAL_AGENT_SERVER_MAX_TASKS_PER_FLOW).")
    assert api.call(server, "query { flow { id } }")["flow"] == []


REGISTER = """
import json, sys
from prefect import Client, Flow, Task
from prefect.storage import Docker
n = int(sys.argv[1])
flow = Flow("at-limit", storage=Docker(image_name="img", image_tag="1"))
for i in range(n):
    flow.add_task(Task(name=f"t{i}"))
Client().create_project(project_name="limits")
print(json.dumps({"flow_id": flow.register(project_name="limits", build=False, add_default_labels=False)}))
"""


@pytest.mark.slow
def test_the_prefect_client_registers_a_flow_at_the_task_limit(
    prefect_venv: PrefectVenv, server: ServerHandle
) -> None:
    """Prefect 1.4.1 sends the flow first, then its tasks 500 per `register_tasks` call."""
    env = prefect_env(server)
    proc = prefect_venv.run(["-c", REGISTER, str(TASK_LIMIT)], env=env, timeout=600, check=True)
    flow_id = json.loads(proc.stdout.strip().splitlines()[-1])["flow_id"]
    run_id = api.create_flow_run(server, flow_id)
    assert len(api.flow_run(server, run_id)["task_runs"]) == TASK_LIMIT
