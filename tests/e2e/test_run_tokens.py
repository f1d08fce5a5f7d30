"""End to end: a flow container launched by our agent holds a FLOW_RUN token for its own run, nothing more.

Real parts only: the server as a process with `--auth token` (grace and token cache shortened to seconds), our
agent as a process holding a RUNNER token, the Docker daemon, and the Prefect 1.4.1 example image. The flow
is `sleepy` with a short nap: the refusals are tried from inside the running flow container (`docker exec`,
the real Prefect client, the container's own env), which needs the container alive for a few seconds.

Prefect's own DockerAgent against a token-mode server (it knows nothing of run tokens and hands its RUNNER
token to its containers) is covered by tests/integration/test_prefect_docker_agent.py, whose `backend`
fixture runs both modes (`cloud` is `--auth token`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import docker
import pytest
from docker.models.containers import Container
from pydantic import SecretStr

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.prefect_fixtures import PrefectBackend, PrefectVenv, register_examples, running_backend
from tests.support.server_fixtures import ServerHandle

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.slow]

GRACE_S = 3
# server README: a run finished while its token is cached is noticed this much later (default 5 s; the
# cache is not what this test is about, so its delay is kept short)
TOKEN_CACHE_TTL_S = 1
NAP_S = 10  # the run stays Running this long: ample for one `docker exec` of the Prefect client (~2 s)
NEVER = "2100-01-01T00:00:00+00:00"  # the second run stays Scheduled: our agent must not launch it
FLOW_RUN_LABEL = "io.prefect.flow-run-id"

# Runs inside the flow container with its own environment: the Prefect client authenticates with whatever
# token the agent gave the container. Prints one JSON line: each attempt's outcome.
INSIDE = r"""
import json, os, sys
import pendulum
from prefect import Client
from prefect.engine.state import Cancelled
from prefect.utilities.storage import extract_flow_from_file

own, other = os.environ["PREFECT__CONTEXT__FLOW_RUN_ID"], sys.argv[1]
client = Client()
out = {}

def attempt(name, call):
    try:
        out[name] = {"ok": True, "value": call()}
    except Exception as exc:
        errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        codes = [(e.get("extensions") or {}).get("code") for e in errors if isinstance(e, dict)]
        out[name] = {"ok": False, "type": type(exc).__name__, "codes": codes, "message": str(exc)[:600]}

def graphql(document, **variables):
    return lambda: json.loads(json.dumps(client.graphql(document, variables=variables or None).data))

def register():
    flow = extract_flow_from_file(file_path="/opt/prefect/flows/hello.py")
    flow.storage.add_flow(flow)
    return client.register(flow, project_name="examples", build=False, compressed=False, no_url=True,
                           set_schedule_active=False)

queue_input = {"before": pendulum.now("UTC").add(years=200).isoformat(), "labels": [],
               "tenant_id": None}
attempt("own_run_before", lambda: type(client.get_flow_run_info(own).state).__name__)
attempt("own_scope", graphql("query { auth_info { api_token_scope } }"))
queue_input["tenant_id"] = client.tenant_id
attempt("read_other_run", lambda: client.get_flow_run_info(other).name)
attempt("read_other_run_by_pk", graphql("query($id: uuid!) { flow_run_by_pk(id: $id) { id state } }",
                                        id=other))
attempt("poll_queue", graphql("mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) "
                              "{ flow_run_ids } }", input=queue_input))
attempt("register_flow", register)
attempt("cancel_other_run", lambda: client.set_flow_run_state(other, Cancelled("from a flow container")).type)
mint = graphql("mutation($input: create_flow_run_token_input!) { create_flow_run_token(input: $input) "
               "{ expires_at } }", input={"flow_run_id": own})  # a token, if minted, is never printed
attempt("mint_token", mint)
attempt("own_run_after", lambda: type(client.get_flow_run_info(own).state).__name__)
print(json.dumps(out))
"""
REFUSED = ("read_other_run", "read_other_run_by_pk", "poll_queue", "register_flow", "cancel_other_run",
           "mint_token")


@dataclass(frozen=True)
class Stage:
    """What the steps share. Tokens are SecretStr: pytest prints a failing helper's arguments, not tokens."""

    server: ServerHandle
    user: SecretStr
    runner: SecretStr
    run_id: str
    other_id: str

    def call(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return api.call(self.server, query, variables, token=self.user.get_secret_value())


def test_flow_container_holds_a_token_for_its_own_run_only(
    flow_image: str,
    prefect_venv: PrefectVenv,
    agent_factory: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    server_env = {"LOCAL_AGENT_SERVER_FLOW_RUN_TOKEN_GRACE_S": str(GRACE_S),
                  "LOCAL_AGENT_SERVER_TOKEN_CACHE_TTL_S": str(TOKEN_CACHE_TTL_S)}
    with running_backend("cloud", tmp_path / "server", host="0.0.0.0", env=server_env) as backend:
        stage = _stage(backend, prefect_venv, flow_image)
        # level DEBUG (agent_factory); the container is read after the run's Success: kept
        agent = agent_factory(backend.server, token=backend.runner_token, keep_successful_containers_hours=1)
        container = _running_flow_container(docker_client, stage, agent)
        token = _run_token_in(container, stage)

        inside = _try_inside(container, stage.other_id)
        _assert_refused_inside(inside, stage.run_id)
        _assert_nothing_changed(stage)

        run = _wait_for_success(stage, agent)
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()[-3000:]
        _assert_rejected_after_grace(stage, token)
        _assert_never_logged(stage, token, agent, container)
        assert run["task_runs"] and all(tr["state"] == "Success" for tr in run["task_runs"]), run["task_runs"]


# ----------------------------------------------------------------------------------------------- helpers


def _stage(backend: PrefectBackend, venv: PrefectVenv, flow_image: str) -> Stage:
    """sleepy registered by the real client with one run to launch, and a second run that stays Scheduled."""
    assert backend.user_token and backend.runner_token
    summary = register_examples(venv, backend.env(), "--flow", "sleepy", "--create-run",
                                "--parameters", json.dumps({"seconds": NAP_S}))
    sleepy = summary["flows"]["sleepy"]
    assert sleepy["image"] == flow_image
    (run_id,) = sleepy["runs"]
    other_id = api.create_flow_run(backend.server, sleepy["flow_id"], token=backend.user_token,
                                   scheduled_start_time=NEVER)
    return Stage(backend.server, SecretStr(backend.user_token), SecretStr(backend.runner_token), run_id,
                 other_id)


def _running_flow_container(client: docker.DockerClient, stage: Stage, agent: AgentProcess) -> Container:
    """The run's container once the flow runner inside it has set the run Running (the nap follows)."""
    try:
        api.wait_for_state(stage.server, stage.run_id, ["Running", "Success", "Failed"], timeout=120,
                           token=stage.user.get_secret_value())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- agent output\n{agent.output()[-6000:]}") from exc
    (container,) = client.containers.list(all=True, filters={"label": f"{FLOW_RUN_LABEL}={stage.run_id}"})
    assert container.labels.get("io.local-agent.agent") == agent.name, container.labels
    return container


def _env_of(container: Container) -> dict[str, str]:
    pairs = (item.partition("=") for item in container.attrs["Config"]["Env"] or [])
    return {name: value for name, _, value in pairs}


def _run_token_in(container: Container, stage: Stage) -> SecretStr:
    """`docker inspect`: the container's API token is a minted run token, never the agent's or the user's."""
    env = _env_of(container)
    token = env.get("PREFECT__CLOUD__API_KEY", "")
    # booleans only: a failing assert must not print a token
    minted, same = token.startswith("lasr_"), env.get("PREFECT__CLOUD__AUTH_TOKEN") == token
    assert minted, f"PREFECT__CLOUD__API_KEY is not a minted run token (it starts {token[:4]!r})"
    assert same, "PREFECT__CLOUD__AUTH_TOKEN is not PREFECT__CLOUD__API_KEY"
    assert env.get("PREFECT__CONTEXT__FLOW_RUN_ID") == stage.run_id
    assert env.get("PREFECT__BACKEND") == "cloud"
    inspected = json.dumps(container.attrs)  # env, labels, command, host config: all of `docker inspect`
    for name, secret in (("RUNNER", stage.runner), ("USER", stage.user)):
        held, shown = secret.get_secret_value() == token, secret.get_secret_value() in inspected
        assert not held, f"the flow container's API token is the {name} token"
        assert not shown, f"the {name} token is in the flow container's inspect data"
    return SecretStr(token)


def _try_inside(container: Container, other_id: str) -> dict[str, dict[str, Any]]:
    """Run `INSIDE` in the running flow container with the Prefect client; its outcome per attempt."""
    container.reload()
    assert container.status == "running", f"the flow container is {container.status} already"
    result = container.exec_run(["python", "-c", INSIDE, other_id], demux=True)
    code, (stdout, stderr) = result.exit_code, cast("tuple[bytes | None, bytes | None]", result.output)
    out, err = (stdout or b"").decode(), (stderr or b"").decode()
    assert code == 0 and out.strip(), f"exec exited {code}\n--- stdout\n{out}\n--- stderr\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _assert_refused_inside(inside: dict[str, dict[str, Any]], run_id: str) -> None:
    """Every attempt outside the run is FORBIDDEN, while the same token still reads its own run."""
    shown = json.dumps(inside, indent=1)
    assert inside["own_run_before"] == {"ok": True, "value": "Running"}, shown
    assert inside["own_run_after"] == {"ok": True, "value": "Running"}, shown
    assert inside["own_scope"]["value"] == {"auth_info": {"api_token_scope": "FLOW_RUN"}}, shown
    for name in REFUSED:
        outcome = inside[name]
        assert outcome["ok"] is False, f"{name} was allowed with the run token:\n{shown}"
        assert outcome["type"] == "ClientError" and outcome["codes"] == ["FORBIDDEN"], f"{name}:\n{shown}"
        assert f"this API token is for flow run {run_id} only" in outcome["message"], f"{name}:\n{shown}"


def _assert_nothing_changed(stage: Stage) -> None:
    """The refused writes left no trace: the other run is still Scheduled, no flow but sleepy exists."""
    other = api.flow_run(stage.server, stage.other_id, token=stage.user.get_secret_value())
    assert other["state"] == "Scheduled", other["serialized_state"]
    flows = stage.call("query { flow { name } }")["flow"]
    assert [flow["name"] for flow in flows] == ["sleepy"], flows


def _wait_for_success(stage: Stage, agent: AgentProcess) -> dict[str, Any]:
    try:
        run = api.wait_for_state(stage.server, stage.run_id, ["Success", "Failed", "Cancelled"],
                                 timeout=NAP_S + 90, token=stage.user.get_secret_value())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- agent output\n{agent.output()[-6000:]}") from exc
    assert run["state"] == "Success", run["serialized_state"]
    return run


def _codes(errors: list[dict[str, Any]]) -> list[Any]:
    return [(error.get("extensions") or {}).get("code") for error in errors]


def _errors_with(stage: Stage, token: SecretStr, query: str,
                 variables: dict[str, Any]) -> list[dict[str, Any]]:
    body = stage.server.graphql(query, variables, token=token.get_secret_value())
    errors: list[dict[str, Any]] = body.get("errors") or []
    return errors


def _assert_rejected_after_grace(stage: Stage, token: SecretStr) -> None:
    """After Success plus the grace (and at most the identity cache's TTL), every use is UNAUTHENTICATED.
    Until then the same read works: the flow runner reported Success with this token a moment ago."""
    read = ("query($id: uuid!) { flow_run_by_pk(id: $id) { id state } }", {"id": stage.run_id})
    deadline = time.monotonic() + GRACE_S + TOKEN_CACHE_TTL_S + 20
    errors = _errors_with(stage, token, *read)
    while not errors and time.monotonic() < deadline:
        time.sleep(0.5)
        errors = _errors_with(stage, token, *read)
    assert errors, f"the run token still works long after its run finished (grace {GRACE_S} s)"
    assert _codes(errors) == ["UNAUTHENTICATED"], errors
    assert "invalid API token" in errors[0]["message"], errors
    log = {"flow_run_id": stage.run_id, "level": "INFO", "message": "late", "name": "t",
           "timestamp": "2026-01-01T00:00:00+00:00"}
    write = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"
    late = _errors_with(stage, token, write, {"input": {"logs": [log]}})
    assert _codes(late) == ["UNAUTHENTICATED"], late


def _assert_never_logged(stage: Stage, token: SecretStr, agent: AgentProcess, container: Container) -> None:
    """Neither token is in the agent's DEBUG output, the run's logs, the server's log, the flow's output."""
    output = agent.output()
    assert stage.run_id in output  # the output is the agent's, and covers this run
    logs = api.run_logs(stage.server, stage.run_id, token=stage.user.get_secret_value())
    messages = [entry["message"] for entry in logs]
    assert any(m.startswith("Submitted for execution: Container ID") for m in messages), messages
    assert any("sleeping" in m for m in messages), messages  # written from inside, with the run token
    places = {"agent output": output, "run logs": json.dumps(logs), "server log": stage.server.logs(),
              "flow container output": container.logs().decode(errors="replace")}
    secrets = (("run", token), ("RUNNER", stage.runner))
    for place, text in places.items():
        leaked = [name for name, secret in secrets if secret.get_secret_value() in text]
        assert not leaked, f"the {leaked} token is in the {place}"  # names only: never print a token
