"""Choosing the engine: `ENGINE=docker|swarm`, its settings, the runtime built for it, what `explain` shows
for a swarm service, and an engine that answers but cannot serve (a swarm node that is no manager)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.api.models import FlowRun
from agent.cli import build_parser, settings_from_args
from agent.exits import EXIT_DOCKER
from agent.explain import explain_run, render
from agent.launch.plan import Identity
from agent.runtime.docker import DockerRuntime
from agent.runtime.docker_types import DockerError
from agent.runtime.engines import open_runtime, swarm_options
from agent.runtime.swarm import SwarmRuntime
from agent.session import StartupError
from agent.settings import Settings
from tests.support.orchestration import Stage

SECRET = "s3cr3t-value-for-explain"


def test_docker_stays_the_default_engine_and_swarm_is_chosen_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().engine == "docker"
    assert type(open_runtime(Settings())) is DockerRuntime
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__ENGINE", "swarm")
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__SWARM_CONSTRAINTS", "node.role==worker, node.labels.pool!=gpu")
    settings = Settings()
    assert settings.engine == "swarm"
    runtime = open_runtime(settings)
    assert isinstance(runtime, SwarmRuntime)
    runtime.close()
    options = swarm_options(settings)
    assert options.constraints == ("node.role==worker", "node.labels.pool!=gpu")
    assert options.stop_grace == settings.cancel_grace_seconds


@pytest.mark.parametrize("bad", [{"engine": "kubernetes"}, {"swarm_constraints": "node.role"},
                                 {"swarm_network": "bad name"}, {"swarm_schedule_timeout": 0}])
def test_a_bad_engine_setting_is_refused_with_its_name(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**bad)
    assert next(iter(bad)) in str(refused.value)


def test_the_engine_flag_lists_its_choices_and_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__ENGINE", "docker")
    argv = ["start", "--engine", "swarm", "--swarm-constraints", "node.role==manager"]
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    assert settings.engine == "swarm" and settings.swarm_constraints == ["node.role==manager"]
    assert settings.runtime is None


def _run(host_config: dict[str, Any] | None) -> FlowRun:
    return FlowRun.model_validate({
        "id": "run-swarm-1", "version": 1, "state": "Scheduled",
        "run_config": {"type": "DockerRun", "env": {"API_KEY": SECRET}, "host_config": host_config},
        "flow": {"id": "f", "name": "fl", "core_version": "1.4.1",
                 "storage": {"type": "Docker", "image_name": "img", "image_tag": "1"}},
    })


def _explain(host_config: dict[str, Any] | None, **settings: Any) -> Any:
    identity = Identity("agent-x", [], "t", "http://host.docker.internal:4200", [])
    return explain_run(_run(host_config), Settings(engine="swarm", **settings), identity, image_present=True)


def test_explain_shows_the_replicated_job_service_with_secrets_masked() -> None:
    result = _explain({"mem_limit": "256m"}, swarm_constraints=["node.labels.pool==flows"])
    assert result.verdict == "launch", result.reason
    service = result.service
    assert service is not None
    text = json.dumps(service)
    assert SECRET not in text and "API_KEY=***" in text
    assert "ReplicatedJob" in text and "node.labels.pool==flows" in text
    assert "io.prefect.flow-run-id" in text
    rendered = render(result)
    assert "Swarm service (replicated job" in rendered and SECRET not in rendered


def test_explain_says_when_swarm_cannot_grant_a_run_config() -> None:
    result = _explain({"privileged": True}, allowed_run_overrides=["privileged"])
    assert result.verdict == "cannot launch"
    assert "privileged" in result.reason and "Swarm" in result.reason


def test_docker_engine_explains_no_service() -> None:
    identity = Identity("agent-x", [], "t", "http://host.docker.internal:4200", [])
    result = explain_run(_run(None), Settings(), identity, image_present=True)
    assert result.service is None and "Swarm service" not in render(result)


@pytest.mark.usefixtures("clean_prefect_env")
async def test_an_engine_that_answers_but_cannot_serve_stops_the_start(tmp_path: Path) -> None:
    async with Stage.open(tmp_path) as stage:
        async def not_a_manager() -> None:
            raise DockerError("This Docker engine is not a swarm manager: point the agent at a manager")

        stage.fake.before_next("host_id", not_a_manager)
        with pytest.raises(StartupError) as refused:
            await stage.start_agent()
        assert refused.value.exit_code == EXIT_DOCKER
        assert "not a swarm manager" in str(refused.value)
