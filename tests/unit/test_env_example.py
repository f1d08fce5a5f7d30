"""`.env.example` and `docker-compose.yml` must list exactly the settings the agent and server models define.

The set of names comes from the pydantic-settings models at test time, so adding a setting without documenting
it (or documenting one that was removed or renamed) fails here rather than confusing a user later.
"""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agent import settings as agent_settings
from server import settings as server_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO_ROOT / ".env.example"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# `# NAME=value` (documented default) or `NAME=value` (active line).
_ENTRY = re.compile(r"^#?\s?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


def env_example_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ENTRY.match(line.strip())
        if match:
            assert match["name"] not in entries, f"{match['name']} is listed twice in .env.example"
            entries[match["name"]] = match["value"].strip()
    return entries


def agent_fields() -> dict[str, FieldInfo]:
    return {agent_settings.env_name(name): f for name, f in agent_settings.Settings.model_fields.items()}


def server_fields() -> dict[str, FieldInfo]:
    prefix = server_settings.ServerSettings.model_config.get("env_prefix", "")
    return {f"{prefix}{name.upper()}": f for name, f in server_settings.ServerSettings.model_fields.items()}


def alias_names() -> set[str]:
    """Other env names the agent accepts (legacy token names): documented in comments, not as entries."""
    return set(agent_settings.TOKEN_ENV_NAMES) - set(agent_fields())


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_variables() -> set[str]:
    """Variables docker-compose.yml interpolates (`${NAME...}`), minus the escaped shell `$${...}` ones."""
    text = COMPOSE_FILE.read_text().replace("$$", "")
    return {m["name"] for m in _INTERPOLATION.finditer(text)}


def service_env(service: str) -> set[str]:
    env = compose()["services"][service].get("environment") or {}
    return set(env) if isinstance(env, dict) else {item.split("=", 1)[0] for item in env}


def image_env(stage: str) -> dict[str, str]:
    """The `ENV` values a Dockerfile stage sets itself (`ENV A=1 \\ B=2`, one or several lines)."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"(?m)^FROM ", text)
    (body,) = [part for part in stages if re.match(rf"\S+ AS {stage}\s", part)]
    found: dict[str, str] = {}
    for line in re.findall(r"(?m)^ENV (.+)$", body):
        found.update(re.findall(r"([A-Z][A-Z0-9_]*)=(\S+)", line))
    return found


@pytest.mark.parametrize(("service", "stage"), [("agent", "agent"), ("server", "server")])
def test_compose_keeps_the_image_defaults_when_a_variable_is_unset(service: str, stage: str) -> None:
    """Compose v1 passes an unset pass-through entry (`NAME:`) as an empty value, which wipes the image's own
    `ENV` default (it once switched the agent's health server off, so its healthcheck failed): every
    setting the image sets must be fixed or defaulted to the image's value in the compose file."""
    env = compose()["services"][service].get("environment") or {}
    assert isinstance(env, dict)
    wiped = {}
    for name, value in image_env(stage).items():
        if name not in env or not name.startswith(_SETTING_PREFIXES):
            continue
        written = "" if env[name] is None else str(env[name])
        if not (written == value or written.endswith(f":-{value}}}") or (written and "${" not in written)):
            wiped[name] = (written, value)
    assert not wiped, f"compose entries that would replace the image's default with nothing: {wiped}"


def test_every_agent_setting_is_documented() -> None:
    missing = set(agent_fields()) - set(env_example_entries())
    assert not missing, f"add to .env.example (see scripts/env_skeleton.py): {sorted(missing)}"


def test_every_server_setting_is_documented() -> None:
    missing = set(server_fields()) - set(env_example_entries())
    assert not missing, f"add to .env.example (see scripts/env_skeleton.py): {sorted(missing)}"


def test_env_example_names_nothing_that_does_not_exist() -> None:
    known = set(agent_fields()) | set(server_fields()) | compose_variables()
    unknown = set(env_example_entries()) - known
    assert not unknown, f".env.example lists names no model or docker-compose.yml knows: {sorted(unknown)}"
    assert not (alias_names() & set(env_example_entries())), "list aliases in comments, not as settings"


def test_every_compose_variable_is_documented() -> None:
    missing = compose_variables() - set(env_example_entries())
    assert not missing, f"docker-compose.yml interpolates undocumented variables: {sorted(missing)}"


def test_everything_in_env_example_is_commented_out() -> None:
    """A plain copy to `.env` must change nothing: every default stays the program's own."""
    active = [line for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z][A-Z0-9_]*=", line)]
    assert active == []


@pytest.mark.parametrize(("service", "fields"), [("agent", agent_fields), ("server", server_fields)])
def test_compose_passes_every_setting_through(service: str, fields: Any) -> None:
    """Setting a variable in `.env` must reach the program: compose passes only the keys it lists."""
    missing = set(fields()) - service_env(service)
    assert not missing, f"docker-compose.yml service {service!r} does not pass through {sorted(missing)}"


def _matches_default(documented: str, field: FieldInfo) -> bool:
    """The documented value is the model's default, compared by type (60 == 60.0, "" == None/[]/{})."""
    default = field.default
    if isinstance(default, bool):
        return documented.lower() == str(default).lower()
    if isinstance(default, int | float):
        return math.isclose(float(documented), float(default))
    if default is None or default in ([], {}):
        return documented == ""
    return documented == str(default)


@pytest.mark.parametrize("fields", [agent_fields, server_fields])
def test_documented_defaults_match_the_models(fields: Any) -> None:
    entries = env_example_entries()
    wrong = {}
    for name, field in fields().items():
        if field.default_factory is not None:
            default: Any = field.default_factory()
            if default in ([], {}) and entries.get(name) == "":
                continue
            # A computed default (e.g. a path under $HOME) is explained in the comment, not written out.
            if entries.get(name) != "":
                wrong[name] = (entries.get(name), "(computed: leave empty)")
            continue
        if field.default is PydanticUndefined:
            continue
        if name in entries and not _matches_default(entries[name], field):
            wrong[name] = (entries[name], field.default)
    assert not wrong, f".env.example documents wrong defaults (documented, model): {wrong}"


# ------------------------------------------------------------------------------------------------ deploy/


DEPLOY = REPO_ROOT / "deploy"
_SETTING_PREFIXES = ("PREFECT__CLOUD__", "LOCAL_AGENT_SERVER_")


def deploy_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def deploy_env_names() -> dict[str, set[str]]:
    """Setting-like names each deploy file mentions (env entries and comments alike), by file."""
    found: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".yml", ".yaml", ".env"):
            names = re.findall(rf"\b(?:{'|'.join(_SETTING_PREFIXES)})[A-Z0-9_]+", path.read_text())
            found[str(path.relative_to(REPO_ROOT))] = set(names)
    return found


def test_deploy_files_parse_and_use_only_real_settings() -> None:
    assert deploy_documents(), "no manifests under deploy/"
    known = set(agent_fields()) | set(server_fields())
    unknown = {path: sorted(names - known) for path, names in deploy_env_names().items() if names - known}
    assert not unknown, f"deploy/ sets names no settings model defines: {unknown}"


def test_deploy_grace_periods_outlast_the_agent_drain() -> None:
    """SIGTERM drains for DRAIN_TIMEOUT; the orchestrator must not SIGKILL before that (style guide §13)."""
    drain = agent_settings.Settings.model_fields["drain_timeout"].default
    agent_pods = [d["spec"]["template"]["spec"] for d in deploy_documents()
                  if d.get("kind") == "Deployment" and d["metadata"]["name"] == "local-agent"]
    assert agent_pods and all(pod["terminationGracePeriodSeconds"] > drain for pod in agent_pods)
    stack = yaml.safe_load((DEPLOY / "swarm" / "stack.yml").read_text())
    assert int(stack["services"]["agent"]["stop_grace_period"].rstrip("s")) > drain
    assert int(compose()["services"]["agent"]["stop_grace_period"].rstrip("s")) > drain
    unit = (DEPLOY / "systemd" / "local-agent.service").read_text()
    stop = int(re.search(r"docker stop --time (\d+)", unit)[1])  # type: ignore[index]
    assert drain < stop < int(re.search(r"TimeoutStopSec=(\d+)", unit)[1])  # type: ignore[index]
