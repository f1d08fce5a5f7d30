"""Settings: precedence (flag > env > secret file > config.toml), parsing, env names, `local-agent config`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.cli import build_parser, main, settings_from_args
from agent.settings import Settings, env_names, load_settings, parse_env_vars, parse_labels


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PREFECT__* from the developer's shell; Prefect's home is an empty temp dir."""
    for name in list(os.environ):
        if name.startswith("PREFECT__") or name.lower() == "prefect_cloud_agent_api_token":
            monkeypatch.delenv(name)
    home = tmp_path / "prefect-home"
    home.mkdir()
    monkeypatch.setenv("PREFECT__HOME_DIR", str(home))
    return home


def write_secret(tmp_path: Path, value: str) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "prefect_cloud_agent_api_token").write_text(value + "\n")
    return secrets


def test_defaults() -> None:
    s = load_settings()
    assert (s.api, s.name, s.labels, s.token, s.backend) == (
        "http://localhost:4200",
        "agent",
        [],
        None,
        "server",
    )
    assert (s.prefetch_seconds, s.long_poll_seconds, s.max_concurrent_launches, s.drain_timeout) == (
        10,
        10,
        10,
        30,
    )


def test_token_precedence_flag_env_file_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_env: Path
) -> None:
    (clean_env / "config.toml").write_text('[cloud]\napi_key = "from-toml-key"\n')
    assert load_settings().token == "from-toml-key"
    (clean_env / "config.toml").write_text('[cloud]\napi_key = "from-toml-key"\napi_token = "from-toml"\n')
    assert load_settings().token == "from-toml"
    secrets = write_secret(tmp_path, "from-file")
    assert load_settings(secrets_dir=secrets).token == "from-file"
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__SECRETS_DIR", str(secrets))
    assert load_settings().token == "from-file"  # the secrets dir is itself a setting
    for name, value in [
        ("PREFECT__CLOUD__API_KEY", "env-api-key"),
        ("PREFECT__CLOUD__API_TOKEN", "env-cloud-token"),
        ("PREFECT__CLOUD__AGENT__AUTH_TOKEN", "env-auth-token"),
        ("PREFECT__CLOUD__AGENT__API_TOKEN", "env-api-token"),
    ]:  # each later name outranks the earlier ones, and every env name outranks the file
        monkeypatch.setenv(name, value)
        assert load_settings().token == value
    assert load_settings(api_token="from-flag").token == "from-flag"


def test_flags_beat_env_and_toml(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / "config.toml").write_text(
        '[cloud]\napi = "http://toml:1"\n[cloud.agent]\nname = "toml-name"\n'
    )
    assert (load_settings().api, load_settings().name) == ("http://toml:1", "toml-name")
    monkeypatch.setenv("PREFECT__CLOUD__API", "http://env:2/")
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__NAME", "env-name")
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__LABELS", '["x", "y"]')
    assert (load_settings().api, load_settings().name, load_settings().labels) == (
        "http://env:2",
        "env-name",
        ["x", "y"],
    )
    args = build_parser().parse_args(
        ["start", "--api", "http://flag:3", "-n", "flag-name", "-l", "a", "-l", "b"]
    )
    s = settings_from_args(args)
    assert (s.api, s.name, s.labels) == ("http://flag:3", "flag-name", ["a", "b"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a,b , c", ["a", "b", "c"]),
        ('["a", "b"]', ["a", "b"]),
        ("['docker-test']", ["docker-test"]),  # the Python repr Prefect itself exports
        ("", []),
        (["a", "b,c", "a"], ["a", "b", "c"]),
    ],
)
def test_parse_labels(raw: object, expected: list[str]) -> None:
    assert parse_labels(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"A": "1", "B": 2}', {"A": "1", "B": "2"}),
        ("A=1,B=x=y", {"A": "1", "B": "x=y"}),
        ("A=1\nB=2", {"A": "1", "B": "2"}),
        (["A=1", "EMPTY="], {"A": "1", "EMPTY": ""}),
    ],
)
def test_parse_env_vars(raw: object, expected: dict[str, str]) -> None:
    assert parse_env_vars(raw) == expected


def test_env_vars_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__ENV_VARS", "A=1,B=2")
    assert load_settings().env_vars == {"A": "1", "B": "2"}
    args = build_parser().parse_args(["start", "-e", "C=3", "--env", "D=4"])
    assert settings_from_args(args).env_vars == {"C": "3", "D": "4"}


def test_bad_env_var_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "-e", "NOVALUE"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_every_field_has_an_env_name_and_a_flag() -> None:
    names = env_names()
    assert len(names) == len(Settings.model_fields)
    assert "PREFECT__CLOUD__API" in names and "PREFECT__CLOUD__AGENT__NO_PULL" in names
    assert all(n == "PREFECT__CLOUD__API" or n.startswith("PREFECT__CLOUD__AGENT__") for n in names)
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["start"]._actions}  # type: ignore[union-attr]
    assert set(Settings.model_fields) <= flags


def test_config_command_masks_the_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__LABELS", "a,b")
    assert main(["config", "-t", "super-secret-token", "--no-pull"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert "super-secret-token" not in out
    assert data["api_token"] == "**********" and data["backend"] == "cloud"
    assert data["labels"] == ["a", "b"] and data["no_pull"] is True
