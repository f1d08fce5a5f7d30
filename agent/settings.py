"""Every agent setting, in one pydantic-settings model; the only module that reads env vars or secret files.

Names follow Prefect 1.x (`PREFECT__CLOUD__AGENT__*`, plus `PREFECT__CLOUD__API` and the legacy token
names), so an existing Prefect agent configuration keeps working. Precedence, highest first: explicit values
(CLI flags or `LocalAgent(**overrides)`), environment variables, secret files
(`/run/secrets/prefect_cloud_agent_api_token`), then Prefect's own `config.toml` (`[cloud] api_token` /
`api_key`, `[cloud] api`, `[cloud.agent]` keys).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agent.ops.redact import env_secrets, url_passwords
from agent.policy.host_paths import default_host_root
from agent.policy.rules import parse_memory, validate_overrides
from agent.runtime.registry_auth import parse_credentials
from agent.settings_parse import parse_env_vars, parse_labels

ENV_PREFIX = "PREFECT__CLOUD__AGENT__"
API_ENV = "PREFECT__CLOUD__API"
DEFAULT_API = "http://localhost:4200"
DEFAULT_SECRETS_DIR = Path("/run/secrets")
TOKEN_SECRET_FILE = "prefect_cloud_agent_api_token"
REGISTRY_SECRET_FILE = "prefect_cloud_agent_registry_credentials"
# Token sources in precedence order (all env names; the secret file and config.toml come after them).
TOKEN_ENV_NAMES = (
    f"{ENV_PREFIX}API_TOKEN",
    f"{ENV_PREFIX}AUTH_TOKEN",  # the 0.x name
    "PREFECT__CLOUD__API_TOKEN",  # config value cloud.api_token
    "PREFECT__CLOUD__API_KEY",  # Prefect 1.x API keys
)
# config.toml values enter under these lowest-ranked aliases, so every env name and the secret file outrank
# them; the characters make them impossible as env var names (only PrefectConfigTomlSource supplies them).
TOML_API_KEY = "[config.toml] cloud.api"
TOML_TOKEN_KEY = "[config.toml] cloud.api_token"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """The agent's effective configuration. Build it once (`load_settings`) and pass it down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        validate_by_name=True,
    )

    api: str = Field(DEFAULT_API, validation_alias=AliasChoices(API_ENV, TOML_API_KEY))
    api_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices(*TOKEN_ENV_NAMES, TOKEN_SECRET_FILE, TOML_TOKEN_KEY)
    )
    name: str = Field("agent", min_length=1)
    labels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    env_vars: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    container_labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    no_pull: bool = False
    base_url: str | None = None
    docker_timeout: PositiveFloat = 60.0
    flow_api_url: str | None = None
    network: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Flow containers (docs/run-options.md): agent-level options and the policy over run configs.
    pull_policy: Literal["default", "always", "if-not-present", "never"] = "default"
    volumes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host_gateway: bool = True
    init: bool = True
    memory: str | None = None
    max_memory: str | None = None
    cpus: PositiveFloat | None = None
    max_cpus: PositiveFloat | None = None
    pids_limit: PositiveInt | None = None
    max_pids_limit: PositiveInt | None = None
    gpus: str | None = None
    runtime: str | None = None
    registry_credentials: SecretStr | None = Field(
        None, validation_alias=AliasChoices(f"{ENV_PREFIX}REGISTRY_CREDENTIALS", REGISTRY_SECRET_FILE)
    )
    max_concurrent_runs: int = Field(0, ge=0)
    allowed_images: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_run_overrides: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_host_paths: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host_root: str = Field(default_factory=default_host_root, pattern=r"^(/.*)?$")
    level: LogLevel = "INFO"
    flow_log_level: LogLevel = "INFO"
    send_flow_run_logs: bool = True
    prefetch_seconds: float = Field(10.0, ge=0)
    long_poll_seconds: float = Field(10.0, ge=0, le=30)
    request_timeout: PositiveFloat = 15.0
    max_concurrent_launches: PositiveInt = 10
    drain_timeout: float = Field(30.0, ge=0)
    pull_progress_interval: PositiveFloat = 5.0
    secrets_dir: Path = DEFAULT_SECRETS_DIR
    # Operations (docs/operations.md): health server, watching, cancellation, heartbeats, cleanup.
    health_address: str = Field("", pattern=r"^$|^(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}$")
    docker_outage_exit_s: float = Field(300.0, ge=0)
    show_flow_logs: bool = False
    cancel_grace_seconds: float = Field(30.0, ge=0)
    heartbeat_interval: PositiveFloat = 30.0
    infra_retries: int = Field(2, ge=0, le=100)  # resubmissions after containers the infrastructure stopped
    watch_interval: PositiveFloat = 5.0
    keep_failed_containers_hours: float = Field(24.0, ge=0)
    keep_successful_containers_hours: float = Field(0.0, ge=0)  # 0: removed as soon as the run ended
    cleanup_interval: PositiveFloat = 300.0
    # The engine flow runs start on (docs/running.md): this host's engine (Docker, or Podman detected by its
    # /version), Podman explicitly, or a Docker Swarm through a manager.
    engine: Literal["docker", "swarm", "podman"] = "docker"
    swarm_constraints: Annotated[list[str], NoDecode] = Field(default_factory=list)
    swarm_preferences: Annotated[list[str], NoDecode] = Field(default_factory=list)
    swarm_network: str = Field("local-agent-flows", pattern=r"^$|^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    swarm_schedule_timeout: PositiveFloat = 120.0
    swarm_gpu_resource: str = ""

    _labels = field_validator("labels", mode="before")(parse_labels)
    _env_vars = field_validator("env_vars", "container_labels", mode="before")(parse_env_vars)
    _lists = field_validator(
        "network", "volumes", "allowed_images", "allowed_run_overrides", "allowed_host_paths",
        "swarm_constraints", "swarm_preferences", mode="before",
    )(parse_labels)

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[str]) -> list[str]:
        from agent.policy.host_config import parse_volume  # its models load only when a setting needs them

        for spec in value:
            parse_volume(spec)
        return value

    @field_validator("network")
    @classmethod
    def _network_modes(cls, value: list[str]) -> list[str]:
        if len(value) > 1 and {"host", "none"} & set(value):
            raise ValueError("host and none are network modes: they cannot be combined with other networks")
        return value

    @field_validator("memory", "max_memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_memory(value)
        return value.strip()

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: str | None) -> str | None:
        if value:
            from agent.policy.host_config import parse_gpus

            parse_gpus(value)
        return value or None

    @field_validator("allowed_run_overrides")
    @classmethod
    def _overrides(cls, value: list[str]) -> list[str]:
        return validate_overrides(value)

    @field_validator("swarm_constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        if bad := [c for c in value if not re.fullmatch(r"\s*[\w.-]+\s*(==|!=)\s*\S.*", c)]:
            raise ValueError(f"placement constraints look like node.labels.zone==east, not like {bad}")
        return value

    @field_validator("allowed_host_paths")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        relative = [path for path in value if not path.startswith("/")]
        if relative:
            raise ValueError(f"allowed host paths must be absolute: {relative}")
        return value

    @field_validator("registry_credentials", mode="before")
    @classmethod
    def _registry_credentials(cls, value: Any) -> Any:
        if isinstance(value, dict):  # config.toml or an explicit object: keep it as (secret) JSON text
            value = json.dumps(value)
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str) and raw.strip():
            parse_credentials(raw)  # a malformed JSON must stop the agent at start, not fail pulls later
            return raw
        return None if isinstance(raw, str) else value

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> Settings:
        pairs = [("memory", self.memory and parse_memory(self.memory),
                  self.max_memory and parse_memory(self.max_memory)),
                 ("cpus", self.cpus, self.max_cpus), ("pids_limit", self.pids_limit, self.max_pids_limit)]
        for name, default, maximum in pairs:
            if default and maximum and default > maximum:
                raise ValueError(f"{name} ({default}) is above max_{name} ({maximum})")
        if self.no_pull and self.pull_policy not in ("default", "never"):
            raise ValueError(f"no_pull contradicts pull_policy={self.pull_policy}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _highest_ranked_alias_wins(cls, data: Any) -> Any:
        """Each source reports the alias it found; keep only the best-ranked one per field.

        pydantic would otherwise treat the lower-ranked duplicates (say, the secret file next to an env var)
        as extra inputs.
        """
        if not isinstance(data, dict):
            return data
        for name in ("api", "api_token", "registry_credentials"):
            alias = cls.model_fields[name].validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else []
            ranked = [str(r).lower() for r in (name, *choices)]
            present = [k for k in data if str(k).lower() in ranked]
            if len(present) > 1:
                best = min(present, key=lambda k: ranked.index(str(k).lower()))
                data = {k: v for k, v in data.items() if k not in present or k == best}
        return data

    @field_validator("level", "flow_log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api", "flow_api_url", "base_url")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip().rstrip("/") if value else value

    @field_validator("api_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @property
    def token(self) -> str | None:
        """The raw token, for the Authorization header and the flow container's env only."""
        return self.api_token.get_secret_value() if self.api_token else None

    @property
    def backend(self) -> str:
        """`cloud` with a token, `server` without: what `PREFECT__BACKEND` tells flow containers."""
        return "cloud" if self.api_token else "server"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No dotenv: compose injects `.env` itself, one source of truth (style guide §2).
        return init_settings, env_settings, file_secret_settings, PrefectConfigTomlSource(settings_cls)


class PrefectConfigTomlSource(PydanticBaseSettingsSource):
    """Prefect's user config file: `[cloud] api / api_token / api_key` and `[cloud.agent]` keys."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        cloud = _read_prefect_config().get("cloud", {})
        if not isinstance(cloud, dict):
            return {}
        values: dict[str, Any] = {}
        agent = cloud.get("agent", {})
        if isinstance(agent, dict):
            values.update({k: v for k, v in agent.items() if k in Settings.model_fields and k != "api_token"})
            if agent.get("auth_token"):
                values[TOML_TOKEN_KEY] = agent["auth_token"]
        for key in ("api_key", "api_token"):  # api_token wins over api_key
            if cloud.get(key):
                values[TOML_TOKEN_KEY] = cloud[key]
        if isinstance(cloud.get("api"), str) and "${" not in cloud["api"]:
            values[TOML_API_KEY] = cloud["api"]
        return values


def prefect_config_path() -> Path:
    """Prefect 1.x's user config: `$PREFECT__USER_CONFIG_PATH`, else `<home_dir>/config.toml`."""
    if os.environ.get("PREFECT__USER_CONFIG_PATH"):
        return Path(os.environ["PREFECT__USER_CONFIG_PATH"]).expanduser()
    home = os.environ.get("PREFECT__HOME_DIR") or "~/.prefect"
    return Path(home).expanduser() / "config.toml"


def _read_prefect_config() -> dict[str, Any]:
    path = prefect_config_path()
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}  # an unreadable Prefect config is not ours to reject; env and flags still apply


def load_settings(**overrides: Any) -> Settings:
    """Build the settings: `overrides` (flags) beat env, env beats secret files, files beat config.toml."""
    explicit = {k: v for k, v in overrides.items() if v is not None}
    secrets_dir = Path(
        explicit.get("secrets_dir") or os.environ.get(f"{ENV_PREFIX}SECRETS_DIR") or DEFAULT_SECRETS_DIR
    )
    # pydantic-settings warns about a missing directory; a host without Docker secrets is normal.
    return Settings(_secrets_dir=secrets_dir if secrets_dir.is_dir() else None, **explicit)


def env_name(field_name: str) -> str:
    """The environment variable that sets `field_name`."""
    if field_name == "api":
        return API_ENV
    return f"{ENV_PREFIX}{field_name.upper()}"


def env_names() -> list[str]:
    """Every setting's primary environment name, in model order (keeps `.env.example` in sync)."""
    return [env_name(name) for name in Settings.model_fields]


def effective_config(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready data, secrets masked (for `local-agent config`)."""
    data = settings.model_dump(mode="json")
    data["secrets_dir"] = str(settings.secrets_dir)
    data["backend"] = settings.backend
    return data


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret in `settings`: the API token, each registry's password or password file content, the
    values of `ENV_VARS` with secret names (a Docker error may echo them) and the passwords in its URLs."""
    found = [settings.token or "", *env_secrets(settings.env_vars)]
    for url in (settings.api, settings.flow_api_url, settings.base_url):
        found += url_passwords(url or "")
    raw = settings.registry_credentials.get_secret_value() if settings.registry_credentials else ""
    try:
        credentials = parse_credentials(raw) if raw else {}
    except ValueError:  # settings validated it already; nothing to add from a value that does not parse
        credentials = {}
    for credential in credentials.values():
        if credential.password is not None:
            found.append(credential.password)
        elif credential.password_file:
            try:
                found.append(Path(credential.password_file).read_text().strip())
            except OSError:  # unreadable now: the pull reports it, and registers it once it reads it
                pass
    return [s for s in found if s]
