"""The server process: HTTP surface, CLI, shutdown, long polls and zombie runs, over real HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.support import api
from tests.support.server_fixtures import REPO_ROOT, ServerHandle

HELLO = json.dumps({"query": "query { hello }", "variables": "null"})


@pytest.mark.parametrize("path", ["", "/", "/graphql", "/graphql/"])
def test_graphql_paths(server: ServerHandle, path: str) -> None:
    response = requests.post(server.url + path, data=HELLO, timeout=5)
    assert response.status_code == 200 and response.json() == {"data": {"hello": "👋"}}


def test_http_error_statuses(server: ServerHandle) -> None:
    checks = [
        (requests.get(server.url, timeout=5), 405),
        (requests.post(server.url, data="{not json", timeout=5), 400),
        (requests.post(server.url, data=json.dumps({"query": "query { nope }"}), timeout=5), 400),
        (requests.post(server.url, data=b"x" * (21 * 1024 * 1024), timeout=30), 413),
    ]
    for response, status in checks:
        assert response.status_code == status
        assert response.json()["errors"][0]["message"]
    variables_object = {
        "query": "query($n: String) { project(where: {name: {_eq: $n}}) { id } }",
        "variables": {"n": "x"},
    }
    assert requests.post(server.url, json=variables_object, timeout=5).json() == {"data": {"project": []}}
    assert "Traceback" not in server.logs()


def test_a_one_megabyte_state_is_refused_cleanly(server: ServerHandle) -> None:
    flow_id = api.register_docker_flow(server, name="big", image_name="i", image_tag="1")
    run_id = api.create_flow_run(server, flow_id)
    body = api.set_flow_run_state(server, run_id, {"type": "Running", "message": "x" * 1_100_000})
    assert body["errors"][0]["message"] == "State payload is too large."
    assert api.flow_run(server, run_id)["state"] == "Scheduled"


def test_sigterm_ends_a_long_poll_and_exits_zero(server: ServerHandle) -> None:
    out: dict[str, Any] = {}

    def poll() -> None:
        try:
            out["ids"] = api.queue(server, api.tenant_id(server), [], wait_seconds=25)
        except Exception as exc:  # the assertion below reports it
            out["error"] = exc

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert server.stop() == 0
    poller.join(5)
    assert time.monotonic() - started < 5
    assert out.get("ids") == [], out
    assert "stopped" in server.logs()


def test_sigint_exits_zero(server: ServerHandle) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(10) == 0


def test_long_poll_over_http(server_factory: Callable[..., ServerHandle]) -> None:
    # Two ordinary worker threads and six waiting polls: polls must not take the ordinary threads.
    server = server_factory(auth="none", env={"LOCAL_AGENT_SERVER_WORKER_THREADS": "2"})
    flow_id = api.register_docker_flow(server, name="lp", image_name="i", image_tag="1")
    tenant = api.tenant_id(server)
    out: dict[str, Any] = {}

    def poll() -> None:
        out["ids"] = api.queue(server, tenant, [], wait_seconds=10)
        out["done"] = time.monotonic()

    pollers = [threading.Thread(target=poll) for _ in range(6)]
    for poller in pollers:
        poller.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert requests.post(server.url, data=HELLO, timeout=5).ok  # long polls do not block other requests
    assert time.monotonic() - started < 0.5
    run_id = api.create_flow_run(server, flow_id, labels=[])
    created = time.monotonic()
    for poller in pollers:
        poller.join(10)
    assert out["ids"] == [run_id] and out["done"] - created < 0.3
    started = time.monotonic()
    assert api.queue(server, tenant, ["other"], wait_seconds=0.6) == []
    assert 0.55 < time.monotonic() - started < 1.5


def test_listens_on_all_interfaces(server_factory: Callable[..., ServerHandle]) -> None:
    handle = server_factory(auth="none", host="0.0.0.0")
    assert handle.graphql("query { hello }") == {"data": {"hello": "👋"}}
    assert "http://0.0.0.0:" in handle.logs()


def test_cli_token_and_flow_run_on_a_running_server(token_server: ServerHandle) -> None:
    proc = token_server.cli("token", "create", "--scope", "USER", "--name", "cli")
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    token = proc.stdout.strip()
    assert api.call(token_server, "query { auth_info { api_token_scope } }", token=token) == {
        "auth_info": {"api_token_scope": "USER"}
    }
    assert token not in token_server.logs()
    flow_id = api.register_docker_flow(
        token_server, name="cli-flow", image_name="i", image_tag="1", token=token
    )
    proc = token_server.cli(
        "flow-run", "create", "--flow-id", flow_id, "--parameters", '{"a": 1}', "--labels", "l1", "l2"
    )
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip()
    run = api.flow_run(token_server, run_id, token)
    assert (run["parameters"], run["labels"], run["state"]) == ({"a": 1}, ["l1", "l2"], "Scheduled")
    assert proc.stderr.strip().endswith(f"/ui/#/runs/{run_id}"), proc.stderr  # where to look at it
    by_name = token_server.cli("flow-run", "create", "--flow", "cli-flow", env={
        "LOCAL_AGENT_SERVER_PUBLIC_URL": "https://agents.example.com/prefect"})
    assert by_name.returncode == 0, by_name.stderr
    assert api.flow_run(token_server, by_name.stdout.strip(), token)["flow_id"] == flow_id
    assert by_name.stderr.strip() == f"https://agents.example.com/prefect/ui/#/runs/{by_name.stdout.strip()}"
    unknown = token_server.cli("flow-run", "create", "--flow", "no-such-flow")
    assert unknown.returncode == 1 and "no flow named 'no-such-flow'" in unknown.stderr
    api.register_docker_flow(token_server, name="cli-flow", image_name="i", image_tag="1", token=token,
                             project_id=api.ensure_project(token_server, "elsewhere", token=token))
    twice = token_server.cli("flow-run", "create", "--flow", "cli-flow")
    assert twice.returncode == 1 and "2 flows are named 'cli-flow'" in twice.stderr
    assert flow_id in twice.stderr
    missing = token_server.cli("flow-run", "create", "--flow-id", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert token_server.cli("token", "create", "--scope", "ROOT", "--name", "x").returncode == 2


def test_cli_help_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and "flow-run" in proc.stdout


def test_zombie_runs_are_rescheduled_then_failed(server_factory: Callable[..., ServerHandle]) -> None:
    handle = server_factory(
        auth="none",
        env={
            "LOCAL_AGENT_SERVER_ZOMBIE_TIMEOUT_S": "0.5",
            "LOCAL_AGENT_SERVER_ZOMBIE_CHECK_INTERVAL_S": "0.2",
            "LOCAL_AGENT_SERVER_ZOMBIE_MAX_RESCHEDULES": "1",
        },
    )
    flow_id = api.register_docker_flow(handle, name="z", image_name="i", image_tag="1")
    run_id = api.create_flow_run(handle, flow_id)
    assert "errors" not in api.set_flow_run_state(handle, run_id, {"type": "Submitted"}, 1)
    run = api.wait_for_state(handle, run_id, "Scheduled", timeout=10, interval=0.05)
    assert "Lazarus" in run["serialized_state"]["message"]
    assert "errors" not in api.set_flow_run_state(handle, run_id, {"type": "Running"}, run["version"])
    run = api.wait_for_state(handle, run_id, "Failed", timeout=10, interval=0.05)
    assert "1 times" in run["serialized_state"]["message"]
    assert [log["level"] for log in api.run_logs(handle, run_id)] == ["INFO", "ERROR"]
