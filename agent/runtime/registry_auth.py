"""Credentials for image pulls, and a log line saying which source was used (never the secret).

Sources, first match wins:

1. The agent's own per-registry credentials: `PREFECT__CLOUD__AGENT__REGISTRY_CREDENTIALS` (or the secret
   file `prefect_cloud_agent_registry_credentials`), a JSON object
   `{"registry.example.com": {"username": "ci", "password": "..."}, "ghcr.io": {"username": "me",
   "password_file": "/run/secrets/ghcr"}}`. A `password_file` is re-read at every pull, so a rotated
   password (an ECR token refreshed by a cron job, peers point 7) applies without restarting the agent.
2. Docker's own configuration (`DOCKER_CONFIG` or `~/.docker/config.json`: `auths`, `credsStore`,
   `credHelpers`): docker-py resolves it when no credentials are passed, re-reading it before each pull.
3. Nothing: an anonymous pull.

A pull refused for authentication is retried once with freshly resolved credentials (helpers hand out new
tokens, files may have been rotated meanwhile).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.auth
import docker.utils.config

from agent.ops.logs import SECRETS
from agent.runtime.docker_types import ImagePullError
from agent.runtime.images import DOCKER_HUB, HUB_ALIASES, split_image

_AUTH_ERRORS = ("unauthorized", "authentication required", "no basic auth credentials", "denied",
                "token has expired", "token expired", "401")
SETTING = "PREFECT__CLOUD__AGENT__REGISTRY_CREDENTIALS"


@dataclass(frozen=True)
class RegistryCredential:
    username: str
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None

    def secret(self) -> str:
        if self.password is not None:
            return self.password
        assert self.password_file is not None
        try:
            password = Path(self.password_file).read_text().strip()
        except OSError as exc:
            message = f"cannot read password_file {self.password_file}: {exc.strerror}"
            raise ImagePullError("", message) from exc
        SECRETS.add(password)  # a rotated password is masked from the moment the agent knows it
        return password


@dataclass(frozen=True)
class PullAuth:
    """What to send with one pull: `auth_config` (None: let docker-py use Docker's config) and its source."""

    auth_config: dict[str, str] | None = field(repr=False)
    source: str


def normalize_registry(name: str) -> str:
    """`https://index.docker.io/v1/` -> `docker.io`; `Reg.Example.com:5000/` -> `reg.example.com:5000`."""
    host = name.strip().split("://", 1)[-1].split("/", 1)[0].lower()
    return DOCKER_HUB if host in HUB_ALIASES else host


def parse_credentials(text: str) -> dict[str, RegistryCredential]:
    """Validate and parse the JSON setting; errors never echo a password."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise ValueError(f"registry credentials are not valid JSON ({where})") from None
    if not isinstance(data, dict):
        raise ValueError("registry credentials must be a JSON object {registry: {username, password}}")
    parsed: dict[str, RegistryCredential] = {}
    for registry, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("username"), str):
            raise ValueError(f"registry credentials for {registry!r} need a username")
        has_password = isinstance(entry.get("password"), str)
        if has_password == isinstance(entry.get("password_file"), str):
            raise ValueError(f"registry credentials for {registry!r}: give password or password_file")
        unknown = set(entry) - {"username", "password", "password_file"}
        if unknown:
            raise ValueError(f"registry credentials for {registry!r}: unknown key(s) {sorted(unknown)}")
        parsed[normalize_registry(registry)] = RegistryCredential(
            entry["username"], entry.get("password"), entry.get("password_file"))
    return parsed


def registry_of(image: str) -> str:
    """The registry host an image is pulled from (`docker.io` for Docker Hub)."""
    registry, _ = docker.auth.resolve_repository_name(split_image(image)[0])
    return normalize_registry(registry)


def credentials_for(image: str, configured: str | None) -> PullAuth:
    """The credentials for pulling `image`: the agent's setting for its registry, else Docker's config."""
    registry = registry_of(image)
    credential = parse_credentials(configured).get(registry) if configured else None
    if credential is None:
        return PullAuth(None, docker_config_source(registry))
    where = f"password_file {credential.password_file}" if credential.password_file else "password"
    auth = {"username": credential.username, "password": credential.secret(), "serveraddress": registry}
    return PullAuth(auth, f"{SETTING} for {registry} (user {credential.username}, {where})")


def docker_config_source(registry: str) -> str:
    """Describe what Docker's configuration offers for `registry`, without asking a helper for a secret."""
    path = str(docker.utils.config.find_config_file() or "~/.docker/config.json (absent)")
    try:
        config: Any = docker.auth.load_config()
    except Exception as exc:  # noqa: BLE001 - a broken config.json means an anonymous pull, not a crash
        return f"no credentials: Docker config {path} is unreadable ({type(exc).__name__})"
    key = docker.auth.INDEX_NAME if registry == DOCKER_HUB else registry
    helper = config.get_credential_store(key)
    if helper:
        return f"Docker credential helper docker-credential-{helper} ({path})"
    if config.resolve_authconfig(key):
        return f"Docker config auths entry for {registry} ({path})"
    return f"no credentials for {registry} (anonymous pull)"


def is_auth_error(exc: ImagePullError) -> bool:
    """The registry refused our credentials (or wanted some): worth one retry with fresh ones."""
    message = exc.registry_message.lower()
    return exc.status_code == 401 or any(marker in message for marker in _AUTH_ERRORS)
