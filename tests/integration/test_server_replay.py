"""Every operation recorded from the real Prefect 1.4.1 client, replayed verbatim over HTTP.

`test_server_operations.txt` is a copy of the contract's `cloud-api-operations.txt`: the exact query texts,
`variables` as JSON strings and headers. Recorded ids are swapped for the ids this server created (learned
from the responses as the replay goes), recorded timestamps for current ones; every response must be
error-free and have the recorded shape (same keys, same JSON types).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import api
from tests.support.server_fixtures import ServerHandle

RECORDING = Path(__file__).with_name("test_server_operations.txt")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+\+00:00")
JSON_FIELDS = {
    "serialized_state",
    "settings",
    "storage",
    "run_config",
    "parameters",
    "context",
    "environment",
}
RECORDED_RUNS = (
    "e74aced1-b0bd-4a0f-8b32-06f7a1ff79d8",
    "7676c4a0-4c54-4f12-be19-17869827ba9e",
    "5ba857f1-f496-4840-aa71-2e9bcabec5a4",
    "c2afd8ed-6f23-4329-834e-e76da976087f",
)
RECORDED_TASKS = {
    "3671d960-a7b3-4fc1-a40d-a08cdf651b40": "p",
    "ea670cd9-7dff-49a2-8eb6-14b08445ae23": "say-1",
    "aad9b915-fb83-4bb2-83b3-edd07f60f4f6": "add-1",
}


@dataclass
class Recorded:
    number: int
    headers: dict[str, str]
    query: str
    variables: str
    response: Any  # None when the recording was truncated


def load_recording() -> list[Recorded]:
    entries = []
    for block in RECORDING.read_text().split("=" * 80):
        lines = block.strip("\n").splitlines()
        if not lines or not lines[0].startswith("request "):
            continue
        number = int(lines[0].split()[1].rstrip(","))
        headers = ast.literal_eval(lines[1].removeprefix("headers="))
        var_at = next(i for i, line in enumerate(lines) if line.startswith("VARIABLES(string)="))
        response_text = lines[var_at + 1].removeprefix("RESPONSE=")
        try:
            response = json.loads(response_text)
        except ValueError:
            response = None
        entries.append(
            Recorded(
                number,
                headers,
                "\n".join(lines[2:var_at]),
                lines[var_at].removeprefix("VARIABLES(string)="),
                response,
            )
        )
    return entries


def same_shape(recorded: Any, ours: Any, key: str = "") -> bool:
    if key in JSON_FIELDS:
        return recorded is None or isinstance(ours, type(recorded))
    if isinstance(recorded, dict):
        return (
            isinstance(ours, dict)
            and set(ours) == set(recorded)
            and all(same_shape(recorded[k], ours[k], k) for k in recorded)
        )
    if isinstance(recorded, list):
        return isinstance(ours, list) and (not recorded or not ours or same_shape(recorded[0], ours[0], key))
    return recorded is None or isinstance(ours, type(recorded))


class Replayer:
    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.ids: dict[str, str] = {}

    def substitute(self, text: str) -> str:
        for recorded, ours in self.ids.items():
            text = text.replace(recorded, ours)
        return TIME_RE.sub((datetime.now(UTC) + timedelta(seconds=60)).isoformat(), text)

    def learn(self, recorded: Any, ours: Any) -> None:
        """Map recorded ids to ours wherever the two responses line up unambiguously."""
        if isinstance(recorded, str) and isinstance(ours, str) and UUID_RE.match(recorded):
            self.ids.setdefault(recorded, ours)
        elif isinstance(recorded, dict) and isinstance(ours, dict):
            for key in recorded.keys() & ours.keys():
                self.learn(recorded[key], ours[key])
        elif isinstance(recorded, list) and isinstance(ours, list) and len(recorded) == len(ours) == 1:
            self.learn(recorded[0], ours[0])

    def send(self, entry: Recorded) -> dict[str, Any]:
        headers = {k: self.substitute(v) for k, v in entry.headers.items() if k != "authorization"}
        body = {"query": self.substitute(entry.query), "variables": self.substitute(entry.variables)}
        response = requests.post(self.server.url, data=json.dumps(body), headers=headers, timeout=30)
        assert response.status_code == 200, (entry.number, response.text)
        return response.json()  # type: ignore[no-any-return]

    def replay(self, entry: Recorded) -> dict[str, Any]:
        body = self.send(entry)
        assert "errors" not in body, (entry.number, body)
        if entry.response is not None:
            assert same_shape(entry.response["data"], body["data"]), (entry.number, entry.response, body)
            self.learn(entry.response["data"], body["data"])
        return body["data"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def replay_server(
    tmp_path_factory: pytest.TempPathFactory, module_database_url_factory: Callable[..., str]
) -> Any:
    from tests.support.server_fixtures import start_server

    handle = start_server(tmp_path_factory.mktemp("replay"), auth="none",
                          database_url=module_database_url_factory())
    yield handle
    handle.stop()


def test_every_recorded_operation_replays(replay_server: ServerHandle) -> None:
    entries = {entry.number: entry for entry in load_recording()}
    assert len(entries) == 32
    player = Replayer(replay_server)
    results: dict[int, Any] = {}
    for number, entry in sorted(entries.items()):
        if number == 5:  # the client's fallback after a duplicate create_project
            again = player.send(entries[2])
            assert again["errors"][0]["message"] == "Uniqueness violation."
        if number == 47:
            _prepare_runner_phase(player)
        if number == 72:  # the runner sets the flow run Running before its tasks (not in the excerpt)
            run_id = player.ids[RECORDED_RUNS[2]]
            version = api.flow_run(replay_server, run_id)["version"]
            assert "errors" not in api.set_flow_run_state(replay_server, run_id, {"type": "Running"}, version)
        if number == 150:  # a task run of the recording's retried-task run: use the one 71 returned
            player.ids["645be805-3110-476e-b4b7-0d941f624b80"] = results[71]["get_or_create_task_run_info"][
                "id"
            ]
        results[number] = player.replay(entry)
    run_id = results[40]["create_flow_run"]["id"]
    assert results[49]["get_runs_in_queue"]["flow_run_ids"] == [run_id]
    assert [row["id"] for row in results[50]["flow_run"]] == [run_id]
    assert results[51]["set_flow_run_states"]["states"][0]["status"] == "SUCCESS"
    assert len(results[65]["flow_run_by_pk"]["task_runs"]) == 3
    assert results[79]["cancel_flow_run"]["state"] == "Cancelling"
    assert results[156]["auth_info"]["tenant_id"] == results[1]["tenant"][0]["id"]
    run = api.flow_run(replay_server, run_id)
    assert run["name"] == "renamed" and run["agent_id"] == results[47]["register_agent"]["id"]
    assert sorted(t["map_index"] for t in run["task_runs"]) == [-1, -1, -1, 0, 1, 2]
    assert [log["message"] for log in api.run_logs(replay_server, run_id)] == [
        json.loads(entries[56].variables)["input"]["logs"][0]["message"].replace(RECORDED_RUNS[1], run_id)
    ]


def _prepare_runner_phase(player: Replayer) -> None:
    """Point the recording's other runs and tasks at the run and tasks this replay created."""
    run_id = player.ids["b5fb4e02-e1e6-4620-8321-62fc573b7b5b"]
    for recorded in RECORDED_RUNS:
        player.ids.setdefault(recorded, run_id)
    tasks = {t["task"]["slug"]: t["task"]["id"] for t in api.flow_run(player.server, run_id)["task_runs"]}
    for recorded, slug in RECORDED_TASKS.items():
        player.ids.setdefault(recorded, tasks[slug])


def test_recorded_cloud_auth_info_with_a_token(token_server: ServerHandle) -> None:
    entry = next(e for e in load_recording() if e.number == 156)
    token = token_server.create_token("RUNNER", "replay")
    headers = {**entry.headers, "authorization": f"Bearer {token}"}
    body = requests.post(
        token_server.url,
        data=json.dumps({"query": entry.query, "variables": entry.variables}),
        headers=headers,
        timeout=10,
    ).json()
    assert UUID_RE.match(body["data"]["auth_info"]["tenant_id"])
    wrong = requests.post(
        token_server.url,
        data=json.dumps({"query": entry.query, "variables": "null"}),
        headers=entry.headers,
        timeout=10,
    )
    assert wrong.status_code == 200 and "UNAUTHENTICATED" in wrong.text
