"""The real Prefect 1.4.1 client runs a flow with only a FLOW_RUN token, and can do nothing else with it.

A USER token registers the example flows (`hello`, and `mapped`, whose children the runner creates on
demand) and creates one run of each; the RUNNER token marks them Submitted (as an agent would) and mints one
token per run; `prefect execute flow-run` then gets only that token (PREFECT__CLOUD__API_KEY and
AUTH_TOKEN, as a flow container does). The runs reach Success; afterwards the same token cannot read the
other run, poll the queue or register a flow, and once the run has been finished for the grace period
(short here) the token is rejected.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import api
from tests.support.prefect_fixtures import (
    FLOWS_DIR,
    PrefectVenv,
    flow_run_env,
    prefect_env,
    register_examples,
)
from tests.support.server_fixtures import ServerHandle

pytestmark = pytest.mark.slow

# long enough for the refusals below (the attacker imported Prefect while the runs ran: it only has to send
# its requests), short enough to watch the token die
GRACE_S = 8
EXECUTE_TIMEOUT = 150
PARAMETERS = {"name": "token", "count": 3}

# Run inside the Prefect venv with the FLOW_RUN token as API key: what a hostile flow could try. Started
# before the runs, it imports Prefect and then waits for a line on stdin: the attempts go out after Success.
ATTACKS = """
import json, sys
import prefect
from prefect import Client, Flow
from prefect.storage import Local
other_run = sys.argv[1]
sys.stdin.readline()
client = Client()
outcomes = {}
def attempt(name, action):
    try:
        outcomes[name] = "allowed: " + repr(action())[:200]
    except Exception as exc:
        outcomes[name] = "refused: " + str(exc)[:400]
attempt("read_other_run", lambda: client.get_flow_run_info(other_run))
attempt("poll_queue", lambda: client.graphql(
    'mutation { get_runs_in_queue(input: {tenant_id: "%s"}) { flow_run_ids } }' % client.tenant_id))
attempt("register_flow", lambda: client.register(Flow("evil", storage=Local(add_default_labels=False)),
                                                 project_name="run-tokens", build=False))
print(json.dumps(outcomes))
"""


@dataclass
class Setup:
    server: ServerHandle
    user: str
    runner: str
    runs: dict[str, str]  # flow name -> run id
    tokens: dict[str, str]  # flow name -> FLOW_RUN token


@pytest.fixture
def setup(server_factory: Callable[..., ServerHandle], prefect_venv: PrefectVenv) -> Setup:
    server = server_factory(auth="token", env={"LOCAL_AGENT_SERVER_FLOW_RUN_TOKEN_GRACE_S": str(GRACE_S),
                                               "LOCAL_AGENT_SERVER_TOKEN_CACHE_TTL_S": "1"})
    user, runner = server.create_token("USER", "user"), server.create_token("RUNNER", "agent")
    summary = register_examples(
        prefect_venv, prefect_env(server, user), "--project", "run-tokens", "--flow", "hello", "--flow",
        "mapped", "--storage-dir", str(FLOWS_DIR), "--create-run", "--parameters", json.dumps(PARAMETERS))
    runs = {name: flow["runs"][0] for name, flow in summary["flows"].items()}
    for run_id in runs.values():
        version = api.flow_run(server, run_id, runner)["version"]
        body = api.set_flow_run_state(server, run_id, {"type": "Submitted", "message": "agent"}, version,
                                      token=runner)
        assert "errors" not in body, body
    tokens = {name: api.create_flow_run_token(server, run_id, runner) for name, run_id in runs.items()}
    return Setup(server, user, runner, runs, tokens)


def execute(venv: PrefectVenv, setup: Setup, logs: Path) -> dict[str, tuple[int, str]]:
    """`prefect execute flow-run` per run, in parallel, each with only its own FLOW_RUN token."""
    procs = {name: venv.popen(["prefect", "execute", "flow-run"], log=logs / f"{name}.log",
                              env=flow_run_env(setup.server, run_id, setup.tokens[name]))
             for name, run_id in setup.runs.items()}
    deadline = time.monotonic() + EXECUTE_TIMEOUT
    try:
        codes = {name: proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                 for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return {name: (code, (logs / f"{name}.log").read_text()) for name, code in codes.items()}


@contextmanager
def attacker(venv: PrefectVenv, setup: Setup, token: str, other: str) -> Iterator[subprocess.Popen[str]]:
    """`ATTACKS` started now with `token`, waiting on stdin (Prefect imported meanwhile); killed after."""
    proc = venv.start_waiting(ATTACKS, other, env=prefect_env(setup.server, token))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def attack(proc: subprocess.Popen[str]) -> dict[str, str]:
    """Let the waiting attacker go; each attempt's outcome."""
    out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0, f"the attacks exited {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def check_runs(setup: Setup, results: dict[str, tuple[int, str]]) -> None:
    """Both runs reached Success with only their run tokens, the mapped children and the log included."""
    for name, (code, output) in results.items():
        assert code == 0, output
        run = api.flow_run(setup.server, setup.runs[name], setup.user)
        assert run["state"] == "Success", (run["state"], output)
        assert {t["state"] for t in run["task_runs"]} <= {"Success", "Mapped"}, output
    mapped = api.flow_run(setup.server, setup.runs["mapped"], setup.user)["task_runs"]
    assert sorted(t["map_index"] for t in mapped if t["map_index"] >= 0) == [0, 1, 2]
    messages = [entry["message"] for entry in api.run_logs(setup.server, setup.runs["hello"], setup.user)]
    assert any("greeting: HELLO, TOKEN!" in m for m in messages), messages


def first_error(body: dict[str, Any]) -> tuple[str, str]:
    error = body["errors"][0]
    return error["extensions"]["code"], error["message"]


def test_a_flow_runs_with_only_its_run_token_which_opens_nothing_else(
    setup: Setup, prefect_venv: PrefectVenv, tmp_path: Path
) -> None:
    token, other = setup.tokens["hello"], setup.runs["mapped"]
    with attacker(prefect_venv, setup, token, other) as attacks:
        results = execute(prefect_venv, setup, tmp_path)
        check_runs(setup, results)
        outcomes = attack(attacks)
    assert all(v.startswith("refused: ") and "FORBIDDEN" in v for v in outcomes.values()), outcomes
    assert "get_runs_in_queue is not allowed" in outcomes["poll_queue"]
    assert "create_flow_from_compressed_string is not allowed" in outcomes["register_flow"]
    assert f"flow run {other} is outside it" in outcomes["read_other_run"]

    raw = setup.server.graphql("query($id: uuid!) { flow_run_by_pk(id: $id) { id } }", {"id": other}, token)
    assert raw["data"] == {"flow_run_by_pk": None} and first_error(raw)[0] == "FORBIDDEN"
    assert api.call(setup.server, "query { flow_run { id } }", token=token)["flow_run"] == [
        {"id": setup.runs["hello"]}]

    deadline = time.monotonic() + GRACE_S + 30
    answer = setup.server.graphql("query { auth_info { tenant_id } }", token=token)
    while "errors" not in answer and time.monotonic() < deadline:
        time.sleep(0.5)
        answer = setup.server.graphql("query { auth_info { tenant_id } }", token=token)
    assert first_error(answer)[0] == "UNAUTHENTICATED", answer
    assert api.call(setup.server, "query { auth_info { tenant_id } }", token=setup.runner)["auth_info"]
