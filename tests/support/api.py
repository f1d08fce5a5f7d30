"""Plain-GraphQL helpers that seed and inspect a `ServerHandle` without the Prefect client.

Every helper raises AssertionError (with the server's errors) when the API answers with errors.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol


class GraphQLServer(Protocol):
    def graphql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]: ...


def call(server: GraphQLServer, query: str, variables: dict[str, Any] | None = None,
         token: str | None = None) -> dict[str, Any]:
    """`data` of a successful request."""
    body = server.graphql(query, variables, token=token)
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]  # type: ignore[no-any-return]


def tenant_id(server: GraphQLServer, token: str | None = None) -> str:
    if token:
        return call(server, "query { auth_info { tenant_id } }", token=token)["auth_info"]["tenant_id"]  # type: ignore[no-any-return]
    return call(server, "query { tenant { id } }")["tenant"][0]["id"]  # type: ignore[no-any-return]


def create_project(server: GraphQLServer, name: str, token: str | None = None) -> str:
    data = call(server, "mutation($input: create_project_input!) { create_project(input: $input) { id } }",
                {"input": {"name": name, "description": None, "tenant_id": tenant_id(server, token)}}, token)
    return data["create_project"]["id"]  # type: ignore[no-any-return]


def _slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _task(item: str | dict[str, Any], version: str) -> dict[str, Any]:
    """A task name becomes slug `<name>-1` (Prefect's slug for the first task of that name)."""
    if isinstance(item, dict):
        return {"type": "prefect.tasks.core.function.FunctionTask", "__version__": version, **item}
    return {"name": item, "slug": f"{item}-1", "type": "prefect.tasks.core.function.FunctionTask",
            "max_retries": 0, "retry_delay": None, "cache_key": None, "tags": [], "__version__": version}


def docker_storage(name: str, image_name: str, image_tag: str, registry_url: str | None = None,
                   core_version: str = "1.4.1") -> dict[str, Any]:
    path = f"/opt/prefect/flows/{_slugify(name)}.prefect"
    return {"type": "Docker", "__version__": core_version, "registry_url": registry_url,
            "image_name": image_name, "image_tag": image_tag, "path": path, "stored_as_script": False,
            "flows": {name: path}, "prefect_version": core_version, "secrets": []}


def register_docker_flow(
    server: GraphQLServer, *, name: str, image_name: str, image_tag: str, registry_url: str | None = None,
    project_id: str | None = None, token: str | None = None, tasks: Sequence[str | dict[str, Any]] = ("say",),
    run_config: dict[str, Any] | None = None, core_version: str = "1.4.1",
    storage: dict[str, Any] | None = None, parameters: list[dict[str, Any]] | None = None,
) -> str:
    """create_flow with a serialized flow (Docker storage unless `storage` is given), tasks included."""
    if project_id is None:
        project_id = ensure_project(server, "tests", token)
    serialized = {
        "__version__": core_version, "name": name, "type": "prefect.core.flow.Flow", "schedule": None,
        "parameters": parameters or [], "reference_tasks": [], "environment": None,
        "storage": storage or docker_storage(name, image_name, image_tag, registry_url, core_version),
        "run_config": run_config, "tasks": [_task(t, core_version) for t in tasks], "edges": [],
    }
    data = call(server, "mutation($input: create_flow_input!) { create_flow(input: $input) { id } }",
                {"input": {"project_id": project_id, "serialized_flow": serialized,
                           "set_schedule_active": False, "version_group_id": None}}, token)
    return data["create_flow"]["id"]  # type: ignore[no-any-return]


def ensure_project(server: GraphQLServer, name: str, token: str | None = None) -> str:
    found = call(server, 'query($n: String) { project(where: {name: {_eq: $n}}) { id } }', {"n": name}, token)
    return found["project"][0]["id"] if found["project"] else create_project(server, name, token)


def create_flow_run(
    server: GraphQLServer, flow_id: str, *, token: str | None = None, labels: Sequence[str] | None = None,
    parameters: dict[str, Any] | None = None, scheduled_start_time: datetime | str | None = None,
    run_config: dict[str, Any] | None = None, name: str | None = None, idempotency_key: str | None = None,
) -> str:
    run_input: dict[str, Any] = {"flow_id": flow_id}
    optional = {"labels": list(labels) if labels is not None else None, "parameters": parameters,
                "run_config": run_config, "flow_run_name": name, "idempotency_key": idempotency_key,
                "scheduled_start_time": scheduled_start_time.isoformat()
                if isinstance(scheduled_start_time, datetime) else scheduled_start_time}
    run_input.update({k: v for k, v in optional.items() if v is not None})
    data = call(server, "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }",
                {"input": run_input}, token)
    return data["create_flow_run"]["id"]  # type: ignore[no-any-return]


FLOW_RUN_QUERY = """
query($id: uuid!) {
  flow_run_by_pk(id: $id) {
    id name flow_id state version serialized_state state_message state_start_time state_timestamp
    scheduled_start_time start_time end_time heartbeat agent_id labels run_config parameters context
    task_runs(order_by: {map_index: asc}) { id map_index state version serialized_state task { id slug } }
  }
}"""


def flow_run(server: GraphQLServer, run_id: str, token: str | None = None) -> dict[str, Any]:
    run = call(server, FLOW_RUN_QUERY, {"id": run_id}, token)["flow_run_by_pk"]
    if run is None:
        raise AssertionError(f"flow run {run_id} not found")
    return run  # type: ignore[no-any-return]


def run_logs(server: GraphQLServer, run_id: str, token: str | None = None) -> list[dict[str, Any]]:
    query = """query($id: uuid) {
      log(where: {flow_run_id: {_eq: $id}}, order_by: {timestamp: asc}) {
        id flow_run_id task_run_id timestamp name level message info } }"""
    return call(server, query, {"id": run_id}, token)["log"]  # type: ignore[no-any-return]


def has_log(server: GraphQLServer, run_id: str, text: str, token: str | None = None) -> bool:
    return any(text in log["message"] for log in run_logs(server, run_id, token))


def wait_for_log(server: GraphQLServer, run_id: str, text: str, timeout: float = 20,
                 token: str | None = None) -> list[dict[str, Any]]:
    """The run's logs once one contains `text`: the agent batches its run logs (agent.launch.run_logs), so a
    line it wrote can reach the API a second after the state that followed it."""
    deadline = time.monotonic() + timeout
    while True:
        logs = run_logs(server, run_id, token)
        if any(text in log["message"] for log in logs):
            return logs
        if time.monotonic() > deadline:
            messages = [log["message"] for log in logs]
            raise AssertionError(f"no run log containing {text!r} for {run_id}: {messages}")
        time.sleep(0.1)


def wait_for_state(server: GraphQLServer, run_id: str, states: str | Iterable[str], timeout: float = 60,
                   token: str | None = None, interval: float = 0.2) -> dict[str, Any]:
    """Poll until the run's state is one of `states`; returns the run (AssertionError on timeout)."""
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    run = flow_run(server, run_id, token)
    while run["state"] not in wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"flow run {run_id} is {run['state']!r}, not in {sorted(wanted)} "
                                 f"after {timeout} s: {run['serialized_state']}")
        time.sleep(interval)
        run = flow_run(server, run_id, token)
    return run


def cancel_flow_run(server: GraphQLServer, run_id: str, token: str | None = None) -> str:
    query = "mutation($input: cancel_flow_run_input!) { cancel_flow_run(input: $input) { state } }"
    data = call(server, query, {"input": {"flow_run_id": run_id}}, token)
    return data["cancel_flow_run"]["state"]  # type: ignore[no-any-return]


def set_flow_run_state(server: GraphQLServer, run_id: str, state: dict[str, Any], version: int | None = None,
                       token: str | None = None) -> dict[str, Any]:
    """The raw response body (so callers can inspect errors such as VERSION_LOCKING_ERROR)."""
    query = ("mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) "
             "{ states { id status message } } }")
    variables = {"input": {"states": [{"flow_run_id": run_id, "version": version, "state": state}]}}
    return server.graphql(query, variables, token=token)


SET_TASK_RUN_STATES = ("mutation($input: set_task_run_states_input!) { set_task_run_states(input: $input) "
                       "{ states { id status message } } }")


def set_task_run_state(server: GraphQLServer, task_run_id: str, state: dict[str, Any],
                       version: int | None = None, token: str | None = None) -> dict[str, Any]:
    """The raw response body of set_task_run_states for one task run."""
    variables = {"input": {"states": [{"task_run_id": task_run_id, "version": version, "state": state}]}}
    return server.graphql(SET_TASK_RUN_STATES, variables, token=token)


def queue(server: GraphQLServer, tenant: str, labels: Sequence[str] = (), before: str | None = None,
          token: str | None = None, wait_seconds: float | None = None) -> list[str]:
    run_input: dict[str, Any] = {"tenant_id": tenant, "labels": list(labels)}
    if before is not None:
        run_input["before"] = before
    if wait_seconds is not None:
        run_input["wait_seconds"] = wait_seconds
    data = call(server, "mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) "
                "{ flow_run_ids } }", {"input": run_input}, token)
    return data["get_runs_in_queue"]["flow_run_ids"]  # type: ignore[no-any-return]


def register_agent(server: GraphQLServer, token: str | None = None, name: str = "a") -> str:
    """A DockerAgent of the token's tenant; returns its id."""
    query = "mutation($input: register_agent_input!) { register_agent(input: $input) { id } }"
    tenant = tenant_id(server, token)
    variables = {"input": {"type": "DockerAgent", "name": name, "labels": [], "tenant_id": tenant}}
    return call(server, query, variables, token)["register_agent"]["id"]  # type: ignore[no-any-return]


HEARTBEAT = "mutation($id: UUID!) { update_flow_run_heartbeat(input: {flow_run_id: $id}) { success } }"
SET_STATES = ("mutation($input: set_flow_run_states_input!) "
              "{ set_flow_run_states(input: $input) { states { id status message } } }")


def heartbeat_and_claim(write: Callable[[str, dict[str, Any]], None], heartbeat_run: str,
                        claimable: list[str], stop: threading.Event) -> None:
    """An agent's writes without pause until `stop`: a heartbeat of one run, then a claim (Submitted,
    version 1) of the next queued run, each sent through `write(query, variables)`."""
    while not stop.is_set():
        write(HEARTBEAT, {"id": heartbeat_run})
        if claimable:
            item = {"flow_run_id": claimable.pop(), "version": 1,
                    "state": {"type": "Submitted", "message": "claimed"}}
            write(SET_STATES, {"input": {"states": [item]}})


CREATE_FLOW_RUN_TOKEN = ("mutation($input: create_flow_run_token_input!) "
                         "{ create_flow_run_token(input: $input) { token expires_at } }")


def create_flow_run_token(server: GraphQLServer, run_id: str, token: str | None = None) -> str:
    """A FLOW_RUN token for one run (the server's `create_flow_run_token` extension)."""
    data = call(server, CREATE_FLOW_RUN_TOKEN, {"input": {"flow_run_id": run_id}}, token)
    return data["create_flow_run_token"]["token"]  # type: ignore[no-any-return]
