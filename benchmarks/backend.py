"""The server under the benchmark: started as a real process, driven over plain GraphQL/HTTP.

The benchmark's own requests (registering the flow, creating runs) go straight to the server, never through
an agent's counting proxy, so they are not counted against any agent.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.config import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class GraphQLError(RuntimeError):
    pass


@dataclass
class Server:
    """A `python -m server start` process on a free port with auth off and its own database."""

    database_url: str
    log_path: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        cmd = [
            sys.executable, "-m", "server", "start", "--host", self.host, "--port", str(self.port),
            "--database-url", self.database_url, "--auth", "none",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns the handle until it exits
        self.process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            try:
                graphql(self.url, "query { hello }", timeout=2)
                return self
            except (OSError, GraphQLError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def graphql(url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """POST one GraphQL request the way the Prefect client does (variables as a JSON string); returns data."""
    body = json.dumps({"query": query, "variables": json.dumps(variables)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise GraphQLError(f"HTTP {exc.code}: {exc.read()[:500]!r}") from exc
    if payload.get("errors"):
        raise GraphQLError(str(payload["errors"])[:1000])
    return payload["data"]


def tenant_id(url: str) -> str:
    return graphql(url, "query { tenant { id } }")["tenant"][0]["id"]


def serialized_flow(name: str, image: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A Prefect 1.4.1 flow with Docker storage on `image` and a DockerRun run config; no tasks needed."""
    repository, _, tag = image.partition(":")
    return {
        "__version__": "1.4.1",
        "name": name,
        "type": "prefect.core.flow.Flow",
        "parameters": [],
        "reference_tasks": [],
        "schedule": None,
        "tasks": [],
        "edges": [],
        "environment": None,
        "storage": {
            "type": "Docker", "__version__": "1.4.1", "registry_url": None, "image_name": repository,
            "image_tag": tag or "latest", "path": f"/opt/prefect/flows/{name}.prefect",
            "stored_as_script": False, "flows": {name: f"/opt/prefect/flows/{name}.prefect"},
            "prefect_version": "1.4.1", "secrets": [],
        },
        "run_config": {
            "type": "DockerRun", "__version__": "1.4.1", "labels": [], "env": env, "image": None,
            "ports": None, "host_config": None,
        },
    }


def register_flow(url: str, name: str, image: str, env: dict[str, str] | None = None) -> str:
    """Create project `bench` (if needed) and the flow (with its DockerRun `env`); returns the flow id."""
    tenant = tenant_id(url)
    create = "mutation($input: create_project_input!) { create_project(input: $input) { id } }"
    try:
        data = graphql(url, create, {"input": {"name": "bench", "tenant_id": tenant}})
        project = data["create_project"]["id"]
    except GraphQLError:  # "Uniqueness violation." - the project exists
        project = graphql(url, 'query { project(where: {name: {_eq: "bench"}}) { id } }')["project"][0]["id"]
    mutation = "mutation($input: create_flow_input!) { create_flow(input: $input) { id } }"
    variables = {"input": {"project_id": project, "serialized_flow": serialized_flow(name, image, env),
                           "set_schedule_active": False}}
    return graphql(url, mutation, variables)["create_flow"]["id"]


def create_flow_run(url: str, flow_id: str, *, name: str, labels: list[str], scheduled_at: float) -> str:
    mutation = "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }"
    variables = {"input": {
        "flow_id": flow_id, "flow_run_name": name, "labels": labels,
        "scheduled_start_time": iso(scheduled_at),
        "idempotency_key": uuid.uuid4().hex,
    }}
    return graphql(url, mutation, variables)["create_flow_run"]["id"]


def finish_runs(url: str, run_ids: list[str]) -> None:
    """Set `Success` on runs, as the real flow runner would: the stand-in `/bin/prefect` reports nothing.

    Otherwise every run the benchmark launched would stay Submitted forever, with its container removed by
    the benchmark, and a later start of the same agent would rightly take it for one claimed but never
    launched and requeue it (restart recovery), relaunching runs of earlier scenarios inside a burst.
    """
    mutation = ("mutation($input: set_flow_run_states_input!) "
                "{ set_flow_run_states(input: $input) { states { id } } }")
    state = {"type": "Success", "message": "benchmark: the stand-in flow finished", "__version__": "1.4.1",
             "context": {}, "cached_inputs": {}, "_result": {"type": "NoResultType", "__version__": "1.4.1"}}
    for start in range(0, len(run_ids), 100):
        chunk = run_ids[start:start + 100]
        states = [{"flow_run_id": run_id, "version": None, "state": state} for run_id in chunk]
        graphql(url, mutation, {"input": {"states": states}})


def queue_query(url: str, tenant: str, labels: list[str], before: float) -> list[str]:
    mutation = (
        "mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) { flow_run_ids } }"
    )
    variables = {"input": {"tenant_id": tenant, "before": iso(before), "labels": labels}}
    return graphql(url, mutation, variables)["get_runs_in_queue"]["flow_run_ids"]
