"""The CLI as a Prefect 1.x user meets it: help that says what each option does, their old agent flags,
and errors that show the usage of the subcommand they typed."""

from __future__ import annotations

import argparse
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from agent.cli import build_parser, main, settings_from_args
from agent.cli_flags import GROUPS, REFUSED, agent_address
from agent.settings import Settings, env_name
from agent.settings_help import SETTING_HELP

COMMANDS = ("start", "config", "explain", "check")
# A Prefect 1.x user's `prefect agent docker start` line, flag for flag.
PREFECT_LINE = [
    "-k", "pcu_key-1234", "--api", "http://prefect:4200", "-n", "habit", "-l", "docker", "--label", "prod",
    "-e", "A=1", "--env", "B=2", "--network", "flows", "--volume", "/data:/data:ro", "-v", "cache:/cache",
    "--show-flow-logs", "--no-pull", "--log-level", "DEBUG", "--agent-address", "http://0.0.0.0:8080",
    "--no-cloud-logs", "--docker-client-timeout", "90", "-b", "unix:///var/run/docker.sock",
]


@pytest.fixture(autouse=True)
def isolated(clean_prefect_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PREFECT__* from the shell, no secret files, and a fixed terminal width for `--help`."""
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__SECRETS_DIR", str(clean_prefect_env / "no-secrets"))
    monkeypatch.setenv("COLUMNS", "100")


def run(*argv: str) -> tuple[int, str, str]:
    """`main(argv)` with its exit code (argparse's SystemExit included), stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def help_of(command: str) -> str:
    code, out, _ = run(command, "--help")
    assert code == 0
    return out


def option_entry(help_text: str, flag: str) -> str:
    """The help entry of `flag` (its invocation line to the next option), whitespace normalised."""
    match = re.search(rf"^  ((?:-\w, )*{re.escape(flag)}\b.*?)(?=^  -|^\S|\Z)", help_text, re.M | re.S)
    assert match, f"{flag} not in help"
    return " ".join(match.group(1).split())


def config_of(*argv: str) -> dict[str, Any]:
    code, out, err = run("config", *argv)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


# ---------------------------------------------------------------------------------------------- 1. sentences
def test_every_setting_has_one_sentence_and_no_sentence_outlives_its_setting() -> None:
    assert set(SETTING_HELP) == set(Settings.model_fields)
    for name, sentence in SETTING_HELP.items():
        assert sentence[0].isupper() and sentence.endswith("."), name
        assert not sentence.lower().startswith(("sets ", "set ", "env ")), name
        assert not re.search(r"\.\s+[A-Z]", sentence.replace("e.g. ", "")), f"{name}: more than one sentence"


def test_every_setting_is_in_exactly_one_help_group() -> None:
    grouped = [name for _, names in GROUPS for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields)
    assert "other settings" not in help_of("start")


# ------------------------------------------------------------------------------------------------ 2. help
@pytest.mark.parametrize("command", COMMANDS)
def test_each_option_shows_its_sentence_env_name_and_default(command: str) -> None:
    text = help_of(command)
    flat = " ".join(text.split())
    for name in Settings.model_fields:
        assert " ".join(SETTING_HELP[name].split()) in flat, name
        assert f"env {env_name(name)}" in flat, name
    for title, _ in GROUPS:
        assert f"\n{title}:\n" in text
    assert "PosixPath" not in text and "SecretStr" not in text and "[]" not in text and "{}" not in text
    assert "True" not in text and "False" not in text and "None" not in text


@pytest.mark.parametrize(
    ("flag", "shown"),
    [
        ("--secrets-dir", "default: /run/secrets)"),
        ("--cleanup-interval", "default: 300)"),
        ("--docker-timeout", "default: 60)"),
        ("--name", "default: agent)"),
        ("--max-concurrent-runs", "default: 0)"),
        ("--init", "default: on)"),
        ("--no-pull", "default: off)"),
        ("--show-flow-logs", "default: off)"),
        ("--host-root", "default: / on the host, none in a container)"),
        ("--label", "(env PREFECT__CLOUD__AGENT__LABELS; repeatable)"),
        ("--base-url", "(env PREFECT__CLOUD__AGENT__BASE_URL)"),
    ],
)
def test_defaults_read_as_a_user_would_type_them(flag: str, shown: str) -> None:
    assert option_entry(help_of("start"), flag).endswith(shown)


def test_the_help_never_shows_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__API_TOKEN", "tok-secret-4242")
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__REGISTRY_CREDENTIALS",
                       '{"r.example.com": {"username": "u", "password": "pw-secret-4242"}}')
    text = help_of("start")
    assert "secret-4242" not in text
    for flag in ("--token", "--registry-credentials"):
        assert "default:" not in option_entry(text, flag)


def test_choices_are_listed_and_enforced_by_argparse() -> None:
    text = help_of("start")
    assert "--pull-policy {default,always,if-not-present,never}" in text
    assert "--engine {docker,swarm,podman}" in text
    assert "--level, --log-level {DEBUG,INFO,WARNING,ERROR,CRITICAL}" in text
    code, _, err = run("config", "--pull-policy", "sometimes")
    assert code == 2
    assert err.startswith("usage: local-agent config")
    assert "invalid choice: 'sometimes'" in err and "'if-not-present'" in err
    assert config_of("--pull-policy", "if-not-present")["pull_policy"] == "if-not-present"
    assert config_of("--log-level", "debug", "--flow-log-level", "warning")["level"] == "DEBUG"


def test_env_and_files_keep_their_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    """Choices belong to the flags: the environment still goes through the settings' own validation."""
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__PULL_POLICY", "always")
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__LEVEL", "warning")
    data = config_of()
    assert (data["pull_policy"], data["level"]) == ("always", "WARNING")
    assert config_of("--pull-policy", "never")["pull_policy"] == "never"  # a flag still beats env
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__PULL_POLICY", "sometimes")
    code, _, err = run("config")
    assert code == 2 and "invalid configuration: pull_policy" in err


# ------------------------------------------------------------------------------------------ 3. Prefect flags
def test_a_prefect_docker_agent_command_line_works_as_typed() -> None:
    data = config_of(*PREFECT_LINE)
    assert data["api_token"] == "**********" and data["backend"] == "cloud"
    assert (data["api"], data["name"], data["labels"]) == ("http://prefect:4200", "habit", ["docker", "prod"])
    assert data["env_vars"] == {"A": "1", "B": "2"} and data["network"] == ["flows"]
    assert data["volumes"] == ["/data:/data:ro", "cache:/cache"]
    assert data["show_flow_logs"] is True and data["no_pull"] is True and data["level"] == "DEBUG"
    assert data["health_address"] == "0.0.0.0:8080" and data["send_flow_run_logs"] is False
    assert data["docker_timeout"] == 90.0 and data["base_url"] == "unix:///var/run/docker.sock"


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        (["-k", "abc"], ["--token", "abc"]),
        (["--key", "abc"], ["-t", "abc"]),
        (["--log-level", "ERROR"], ["--level", "ERROR"]),
        (["--agent-address", "http://0.0.0.0:8080"], ["--health-address", "0.0.0.0:8080"]),
        (["--agent-address", "0.0.0.0:8080"], ["--health-address", "0.0.0.0:8080"]),
        (["--agent-address", "http://localhost:9000/"], ["--health-address", "localhost:9000"]),
        (["--no-cloud-logs"], ["--no-send-flow-run-logs"]),
        (["--docker-client-timeout", "5"], ["--docker-timeout", "5"]),
        (["-b", "tcp://h:2376"], ["--base-url", "tcp://h:2376"]),
        (["-f"], ["--show-flow-logs"]),
        (["-a", "http://x:1"], ["--api", "http://x:1"]),
        (["-n", "x"], ["--name", "x"]),
        (["-l", "a", "-l", "b"], ["--label", "a,b"]),
        (["-e", "K=V"], ["--env", "K=V"]),
        (["-v", "/a:/b"], ["--volume", "/a:/b"]),
    ],
)
def test_prefect_aliases_mean_the_same_setting(alias: list[str], canonical: list[str]) -> None:
    def settings(argv: list[str]) -> Settings:
        return settings_from_args(build_parser().parse_args(["start", *argv]))

    assert settings(alias) == settings(canonical)
    assert settings(alias) != Settings()


@pytest.mark.parametrize("bad", ["https://0.0.0.0:8080", "http://0.0.0.0:8080/api", "tcp://h:1"])
def test_an_agent_address_the_health_server_cannot_serve_is_refused(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        agent_address(bad)
    code, _, err = run("config", "--agent-address", bad)
    assert code == 2 and err.startswith("usage: local-agent config") and "--agent-address" in err


REFUSAL_WORDS = {
    "--tenant-id": "token", "--max-polls": "SIGTERM", "--agent-config-id": "PREFECT__CLOUD__AGENT__",
    "--no-docker-interface": "host.docker.internal", "--reg-allow-list": "registry.example.com/*",
    "--import-path": "image",
}


@pytest.mark.parametrize(("flags", "takes_value"), [(flags, value) for flags, value, _ in REFUSED])
def test_prefect_flags_without_an_equivalent_are_refused_with_the_replacement(
    flags: tuple[str, ...], takes_value: bool
) -> None:
    assert set(REFUSAL_WORDS) == {names[-1] for names, _, _ in REFUSED}
    for flag in flags:
        for argv in ([flag, "x"], [f"{flag}=x"], [flag]) if takes_value else ([flag],):
            code, out, err = run("start", *argv, "--name", "n")
            assert code == 2, argv
            assert out == "" and err.count("\n") == 1, err
            assert err.startswith(f"local-agent start: {flag} is a Prefect 1.x flag")
            assert REFUSAL_WORDS[flags[-1]] in err and "unrecognized" not in err
    code, _, err = run("check", flags[-1], *(["x"] if takes_value else []))
    assert code == 1 and flags[-1] in err  # `check` keeps its rule: bad arguments are 1, never 2


def test_refused_flags_are_named_in_the_help() -> None:
    flat = " ".join(help_of("start").split())
    assert all(flags[-1] in flat for flags, _, _ in REFUSED)
    assert "--agent-address" in flat and "--no-cloud-logs" in flat


# ------------------------------------------------------------------------------------------------ 4. errors
@pytest.mark.parametrize(("command", "expected"), [("start", 2), ("config", 2), ("explain", 2), ("check", 1)])
def test_an_unknown_flag_shows_the_subcommand_usage(command: str, expected: int) -> None:
    extra = ["run-id"] if command == "explain" else []
    code, out, err = run(command, *extra, "--bogus")
    assert code == expected and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: local-agent {command} [options]")
    assert lines[-1] == f"local-agent {command}: error: unrecognized arguments: --bogus"


def test_a_near_miss_gets_a_suggestion() -> None:
    code, _, err = run("start", "--lable", "x")
    assert code == 2
    assert err.splitlines()[-1].endswith("unrecognized arguments: --lable x (did you mean --label?)")


def test_without_a_subcommand_the_top_level_usage_remains() -> None:
    code, _, err = run()
    assert code == 2 and err.startswith("usage: local-agent [-h]")
