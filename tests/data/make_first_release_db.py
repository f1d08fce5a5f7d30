"""Make `first-release.db` (+ `first-release.json`) with the first release's own server (commit 94212ca).

Run from the repository root with the project's venv: `.venv/bin/python tests/data/make_first_release_db.py`.
The release's code is taken from git (`git archive`), its server started from that directory on a free port
with `--auth token`, and everything is written through its own CLI and GraphQL API: two tokens, a project, a
flow, flow runs in different states (one with a task run), run logs. What the release answered is kept in the
JSON manifest, which the migration tests compare the current server's answers with. The tokens in it are for
this throwaway database only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

RELEASE = "94212ca"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOGS_QUERY = """query($id: uuid) { log(where: {flow_run_id: {_eq: $id}}, order_by: {timestamp: asc}) {
  id task_run_id timestamp name level message info } }"""


class Release:
    """The release's server in its own directory: CLI calls and GraphQL over HTTP."""

    def __init__(self, code: Path, database: Path) -> None:
        self.code, self.url_db = code, f"sqlite:///{database}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOCAL_AGENT_SERVER_")}
        self.env.update({"LOCAL_AGENT_SERVER_ZOMBIES_ENABLED": "false", "PYTHONPATH": str(code)})
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "server", *args, "--database-url", self.url_db],
                              cwd=self.code, env=self.env, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "start", "--port", str(self.port), "--auth", "token",
             "--database-url", self.url_db], cwd=self.code, env=self.env)
        for _ in range(300):
            try:
                self.call("query { hello }")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the release's server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def call(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None) -> Any:
        body = json.dumps({"query": query, "variables": json.dumps(variables)}).encode()
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/", body, headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # GraphQL errors come with a 4xx status
            answer = json.loads(exc.read())
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serialized_flow() -> dict[str, Any]:
    path = "/opt/prefect/flows/first.prefect"
    storage: dict[str, Any] = {
        "type": "Docker", "__version__": "1.4.1", "registry_url": None, "image_name": "local/flow",
        "image_tag": "1", "path": path, "stored_as_script": False, "flows": {"first": path},
        "prefect_version": "1.4.1", "secrets": []}
    tasks: list[dict[str, Any]] = [
        {"name": name, "slug": f"{name}-1", "type": "prefect.tasks.core.function.FunctionTask",
         "max_retries": 0, "retry_delay": None, "cache_key": None, "tags": [], "__version__": "1.4.1"}
        for name in ("extract", "load")]
    return {"__version__": "1.4.1", "name": "first", "type": "prefect.core.flow.Flow", "schedule": None,
            "parameters": [], "reference_tasks": [], "environment": None, "storage": storage,
            "run_config": {"type": "DockerRun", "labels": ["first"]}, "tasks": tasks, "edges": []}


def populate(release: Release, user: str, runner: str) -> dict[str, Any]:
    """Flow, runs in five states, a task run, logs; returns the manifest of what the release answered."""
    tenant = release.call("query { auth_info { tenant_id } }", token=user)["auth_info"]["tenant_id"]
    project = release.call("mutation($i: create_project_input!) { create_project(input: $i) { id } }",
                           {"i": {"name": "first", "tenant_id": tenant}}, user)["create_project"]["id"]
    flow = release.call("mutation($i: create_flow_input!) { create_flow(input: $i) { id } }",
                        {"i": {"project_id": project, "serialized_flow": _serialized_flow(),
                               "set_schedule_active": False}}, user)["create_flow"]["id"]
    runs: dict[str, str] = {}
    for name in ("scheduled", "submitted", "running", "success", "cancelled"):
        runs[name] = release.call(
            "mutation($i: create_flow_run_input!) { create_flow_run(input: $i) { id } }",
            {"i": {"flow_id": flow, "flow_run_name": name, "idempotency_key": f"key-{name}",
                   "labels": ["first"], "parameters": {"n": len(runs)}}}, user)["create_flow_run"]["id"]
    for name, states in {"submitted": ["Submitted"], "running": ["Submitted", "Running"],
                         "success": ["Submitted", "Running", "Success"]}.items():
        for state in states:
            release.call("mutation($i: set_flow_run_states_input!) { set_flow_run_states(input: $i) "
                         "{ states { status } } }", {"i": {"states": [{"flow_run_id": runs[name], "state": {
                             "type": state, "message": f"{state} by the first release"}}]}}, runner)
    release.call("mutation($i: cancel_flow_run_input!) { cancel_flow_run(input: $i) { state } }",
                 {"i": {"flow_run_id": runs["cancelled"]}}, user)
    task = release.call("query($f: uuid!) { flow_by_pk(id: $f) { tasks { id slug } } }",
                        {"f": flow}, runner)["flow_by_pk"]["tasks"][0]["id"]
    task_run = release.call(
        "mutation($i: get_or_create_task_run_info_input!) { get_or_create_task_run_info(input: $i) { id } }",
        {"i": {"flow_run_id": runs["running"], "task_id": task}}, runner)["get_or_create_task_run_info"]["id"]
    logs = [{"flow_run_id": runs[name], "message": f"{name} line {i}", "name": "first", "level": level,
             "timestamp": f"2026-11-24T01:0{i}:00+00:00", "info": {"i": i},
             "task_run_id": task_run if name == "running" and i == 1 else None}
            for name in ("running", "success") for i, level in enumerate(("INFO", "ERROR"))]
    release.call("mutation($i: write_run_logs_input!) { write_run_logs(input: $i) { success } }",
                 {"i": {"logs": logs}}, runner)
    return {"tenant_id": tenant, "project_id": project, "flow_id": flow, "task_run_id": task_run,
            "runs": [_run(release, run_id, runner) for run_id in runs.values()]}


def _run(release: Release, run_id: str, token: str) -> dict[str, Any]:
    run = release.call("query($id: uuid!) { flow_run_by_pk(id: $id) { id name flow_id state version "
                       "labels parameters serialized_state } }", {"id": run_id}, token)["flow_run_by_pk"]
    run["logs"] = release.call(LOGS_QUERY, {"id": run_id}, token)["log"]
    return run  # type: ignore[no-any-return]


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        code, database = Path(work) / "release", Path(work) / "first-release.db"
        code.mkdir()
        archive = subprocess.run(["git", "archive", RELEASE, "server"], cwd=REPO, capture_output=True,
                                 check=True)
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
        release = Release(code, database)
        user = release.cli("token", "create", "--scope", "USER", "--name", "first-user")
        runner = release.cli("token", "create", "--scope", "RUNNER", "--name", "first-runner")
        release.start()
        try:
            manifest = populate(release, user, runner)
        finally:
            release.stop()
        manifest.update(release=RELEASE, user_token=user, runner_token=runner)
        with sqlite3.connect(database) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        conn.close()
        with sqlite3.connect(database, isolation_level=None) as conn:
            conn.execute("PRAGMA page_size=1024")  # ~50 tables and indexes of one page each: small pages
            conn.execute("VACUUM")
        conn.close()
        (HERE / "first-release.db").write_bytes(database.read_bytes())
    (HERE / "first-release.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'first-release.db'} and first-release.json ({len(manifest['runs'])} runs)")


if __name__ == "__main__":
    main()
