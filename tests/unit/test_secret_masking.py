"""Secrets never reach a log line, `local-agent config`, `local-agent explain` or the DEBUG container spec.

Two rules (`agent.ops.redact`): env vars with secret-looking names show `***`, and every URL shows its
password as `***`. Hypothesis generates the secrets (any printable text of 4+ characters, `@ : * ( [ \\`
included) and the names; each test asserts the raw secret appears nowhere in what a person would see.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from loguru import logger

from agent.api.models import FlowRun
from agent.cli import main
from agent.explain import explain_run, render
from agent.launch.plan import Identity, describe, plan_container
from agent.ops.logs import SECRETS, configure_logging
from agent.ops.redact import (
    MASK,
    MIN_REGISTERED,
    env_secrets,
    is_secret_name,
    mask_env,
    mask_urls,
    url_passwords,
)
from agent.runtime.registry_auth import credentials_for
from agent.settings import Settings, settings_secrets
from agent.supervise.flow_logs import FlowLogStreamer
from tests.support import api
from tests.support.server_fixtures import REPO_ROOT, ServerHandle

PRINTABLE = st.characters(categories=("L", "M", "N", "P", "S"), include_characters=" ")
# A URL's password cannot hold whitespace or `/ ? #` unencoded (they end the authority): those must be
# percent-encoded, and then they are no longer themselves in the URL.
URL_SAFE = st.characters(categories=("L", "M", "N", "P", "S"), exclude_characters="/?#")
SECRET = st.text(PRINTABLE, min_size=4, max_size=40).filter(lambda s: s.strip() == s and s.strip())
URL_PASSWORD = st.text(URL_SAFE, min_size=4, max_size=40)
SECRET_WORDS = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "KEY", "PASSPHRASE"]
NAME_PART = st.from_regex(r"[A-Za-z0-9_]{0,12}", fullmatch=True)
EXAMPLES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def secret_names(draw: st.DrawFn) -> str:
    """Names the rule must catch: a secret word anywhere, in any case; KEY(S) ending a word."""
    word = draw(st.sampled_from(SECRET_WORDS))
    suffix = draw(st.sampled_from(["", "S", "_ID", "_1", "-file", ".x", "S_PATH", "2"]) if word == "KEY"
                  else NAME_PART)
    word = "".join(c.lower() if draw(st.booleans()) else c for c in word)
    return draw(NAME_PART) + word + suffix


@pytest.fixture(autouse=True)
def clean_env(clean_prefect_env: Path) -> Iterator[None]:
    yield
    SECRETS.reset()


@contextlib.contextmanager
def captured_log(secrets: list[str] | None = None) -> Iterator[io.StringIO]:
    """The agent's real log configuration, writing to a buffer."""
    out = io.StringIO()
    configure_logging("DEBUG", secrets=secrets or [], stream=out)
    try:
        yield out
    finally:
        logger.remove()
        logger.configure(patcher=lambda record: None)
        logging.basicConfig(handlers=[], force=True)
        SECRETS.reset()


# ---------------------------------------------------------------- the rules
@pytest.mark.parametrize(
    ("name", "secret"),
    [("API_KEY", True), ("apiKey", True), ("AWS_SECRET_ACCESS_KEY", True), ("SSH_KEYS", True),
     ("KEY_1", True), ("PREFECT__CONTEXT__FLOW_RUN_KEY", True), ("db_passwd", True), ("MY_TOKEN", True),
     ("PREFECT__CLOUD__AGENT__REGISTRY_CREDENTIALS", True), ("GPG_PASSPHRASE", True),
     ("KEYCLOAK_URL", False), ("KEYBOARD", False), ("PATH", False), ("PWD", False),
     ("PREFECT__CLOUD__API", False), ("PREFECT__CLOUD__USE_LOCAL_SECRETS", False)],
)
def test_which_env_names_are_secret(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


@given(secret_names())
def test_every_name_with_a_secret_word_is_secret(name: str) -> None:
    assert is_secret_name(name), name


@pytest.mark.parametrize(
    ("text", "masked"),
    [("http://u:p4ss@h/x", "http://u:***@h/x"),
     ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
     ("postgres://app:p@ss:w@db/x?sslmode=1", "postgres://app:***@db/x?sslmode=1"),
     ("tcp://me@corp.com:pw@docker:2376", "tcp://me@corp.com:***@docker:2376"),
     ("api=_https://a:b@h, docker ssh://c:d@e", "api=_https://a:***@h, docker ssh://c:***@e"),
     ("'http://u:p@h', 'x@y' http://host:80 or a@b", "'http://u:***@h', 'x@y' http://host:80 or a@b"),
     ("https://host/path?u=a:b@c", "https://host/path?u=a:b@c")],
)
def test_url_passwords_are_masked_and_nothing_else(text: str, masked: str) -> None:
    assert mask_urls(text) == masked


@given(st.from_regex(r"[a-z][a-z0-9+.\-]{0,10}", fullmatch=True), st.from_regex(r"[a-zA-Z0-9._%-]{0,10}",
                                                                               fullmatch=True), URL_PASSWORD)
@example("http", "user", "p@ss:w*rd(x)[y]\\z$^|")
def test_any_url_password_is_masked(scheme: str, user: str, password: str) -> None:
    url = f"{scheme}://{user}:{password}@db.example:5432/app?x=1"
    masked = f"{scheme}://{user}:***@db.example:5432/app?x=1"
    assert mask_urls(f"connect to {url} now") == f"connect to {masked} now"
    assert password in url_passwords(url)


# ---------------------------------------------------------------- log lines
def log_lines_with(password: str, proxy_password: str) -> str:
    """What the log handlers write for three lines carrying URL passwords, timestamps cut off."""
    with captured_log() as out:
        logger.info("Agent successfully connected to Prefect Cloud at {url}",
                    url=f"https://agent:{password}@api.example/graphql")
        logging.getLogger("urllib3").warning("proxy http://proxy:%s@proxy.example:3128 refused",
                                             proxy_password)
        try:
            raise ConnectionError(f"cannot reach tcp://docker:{password}@docker.example:2376")
        except ConnectionError:
            logger.exception("docker down")
        text = out.getvalue()
    return re.sub(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+", "", text)


@EXAMPLES
@given(URL_PASSWORD, URL_PASSWORD)
def test_url_passwords_never_reach_a_log_line(password: str, proxy_password: str) -> None:
    text = log_lines_with(password, proxy_password)
    # A password that is part of the lines' own text ("succ", a line number) proves nothing either way.
    neutral = log_lines_with("S3NT1NEL-A", "S3NT1NEL-B")
    assume(password not in neutral and proxy_password not in neutral)
    assert password not in text and proxy_password not in text, text
    assert "https://agent:***@api.example/graphql" in text and "http://proxy:***@proxy.example" in text
    assert "tcp://docker:***@docker.example:2376" in text


def agent_settings(**values: Any) -> Settings:
    return Settings(api_token="tok-agent-secret-0001", **values)


def test_short_or_flag_values_are_not_registered_as_secrets() -> None:
    """Registered values are masked in every line: `CACHE_KEY=default` must not blank every "default"."""
    env = {"CACHE_KEY": "default", "MAX_KEYS": "10", "USE_TOKEN": "true", "API_KEY": "k3y-9x!z"}
    assert env_secrets(env) == ["k3y-9x!z"]


@EXAMPLES
@given(secret_names(), SECRET.filter(lambda s: len(s) >= MIN_REGISTERED), URL_PASSWORD)
def test_secret_env_vars_and_url_passwords_are_known_secrets_from_start(
    name: str, secret: str, password: str
) -> None:
    """A Docker error echoing an agent `ENV_VARS` value (say, in a bad option), or a client quoting the
    API's password outside its URL, is masked all the same."""
    current = agent_settings(env_vars={name: secret}, api=f"http://agent:{password}@api.example")
    with captured_log(settings_secrets(current)) as out:
        logger.error("docker: invalid value for {v} in option", v=secret)
        logger.warning("api at {url} said {msg}", url=current.api, msg=f"bad password {password}")
        text = out.getvalue()
    baseline = "docker: invalid value for  in option api at http://agent:***@api.example said bad password"
    assume(secret not in baseline and password not in baseline)
    assert secret not in text and password not in text, text


# ---------------------------------------------------------------- `local-agent config`
def run_config_command(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config", *args]) == 0
    text = out.getvalue()
    data: dict[str, Any] = json.loads(text)
    return {"text": text, "data": data, "all": "\n".join(strings(data))}


def strings(data: Any) -> Iterator[str]:
    """Every string in JSON data, keys included: what a reader sees once the JSON escapes are undone."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from strings(value)
    elif isinstance(data, list):
        for item in data:
            yield from strings(item)


@EXAMPLES
@given(secret_names(), SECRET, URL_PASSWORD)
@example("DB_PASSWORD", "x" * 4, "pw:@pw")
def test_config_masks_secret_env_vars_and_url_passwords(name: str, secret: str, password: str) -> None:
    assume("=" not in name and name.strip() == name and not name.startswith("-"))
    # A distinctive head keeps a short generated value ("fals", "0000") from matching the printed defaults.
    secret, password = f"s3Q{secret}", f"p4W{password}"
    other = password[::-1]  # the label's is no known secret (DATABASE_URL's is): the URL rule alone masks it
    printed = run_config_command(
        f"--env={name}={secret}", "--env=DATABASE_URL=postgres://app:" + other + "@db:5432/app",
        f"--api=https://agent:{password}@api.example", f"--base-url=tcp://docker:{password}@docker.example:2376",
        f"--container-label=proxy=http://p:lbl{other}@proxy.example")
    baseline = run_config_command(f"--env={name}=PLACEHOLDER", "--env=DATABASE_URL=postgres://app:x@db",
                                  "--api=https://agent:x@api.example")["all"]
    assume(secret not in baseline and password not in baseline and other not in baseline)
    assume(secret not in name)
    data = printed["data"]
    assert data["env_vars"][name] == MASK
    assert data["env_vars"]["DATABASE_URL"] == "postgres://app:***@db:5432/app"
    assert data["api"] == "https://agent:***@api.example"
    assert data["base_url"] == "tcp://docker:***@docker.example:2376"
    assert data["container_labels"]["proxy"] == "http://p:***@proxy.example"
    for shown in (printed["text"], printed["all"]):
        assert secret not in shown and password not in shown and other not in shown, shown


def test_config_as_a_process_masks_env_settings() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT__", "DOCKER_"))}
    env.update({"PREFECT__HOME_DIR": os.environ["PREFECT__HOME_DIR"],
                "PREFECT__CLOUD__API": "http://agent:api-pw-8812@127.0.0.1:4200",
                "PREFECT__CLOUD__AGENT__API_TOKEN": "tok-sub-9931",
                "PREFECT__CLOUD__AGENT__ENV_VARS": json.dumps({"DB_PASSWORD": "db-pw-4471", "MODE": "x"}),
                "PREFECT__CLOUD__AGENT__BASE_URL": "ssh://ops:ssh-pw-1207@docker.example"})
    done = subprocess.run([sys.executable, "-m", "agent", "config"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for secret in ("api-pw-8812", "tok-sub-9931", "db-pw-4471", "ssh-pw-1207"):
        assert secret not in done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["env_vars"] == {"DB_PASSWORD": "***", "MODE": "x"}
    assert data["api"] == "http://agent:***@127.0.0.1:4200" and data["api_token"] == "**********"


# ---------------------------------------------------------------- `local-agent explain` and the DEBUG spec
def flow_run(env: dict[str, str]) -> FlowRun:
    return FlowRun.model_validate({
        "id": "run-1", "version": 1, "state": "Scheduled",
        "run_config": {"type": "DockerRun", "env": env, "labels": []},
        "flow": {"id": "f", "name": "fl", "core_version": "1.4.1",
                 "storage": {"type": "Docker", "image_name": "img", "image_tag": "1"}},
    })


IDENTITY = Identity("agent-x", [], "t", "http://host.docker.internal:4200", [])


def run_env(secret: str, password: str, name: str = "MY_TOKEN") -> dict[str, str]:
    return {"DB_PASSWORD": secret, "API_KEY": secret[::-1], name: secret + "!",
            "DATABASE_URL": f"postgres://app:{password}@db:5432/app", "PLAIN": "visible"}


def explained(env: dict[str, str], agent_secret: str) -> tuple[str, str, dict[str, Any]]:
    current = agent_settings(env_vars={"AGENT_SECRET": agent_secret})
    result = explain_run(flow_run(env), current, IDENTITY, image_present=True)
    data = result.as_dict()
    shown = json.dumps(data) + "\n".join(strings(data))
    return render(result), shown, {f["field"]: f["value"] for f in data["fields"]}


@EXAMPLES
@given(SECRET, URL_PASSWORD, secret_names())
@example("p@ss:w*rd(x)[y]\\z$^|", "p@ss:w*rd", "MY_TOKEN")
def test_explain_masks_secret_env_and_url_passwords(secret: str, password: str, name: str) -> None:
    text, as_json, fields = explained(run_env(secret, password, name), secret + "@agent")
    baseline_text, baseline_json, _ = explained(run_env("PLACEHOLDER", "x", name), "PLACEHOLDER-2")
    for raw in (secret, secret[::-1], password):
        assume(raw not in baseline_text + baseline_json)
    for key in ("DB_PASSWORD", "API_KEY", name, "AGENT_SECRET", "PREFECT__CLOUD__API_KEY"):
        assert fields[f"env {key}"] == MASK, key
    assert fields["env DATABASE_URL"] == "postgres://app:***@db:5432/app"
    assert fields["env PLAIN"] == "visible" and fields["env PREFECT__CLOUD__USE_LOCAL_SECRETS"] == "false"
    for shown in (text, as_json):
        for raw in (secret, secret[::-1], password, "tok-agent-secret-0001"):
            assert raw not in shown, shown


@EXAMPLES
@given(SECRET, URL_PASSWORD)
def test_the_debug_spec_line_masks_secret_env(secret: str, password: str) -> None:
    current = agent_settings(env_vars={"DB_PASSWD": secret + "#2"})
    spec = plan_container(flow_run(run_env(secret, password)), "img:1", current, IDENTITY).spec
    assert mask_env(spec.environment)["DB_PASSWORD"] == MASK
    with captured_log() as out:  # no known secrets: the rules alone must mask (as in pipeline.launch_claimed)
        logger.opt(lazy=True).debug("container spec for flow run {id}: {spec}", id=lambda: "run-1",
                                    spec=lambda: describe(spec))
        text = out.getvalue()
    baseline = str(describe(plan_container(flow_run(run_env("PLACEHOLDER", "x")), "img:1",
                                           agent_settings(), IDENTITY).spec))
    for raw in (secret, secret[::-1], password):
        assume(raw not in baseline)
    assert "'DB_PASSWORD': '***'" in text and "postgres://app:***@db:5432/app" in text
    for raw in (secret, secret[::-1], secret + "#2", password, "tok-agent-secret-0001"):
        assert raw not in text, text


def test_explain_as_a_process_masks_run_config_env_and_urls(server: ServerHandle, tmp_path: Path) -> None:
    """The real CLI against the real server: the API URL carries a password, the run's DockerRun secrets."""
    env_vars = run_env("db-pw-0042", "url-pw-0043")
    flow_id = api.register_docker_flow(server, name="masked", image_name="local/none", image_tag="1",
                                       run_config={"type": "DockerRun", "env": env_vars})
    run_id = api.create_flow_run(server, flow_id, run_config={"type": "DockerRun", "env": env_vars})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT__", "DOCKER_"))}
    env.update({"PREFECT__HOME_DIR": str(tmp_path),
                "PREFECT__CLOUD__API": server.url.replace("http://", "http://agent:api-pw-0044@"),
                "PREFECT__CLOUD__AGENT__BASE_URL": "tcp://docker:dock-pw-0045@127.0.0.1:9",
                "PREFECT__CLOUD__AGENT__ENV_VARS": json.dumps({"AGENT_PASSWORD": "agent-pw-0046"})})
    done = subprocess.run([sys.executable, "-m", "agent", "explain", run_id, "--json"], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    for secret in ("db-pw-0042", "0042-wp-bd", "url-pw-0043", "api-pw-0044", "dock-pw-0045", "agent-pw-0046"):
        assert secret not in done.stdout + done.stderr, secret
    fields = {f["field"]: f["value"] for f in json.loads(done.stdout)["fields"]}
    assert fields["env DB_PASSWORD"] == fields["env API_KEY"] == fields["env MY_TOKEN"] == MASK
    assert fields["env AGENT_PASSWORD"] == MASK
    assert fields["env DATABASE_URL"] == "postgres://app:***@db:5432/app"
    assert fields["env PREFECT__CLOUD__API"].startswith("http://agent:***@")


# ---------------------------------------------------------------- registry passwords: one registry of secrets
REGISTRY_TOKEN = "tok-registry-0123456789"
REGISTRY_PASSWORD = "registry-pass-4f2a"
ROTATED = "rotated-pass-77e1"


@pytest.fixture
def registry_settings(tmp_path: Path) -> Settings:
    secret_file = tmp_path / "ghcr"
    secret_file.write_text(REGISTRY_PASSWORD + "-file\n")
    credentials = {"reg.example.com": {"username": "ci", "password": REGISTRY_PASSWORD},
                   "ghcr.io": {"username": "me", "password_file": str(secret_file)}}
    return Settings(api_token=REGISTRY_TOKEN, registry_credentials=json.dumps(credentials))


class FakeLogs:
    """`follow_logs` of a runtime whose container printed `chunks`."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def follow_logs(self, container_id: str, since: float | None = None) -> Iterator[bytes]:
        return iter(self.chunks)


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_settings_secrets_are_the_token_and_every_registry_password(registry_settings: Settings) -> None:
    assert sorted(settings_secrets(registry_settings)) == sorted(
        [REGISTRY_TOKEN, REGISTRY_PASSWORD, REGISTRY_PASSWORD + "-file"])


def test_registry_passwords_are_masked_in_the_agents_log(registry_settings: Settings) -> None:
    with captured_log(settings_secrets(registry_settings)) as log_stream:
        logger.info(f"auth {REGISTRY_PASSWORD} and {REGISTRY_PASSWORD}-file and {REGISTRY_TOKEN}")
        logging.getLogger("docker.auth").warning("sending %s", REGISTRY_PASSWORD)
        text = log_stream.getvalue()
    assert REGISTRY_PASSWORD not in text and REGISTRY_TOKEN not in text, text
    assert "auth *** and *** and ***" in text


def test_a_rotated_password_file_is_masked_once_a_pull_reads_it(registry_settings: Settings) -> None:
    with captured_log(settings_secrets(registry_settings)) as log_stream:
        secret_file = Path(json.loads(registry_settings.registry_credentials.get_secret_value())  # type: ignore[union-attr]
                           ["ghcr.io"]["password_file"])
        secret_file.write_text(ROTATED)
        raw = registry_settings.registry_credentials.get_secret_value()  # type: ignore[union-attr]
        assert credentials_for("ghcr.io/me/flow:1", raw).auth_config["password"] == ROTATED  # type: ignore[index]
        logger.warning(f"pull refused for {ROTATED}")
        out = io.StringIO()
        streamer = FlowLogStreamer(FakeLogs([f"env PW={ROTATED}\n".encode()]), [], stream=out)
        streamer.follow("c1", "run")
        wait_for(lambda: "PW=" in out.getvalue())
        streamer.stop()
        assert ROTATED not in log_stream.getvalue() + out.getvalue()
        assert "pull refused for ***" in log_stream.getvalue() and out.getvalue() == "run | env PW=***\n"
