"""Every server setting, as pydantic-settings fields with the `LOCAL_AGENT_SERVER_` prefix.

This is the only server module that reads the environment; the CLI builds one `ServerSettings` and passes it
on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """XDG data dir, so a plain `local-agent-server start` keeps its database across restarts."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "local-agent-server"


def default_database_url() -> str:
    return f"sqlite:///{default_data_dir() / 'local-agent-server.db'}"


class ServerSettings(BaseSettings):
    """Server configuration; every field is also `LOCAL_AGENT_SERVER_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LOCAL_AGENT_SERVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(4200, ge=0, le=65535)
    database_url: str = Field(default_factory=default_database_url)
    auth: Literal["none", "token"] = "token"
    log_level: str = "INFO"
    # Lazarus: Submitted/Running runs whose heartbeat is older than this go back to Scheduled.
    zombie_timeout_s: float = Field(600.0, gt=0)
    zombie_check_interval_s: float = Field(30.0, gt=0)
    zombie_max_reschedules: int = Field(3, ge=0)
    zombies_enabled: bool = True
    # Queue: Prefect Server's queued_runs_returned_limit; candidates fetched = 3 x this.
    queue_limit: int = Field(25, ge=1, le=1000)
    long_poll_max_s: float = Field(30.0, ge=0)
    long_poll_recheck_s: float = Field(0.5, gt=0)
    worker_threads: int = Field(32, ge=2, le=512)
    long_poll_threads: int = Field(128, ge=1, le=4096)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    sqlite_busy_timeout_ms: int = Field(30_000, ge=0)
