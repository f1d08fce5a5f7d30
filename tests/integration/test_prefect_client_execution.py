"""Issue 2, done-when 2: `prefect execute flow-run` (real 1.4.1 CloudFlowRunner) runs flows on our server.

Per backend mode, one module fixture registers the example flows with a host storage path, creates one run
each, marks them Submitted (as the DockerAgent would), then runs every `prefect execute flow-run` in parallel
with the container environment of cloud-api.md §2.4 and cancels the sleepy run once it is Running. The
tests then check each run's end state as the real client reads it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import run_logs
from tests.support.prefect_fixtures import (
    FLOWS_DIR,
    PrefectBackend,
    PrefectVenv,
    flow_run_env,
    read_runs,
    register_examples,
    wait_for_flow_run_state,
)

pytestmark = pytest.mark.slow


PARAMETERS = {"name": "pytest", "count": 4, "seconds": 120}
EXECUTE_TIMEOUT = 150

SUBMIT = """
import json, sys
from prefect import Client
from prefect.engine.state import Submitted
client = Client()
for run_id in json.loads(sys.argv[1]):
    info = client.get_flow_run_info(run_id)
    client.set_flow_run_state(run_id, version=info.version,
                              state=Submitted("Submitted for execution", state=info.state))
"""

CANCEL = "import sys; from prefect import Client; print(Client().cancel_flow_run(sys.argv[1]))"


@dataclass
class Executed:
    """What one backend's batch of host executions produced."""

    runs: dict[str, str]  # flow name -> run id
    final: dict[str, dict[str, Any]]  # run id -> read_runs() row
    outputs: dict[str, str]  # flow name -> combined stdout/stderr of `prefect execute flow-run`
    exit_codes: dict[str, int]
    cancel_answer: str
    server_logs: dict[str, list[str]]  # flow name -> messages the runner shipped with write_run_logs


def _execute_all(
    venv: PrefectVenv, backend: PrefectBackend, runs: dict[str, str], logs: Path
) -> dict[str, Any]:
    procs = {}
    for flow, run_id in runs.items():
        env = flow_run_env(
            backend.server, run_id, backend.runner_token, PREFECT__CLOUD__CHECK_CANCELLATION_INTERVAL="1"
        )
        procs[flow] = venv.popen(["prefect", "execute", "flow-run"], env=env, log=logs / f"{flow}.log")
    return procs


def _cancel_when_running(
    venv: PrefectVenv, backend: PrefectBackend, run_id: str, procs: dict[str, subprocess.Popen[str]]
) -> str:
    wait_for_flow_run_state(
        backend.server, run_id, {"Running"}, token=backend.user_token, procs=[procs["sleepy"]], timeout=60
    )
    time.sleep(1)  # let the task itself reach Running, so cancellation interrupts a task mid-flight
    return venv.run(["-c", CANCEL, run_id], env=backend.env(), timeout=60, check=True).stdout.strip()


@pytest.fixture(scope="module")
def executed(
    prefect_venv: PrefectVenv, backend: PrefectBackend, tmp_path_factory: pytest.TempPathFactory
) -> Executed:
    logs = tmp_path_factory.mktemp(f"execute-{backend.mode}")
    summary = register_examples(
        prefect_venv,
        backend.env(),
        "--project",
        "exec",
        "--storage-dir",
        str(FLOWS_DIR),
        "--create-run",
        "--parameters",
        json.dumps(PARAMETERS),
    )
    runs = {name: flow["runs"][0] for name, flow in summary["flows"].items()}
    prefect_venv.run(["-c", SUBMIT, json.dumps(list(runs.values()))], env=backend.env(), check=True)

    procs = _execute_all(prefect_venv, backend, runs, logs)
    try:
        cancel_answer = _cancel_when_running(prefect_venv, backend, runs["sleepy"], procs)
        deadline = time.monotonic() + EXECUTE_TIMEOUT
        exit_codes = {
            flow: proc.wait(timeout=max(1.0, deadline - time.monotonic())) for flow, proc in procs.items()
        }
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    outputs = {flow: (logs / f"{flow}.log").read_text() for flow in runs}
    final = read_runs(prefect_venv, backend.env(), list(runs.values()))
    server_logs = {
        flow: [entry["message"] for entry in run_logs(backend.server, run_id, backend.user_token)]
        for flow, run_id in runs.items()
    }
    return Executed(runs, final, outputs, exit_codes, cancel_answer, server_logs)


def _tasks(row: dict[str, Any]) -> list[tuple[str, int, str]]:
    """Task runs as (task slug without its "-1" suffix, map_index, state), sorted."""
    return sorted((re.sub(r"-\d+$", "", slug), index, state) for slug, index, state in row["task_runs"])


def _final(executed: Executed, flow: str) -> dict[str, Any]:
    row = executed.final[executed.runs[flow]]
    row["output"] = executed.outputs[flow]
    return row


def test_hello_with_parameters_ends_success_with_every_task_success(executed: Executed) -> None:
    row = _final(executed, "hello")
    assert row["state"] == "Success", row
    assert _tasks(row) == [
        ("greet", -1, "Success"),
        ("name", -1, "Success"),
        ("report", -1, "Success"),
        ("shout", -1, "Success"),
    ]
    assert "greeting: HELLO, PYTEST!" in row["output"]  # the run's parameter reached the task
    assert "greeting: HELLO, PYTEST!" in executed.server_logs["hello"]  # and the log reached the server
    assert executed.exit_codes["hello"] == 0


def test_failing_ends_failed_and_downstream_trigger_failed(executed: Executed) -> None:
    row = _final(executed, "failing")
    assert row["state"] == "Failed", row
    assert _tasks(row) == [
        ("explode", -1, "Failed"),
        ("never_runs", -1, "TriggerFailed"),
        ("prepare", -1, "Success"),
    ]
    assert "example failure (input 42)" in row["output"]


def test_mapped_creates_children_on_demand_and_ends_success(executed: Executed) -> None:
    row = _final(executed, "mapped")
    assert row["state"] == "Success", row
    children = [t for t in _tasks(row) if t[0] == "square" and t[1] >= 0]
    assert children == [("square", i, "Success") for i in range(PARAMETERS["count"])]
    assert ("square", -1, "Mapped") in _tasks(row)
    assert "sum of squares: 30" in row["output"]


def test_retry_fails_once_then_succeeds(executed: Executed) -> None:
    row = _final(executed, "retry")
    assert row["state"] == "Success", row
    assert _tasks(row) == [("confirm", -1, "Success"), ("flaky", -1, "Success")]
    assert "attempt 1 fails on purpose" in row["output"]
    assert "succeeded on attempt 2" in row["output"]


def test_cancelled_while_running_ends_cancelled(executed: Executed) -> None:
    row = _final(executed, "sleepy")
    assert executed.cancel_answer in {"True", "Cancelling"}, executed.cancel_answer
    assert row["state"] == "Cancelled", row
    assert ("nap", -1, "Cancelled") in _tasks(row), row  # the server cascades Cancelled to unfinished tasks
