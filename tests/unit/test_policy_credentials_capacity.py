"""Registry credentials (sources, secrecy), the concurrency limit's bookkeeping, and `explain` (no Docker)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.api.models import FlowRun
from agent.explain import explain_run, render
from agent.launch.capacity import Capacity
from agent.launch.plan import Identity
from agent.runtime.docker_types import ImagePullError
from agent.runtime.registry_auth import credentials_for, is_auth_error, parse_credentials, registry_of
from agent.settings import Settings

SECRET = "pa55-w0rd-xyz"


@pytest.fixture(autouse=True)
def clean_env(clean_prefect_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(clean_prefect_env / "docker-config"))  # no developer credentials


def test_agent_credentials_win_and_the_source_names_no_secret(tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("first\n")
    configured = json.dumps(
        {
            "https://Registry.Example.com:5000/": {"username": "ci", "password": SECRET},
            "ghcr.io": {"username": "me", "password_file": str(password_file)},
        }
    )
    auth = credentials_for("registry.example.com:5000/team/flow:1", configured)
    assert auth.auth_config == {
        "username": "ci",
        "password": SECRET,
        "serveraddress": "registry.example.com:5000",
    }
    assert "REGISTRY_CREDENTIALS for registry.example.com:5000 (user ci" in auth.source
    assert SECRET not in auth.source and SECRET not in repr(auth)
    assert credentials_for("ghcr.io/o/r", configured).auth_config["password"] == "first"  # type: ignore[index]
    password_file.write_text("rotated")  # re-read at every pull
    assert credentials_for("ghcr.io/o/r", configured).auth_config["password"] == "rotated"  # type: ignore[index]


def test_other_registries_fall_back_to_the_docker_config(tmp_path: Path) -> None:
    assert credentials_for("busybox", None).source == "no credentials for docker.io (anonymous pull)"
    (tmp_path / "docker-config").mkdir()
    config = {"auths": {"quay.io": {"auth": "dTpw"}}, "credHelpers": {"123.dkr.ecr.aws": "ecr-login"}}
    (tmp_path / "docker-config" / "config.json").write_text(json.dumps(config))
    assert credentials_for("quay.io/x/y", "{}").source.startswith("Docker config auths entry for quay.io")
    ecr = credentials_for("123.dkr.ecr.aws/flow:1", None)
    assert ecr.auth_config is None and "docker-credential-ecr-login" in ecr.source
    assert registry_of("prefecthq/prefect") == "docker.io"


def test_malformed_credentials_never_echo_the_password() -> None:
    typo = json.dumps({"r": {"username": "u", "password": SECRET, "pasword_file": 1}})
    for text in [typo, "{" + SECRET]:
        with pytest.raises(ValueError) as error:
            parse_credentials(text)
        assert SECRET not in str(error.value)


def test_auth_refusals_are_retried_once() -> None:
    assert is_auth_error(ImagePullError("r/x", "unauthorized: authentication required"))
    assert not is_auth_error(ImagePullError("r/x", "manifest unknown"))


def test_capacity_counts_docker_plus_reservations_and_releases_on_every_path() -> None:
    running = {"n": 1}

    async def count() -> int:
        return running["n"]

    async def scenario() -> None:
        capacity = Capacity(3, count)
        assert await capacity.free_slots() == 2
        assert await capacity.admit(["a", "b", "c"]) == ["a", "b"]
        assert await capacity.acquire("a") and await capacity.acquire("b")
        assert not await capacity.acquire("c")  # 1 running + 2 launching
        await capacity.release("a")  # a's launch failed: no container, slot back
        assert await capacity.acquire("c")
        running["n"] = 3  # b and c started; their reservations end
        await capacity.release("b")
        await capacity.release("c")
        assert await capacity.free_slots() == 0 and capacity.reserved == 0
        assert await Capacity(0, count).admit(["x"] * 50) == ["x"] * 50  # unlimited

    asyncio.run(scenario())


def explain_for(host_config: dict[str, Any] | None, **settings: Any) -> Any:
    run = FlowRun.model_validate(
        {
            "id": "run-9",
            "version": 1,
            "state": "Scheduled",
            "run_config": {"type": "DockerRun", "env": {"FROM_RUN": "1"}, "host_config": host_config},
            "flow": {
                "id": "f",
                "name": "fl",
                "core_version": "1.4.1",
                "storage": {"type": "Docker", "image_name": "img", "image_tag": "1"},
            },
        }
    )
    identity = Identity("agent-x", [], "t", "http://host.docker.internal:4200", [])
    return explain_run(run, Settings(api_token="tok-" + SECRET, **settings), identity, image_present=True)


def test_explain_gives_each_field_its_source_and_masks_secrets() -> None:
    result = explain_for({"mem_limit": "2g"}, env_vars={"FROM_AGENT": "x"}, max_memory="1g")
    sources = {d.field: d.source for d in result.fields}
    assert result.verdict == "launch"
    assert sources["env FROM_RUN"] == "run config"
    assert sources["env FROM_AGENT"] == "PREFECT__CLOUD__AGENT__ENV_VARS"
    assert sources["env PREFECT__CONTEXT__FLOW_RUN_ID"] == "flow runner (fixed)"
    assert sources["label io.prefect.flow-run-id"] == "flow runner (fixed)"
    assert [d.source for d in result.fields if d.field == "mem_limit"] == [
        "agent setting",
        "run config",
        "policy clamp",
    ]
    text = render(result)
    assert SECRET not in text and "env PREFECT__CLOUD__API_KEY = ***    [flow runner (fixed)]" in text
    assert "mem_limit = 2g    [run config]" in text and "mem_limit = 1g    [policy clamp: " in text
    assert "env PREFECT__CLOUD__USE_LOCAL_SECRETS = false" in text and "pull policy default" in text


def test_explain_reports_a_denial() -> None:
    result = explain_for({"privileged": True})
    assert result.verdict == "denied" and "--allowed-run-overrides privileged" in result.reason
    assert "DENIES" in render(result)
