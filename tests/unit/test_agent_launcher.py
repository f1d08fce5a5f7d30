"""What a flow run becomes on Docker: image, command, env and its precedence, labels, API URL, pull."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent.api.models import FlowRun
from agent.launch.plan import (
    Identity,
    LaunchError,
    PullPolicy,
    build_spec,
    flow_api_url,
    flow_command,
    resolve_image,
    should_pull,
)
from agent.settings import Settings

DOCKER_STORAGE = {
    "type": "Docker",
    "registry_url": "registry.example.com/team/",
    "image_name": "docker-flow",
    "image_tag": "2024-01-01",
    "prefect_version": "1.4.1",
    "flows": {"docker-flow": "/opt/prefect/flows/docker-flow.prefect"},
}


pytestmark = pytest.mark.usefixtures("clean_prefect_env")


def make_run(
    storage: dict[str, Any] | None = None, run_config: dict[str, Any] | None = None, **flow: Any
) -> FlowRun:
    return FlowRun.model_validate(
        {
            "id": "run-1",
            "version": 1,
            "state": "Scheduled",
            "serialized_state": {"type": "Scheduled", "start_time": "2024-01-01T00:00:00+00:00"},
            "run_config": run_config,
            "flow": {"id": "flow-1", "name": "my flow", "core_version": "1.4.1", "storage": storage, **flow},
        }
    )


IDENTITY = Identity("agent-x", ["a", "b"], "tenant-1", "http://host.docker.internal:4200", [])


def test_docker_storage_names_the_image() -> None:
    assert resolve_image(make_run(DOCKER_STORAGE)) == "registry.example.com/team/docker-flow:2024-01-01"
    no_registry = {**DOCKER_STORAGE, "registry_url": None}
    assert (
        resolve_image(make_run(no_registry, {"type": "DockerRun", "image": "ignored:1"}))
        == "docker-flow:2024-01-01"
    )


def test_docker_run_image_when_storage_is_not_docker() -> None:
    run = make_run({"type": "S3", "bucket": "b"}, {"type": "DockerRun", "image": "custom/image:3"})
    assert resolve_image(run) == "custom/image:3"


def test_flow_without_docker_storage_is_refused_naming_the_storage_type() -> None:
    with pytest.raises(LaunchError, match=r"not deployed with Docker storage \(storage type: Local\)"):
        resolve_image(make_run({"type": "Local", "directory": "/x"}, {"type": "UniversalRun", "labels": []}))
    with pytest.raises(LaunchError, match=r"storage type: none"):
        resolve_image(make_run(None))


@pytest.mark.parametrize("kind", ["LocalRun", "KubernetesRun", "ECSRun"])
def test_foreign_run_config_is_refused(kind: str) -> None:
    with pytest.raises(LaunchError, match=f"run config of type {kind}"):
        resolve_image(make_run(DOCKER_STORAGE, {"type": kind}))


@pytest.mark.parametrize(
    ("core_version", "command"),
    [
        ("1.4.1", "flow-run"),
        ("0.13.0", "flow-run"),
        ("0.15.13+12.gabc", "flow-run"),
        ("0.12.6", "cloud-flow"),
        ("0.6.7", "cloud-flow"),
        ("0.13.0rc1", "flow-run"),
        (None, "flow-run"),  # Prefect would say cloud-flow; 1.x images have no such command (documented)
    ],
)
def test_command_by_core_version(core_version: str | None, command: str) -> None:
    assert flow_command(core_version) == ["prefect", "execute", command]


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        ("http://localhost:4200", "http://host.docker.internal:4200"),
        ("http://127.0.0.1:37001/graphql", "http://host.docker.internal:37001/graphql"),  # port and path kept
        ("https://localhost", "https://host.docker.internal"),
        ("http://0.0.0.0:4200/", "http://host.docker.internal:4200/"),
        ("https://api.prefect.io", "https://api.prefect.io"),
        ("http://apollo:4200", "http://apollo:4200"),
    ],
)
def test_flow_api_url_rewrites_loopback_keeping_port_and_path(api: str, expected: str) -> None:
    assert flow_api_url(api, None) == expected
    assert flow_api_url(api, "http://override:1") == "http://override:1"


def test_env_order_and_precedence_agent_lt_run_config_lt_fixed() -> None:
    settings = Settings(
        api_token="tok-123",
        env_vars={
            "A": "agent",
            "B": "agent",
            "PREFECT__BACKEND": "agent-cannot",
            "PREFECT__CLOUD__API": "http://x",
        },
        allowed_run_overrides=["api_env"],  # even where the operator lets a run redirect, the fixed ones win
    )
    run_config = {"type": "DockerRun", "env": {"B": "run", "PREFECT__CONTEXT__FLOW_RUN_ID": "nope", "C": 3}}
    env = build_spec(make_run(DOCKER_STORAGE, run_config), "img:1", settings, IDENTITY).environment
    assert (env["A"], env["B"], env["C"]) == ("agent", "run", "3")
    assert env["PREFECT__CLOUD__API"] == "http://x"  # overridable, as in Prefect 1.4.1 (§2.4 step 1)
    assert env["PREFECT__BACKEND"] == "cloud"
    assert env["PREFECT__CONTEXT__FLOW_RUN_ID"] == "run-1"
    assert env["PREFECT__CONTEXT__FLOW_ID"] == "flow-1"
    assert env["PREFECT__CONTEXT__IMAGE"] == "img:1"
    assert env["PREFECT__CLOUD__API_KEY"] == env["PREFECT__CLOUD__AUTH_TOKEN"] == "tok-123"
    assert env["PREFECT__CLOUD__TENANT_ID"] == "tenant-1"
    assert env["PREFECT__CLOUD__AGENT__LABELS"] == "['a', 'b']"
    assert env["PREFECT__ENGINE__FLOW_RUNNER__DEFAULT_CLASS"] == "prefect.engine.cloud.CloudFlowRunner"
    assert env["PREFECT__ENGINE__TASK_RUNNER__DEFAULT_CLASS"] == "prefect.engine.cloud.CloudTaskRunner"
    assert env["PREFECT__CLOUD__USE_LOCAL_SECRETS"] == "false"
    assert env["PREFECT__LOGGING__LOG_TO_CLOUD"] == env["PREFECT__CLOUD__SEND_FLOW_RUN_LOGS"] == "true"
    assert env["PREFECT__LOGGING__LEVEL"] == "INFO"
    keys = list(env)
    assert keys.index("PREFECT__CLOUD__API") < keys.index("PREFECT__LOGGING__LEVEL") < keys.index("A")


def test_server_mode_env_has_empty_credentials_and_run_config_can_turn_logs_off() -> None:
    run_config = {"type": "DockerRun", "env": {"PREFECT__CLOUD__SEND_FLOW_RUN_LOGS": "false"}}
    env = build_spec(make_run(DOCKER_STORAGE, run_config), "img:1", Settings(), IDENTITY).environment
    assert env["PREFECT__BACKEND"] == "server"
    assert (
        env["PREFECT__CLOUD__API_KEY"]
        == env["PREFECT__CLOUD__AUTH_TOKEN"]
        == env["PREFECT__CLOUD__TENANT_ID"]
        == ""
    )
    assert env["PREFECT__CLOUD__SEND_FLOW_RUN_LOGS"] == "false"


def test_spec_name_labels_command_and_extra_host() -> None:
    settings = Settings(container_labels={"team": "x", "io.prefect.flow-run-id": "spoofed"})
    spec = build_spec(make_run(DOCKER_STORAGE), "img:1", settings, IDENTITY)
    assert spec.name == "prefect-run-1"
    assert spec.command == ["prefect", "execute", "flow-run"]
    assert spec.labels == {
        "team": "x",
        "io.prefect.flow-run-id": "run-1",
        "io.prefect.flow-id": "flow-1",
        "io.prefect.flow-name": "my flow",
        "io.local-agent.agent": "agent-x",
    }
    assert spec.extra_hosts == {"host.docker.internal": "host-gateway"}
    assert spec.networks == []
    on_network = dataclasses.replace(IDENTITY, networks=["agent-net"])
    assert build_spec(make_run(DOCKER_STORAGE), "i:1", settings, on_network).networks == ["agent-net"]


@pytest.mark.parametrize(
    ("policy", "image", "present", "pull"),
    [
        (PullPolicy.DEFAULT, "busybox:1", True, False),
        (PullPolicy.DEFAULT, "busybox:1", False, True),
        (PullPolicy.DEFAULT, "registry:5000/team/img:1", True, True),  # names a registry: refresh
        (PullPolicy.DEFAULT, "team/img:1", True, False),  # Docker Hub namespace, not a registry
        (PullPolicy.NEVER, "registry:5000/img:1", False, False),
        (PullPolicy.ALWAYS, "busybox:1", True, True),
        (PullPolicy.IF_NOT_PRESENT, "registry:5000/img:1", True, False),
    ],
)
def test_pull_policy(policy: PullPolicy, image: str, present: bool, pull: bool) -> None:
    assert should_pull(policy, image, present) is pull
