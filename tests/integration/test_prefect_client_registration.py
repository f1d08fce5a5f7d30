"""Issue 2, done-when 1: the unmodified Prefect 1.4.1 client registers flows and creates runs on our server.

Each test runs the real client in the Prefect 1.4.1 virtualenv against a real server over HTTP, in both
backend modes: `server` (auth none) and `cloud` (auth token, API key).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import FLOW_IMAGE
from tests.support.prefect_fixtures import (
    FLOWS_DIR,
    PrefectBackend,
    PrefectVenv,
    read_runs,
    register_examples,
)

pytestmark = pytest.mark.slow


DUPLICATE_PROJECT = """
import json
from prefect import Client
client = Client()
first = client.create_project(project_name="twice")
second = client.create_project(project_name="twice")  # must take the "Uniqueness violation." fallback
try:
    client.graphql(
        "mutation($input: create_project_input!) { create_project(input: $input) { id } }",
        variables={"input": {"name": "twice", "tenant_id": client.tenant_id}},
    )
    error = ""
except Exception as exc:
    error = str(exc)
print(json.dumps({"first": first, "second": second, "error": error}))
"""

READ_FLOWS = """
import json, sys
from prefect import Client
from prefect.utilities.graphql import with_args
ids = json.loads(sys.argv[1])
rows = Client().graphql({"query": {with_args("flow", {"where": {"id": {"_in": ids}}}): {
    "id", "name", "version", "core_version", "storage", "run_config"}}}).data.flow
print(json.dumps([r.to_dict() for r in rows]))
"""

CREATE_RUNS = """
import json, sys
from prefect import Client
client = Client()
flow_id = sys.argv[1]
kwargs = dict(flow_id=flow_id, parameters={"name": "registration"}, labels=["extra-label"],
              run_name="named-run", idempotency_key="same-key")
first = client.create_flow_run(**kwargs)
again = client.create_flow_run(**kwargs)
plain = client.create_flow_run(flow_id=flow_id)
print(json.dumps({"first": first, "again": again, "plain": plain}))
"""


@pytest.fixture(scope="module")
def registered(prefect_venv: PrefectVenv, backend: PrefectBackend) -> dict[str, Any]:
    """All example flows registered once per backend by examples/register.py (Docker storage, build=False)."""
    return register_examples(prefect_venv, backend.env(), "--project", "examples", "--label", "reg-test")


def _py(venv: PrefectVenv, backend: PrefectBackend, script: str, *args: str) -> Any:
    proc = venv.run(["-c", script, *args], env=backend.env(), timeout=90, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_create_project_twice_takes_the_uniqueness_violation_path(
    prefect_venv: PrefectVenv, backend: PrefectBackend
) -> None:
    result = _py(prefect_venv, backend, DUPLICATE_PROJECT)
    assert result["first"] and result["second"] == result["first"]
    assert "Uniqueness violation." in result["error"]


def test_register_examples_records_docker_storage_and_run_config(
    prefect_venv: PrefectVenv, backend: PrefectBackend, registered: dict[str, Any]
) -> None:
    assert set(registered["flows"]) == {"hello", "failing", "mapped", "retry", "sleepy"}
    ids = [f["flow_id"] for f in registered["flows"].values()]
    rows = {r["name"]: r for r in _py(prefect_venv, backend, READ_FLOWS, json.dumps(ids))}

    assert set(rows) == set(registered["flows"])
    hello = rows["hello"]
    assert hello["core_version"] == "1.4.1"  # else the DockerAgent would run `prefect execute cloud-flow`
    assert hello["storage"]["type"] == "Docker"
    assert f'{hello["storage"]["image_name"]}:{hello["storage"]["image_tag"]}' == FLOW_IMAGE  # the tests' own
    assert hello["storage"]["flows"] == {"hello": "/opt/prefect/flows/hello.py"}
    assert hello["storage"]["stored_as_script"] is True
    assert hello["run_config"]["type"] == "DockerRun"
    assert hello["run_config"]["labels"] == ["reg-test"]


def test_reregistering_creates_a_new_version(
    prefect_venv: PrefectVenv, backend: PrefectBackend, registered: dict[str, Any]
) -> None:
    again = register_examples(prefect_venv, backend.env(), "--project", "examples", "--flow", "sleepy")
    new_id = again["flows"]["sleepy"]["flow_id"]
    old_id = registered["flows"]["sleepy"]["flow_id"]
    rows = {r["id"]: r for r in _py(prefect_venv, backend, READ_FLOWS, json.dumps([old_id, new_id]))}

    assert new_id != old_id
    assert rows[new_id]["version"] == rows[old_id]["version"] + 1


def test_create_flow_run_pre_creates_task_runs_and_honours_idempotency(
    prefect_venv: PrefectVenv, backend: PrefectBackend, registered: dict[str, Any]
) -> None:
    runs = _py(prefect_venv, backend, CREATE_RUNS, registered["flows"]["hello"]["flow_id"])
    assert runs["again"] == runs["first"] != runs["plain"]

    info = read_runs(prefect_venv, backend.env(), [runs["first"], runs["plain"]])
    named, plain = info[runs["first"]], info[runs["plain"]]
    assert named["state"] == plain["state"] == "Scheduled"
    assert named["name"] == "named-run"
    assert named["parameters"] == {"name": "registration"}
    assert plain["parameters"] == {"name": "world"}  # the flow's Parameter default
    expected = [
        ["greet", -1, "Pending"],
        ["name", -1, "Pending"],
        ["report", -1, "Pending"],
        ["shout", -1, "Pending"],
    ]
    assert [[re.sub(r"-\d+$", "", slug), i, s] for slug, i, s in named["task_runs"]] == expected


def test_prefect_register_cli_registers_then_skips_unchanged(
    prefect_venv: PrefectVenv, backend: PrefectBackend, tmp_path: Path
) -> None:
    """The `prefect register --json` path: the full flow in one compressed string plus an idempotency key."""
    flows_json = tmp_path / "flows.json"
    dumped = register_examples(
        prefect_venv,
        backend.env(),
        "--dump-json",
        str(flows_json),
        "--flow",
        "hello",
        "--flow",
        "mapped",
        "--flows-dir",
        str(FLOWS_DIR),
    )
    assert dumped["flows"] == ["hello", "mapped"]
    prefect_venv.run(
        "from prefect import Client; Client().create_project(project_name='cli')",
        env=backend.env(),
        check=True,
    )
    cmd = ["prefect", "register", "--json", str(flows_json), "--project", "cli"]

    first = prefect_venv.run(cmd, env=backend.env(), timeout=90, check=True).stdout
    second = prefect_venv.run(cmd, env=backend.env(), timeout=90, check=True).stdout

    assert "2 registered" in first, first
    first_ids = re.findall(r"ID: ([0-9a-f-]{36})", first)
    assert len(first_ids) == 2, first
    assert "2 skipped" in second and "Skipped (metadata unchanged)" in second, second
