"""Every server setting, as pydantic-settings fields with the `LOCAL_AGENT_SERVER_` prefix.

This is the only server module that reads the environment; the CLI builds one `ServerSettings` and passes it
on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
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
    # Where users reach this server (behind a published port or a proxy), for the links to the web UI that the
    # CLI prints; unset, http://<host>:<port> (127.0.0.1 for a wildcard host).
    public_url: str = Field("", pattern=r"^$|^https?://[^\s/]+(/[^\s]*)?$")
    # Lazarus: Submitted/Running runs whose heartbeat is older than this go back to Scheduled.
    zombie_timeout_s: float = Field(600.0, gt=0)
    zombie_check_interval_s: float = Field(30.0, gt=0)
    zombie_max_reschedules: int = Field(3, ge=0)
    zombies_enabled: bool = True
    # Only the replica holding the `lazarus` lease sweeps; unset, the lease lasts three sweep intervals, so a
    # replica that died is replaced within that (one that stops cleanly hands the lease over at once).
    zombie_lease_ttl_s: float | None = Field(None, gt=0)
    # The same sweep removes flows whose registration never finished (crashed or abandoned) after this long.
    stale_registration_s: float = Field(1800.0, gt=0)
    # Retention (server.retention): finished runs whose state is older than this many days are deleted with
    # their task runs, states and logs, `retention_batch_runs` runs per transaction, at most every
    # `retention_interval_s`, in the sweep above. Unset: everything is kept.
    retention_days: float | None = Field(None, gt=0)
    retention_interval_s: float = Field(3600.0, gt=0)
    retention_batch_runs: int = Field(200, ge=1, le=10_000)
    # The scheduler keeps the upcoming runs of every flow with an active schedule created ahead, like Prefect
    # Server: at most `scheduler_max_runs` runs and `scheduler_max_days` days ahead, whichever comes first.
    # Only the replica holding the `scheduler` lease (ttl: three intervals, at least 30 s) schedules.
    scheduler_enabled: bool = True
    scheduler_interval_s: float = Field(10.0, gt=0)
    scheduler_max_runs: int = Field(10, ge=1, le=1000)
    scheduler_max_days: float = Field(10.0, gt=0)
    # Queue: Prefect Server's queued_runs_returned_limit; candidates fetched = 3 x this.
    queue_limit: int = Field(25, ge=1, le=1000)
    long_poll_max_s: float = Field(30.0, ge=0)
    long_poll_recheck_s: float = Field(0.5, gt=0)
    # Data limits: one tenant's request must neither store unbounded data nor hold the write lock for long.
    max_tasks_per_flow: int = Field(10_000, ge=1)
    max_edges_per_flow: int = Field(100_000, ge=0)
    max_states_per_request: int = Field(1_000, ge=1)
    max_logs_per_request: int = Field(10_000, ge=1)
    max_log_message_bytes: int = Field(1_000_000, ge=1)
    list_default_limit: int = Field(1_000, ge=1)
    list_max_limit: int = Field(10_000, ge=1)
    # All rows one request reads, over every list it nests (flow_run -> flow -> flow_runs -> ... multiplies).
    max_rows_per_request: int = Field(50_000, ge=1_000)
    max_name_chars: int = Field(1_000, ge=1)
    max_labels: int = Field(100, ge=0)
    max_label_chars: int = Field(255, ge=1)
    max_json_bytes: int = Field(1_000_000, ge=2)
    max_key_chars: int = Field(255, ge=1)
    write_batch_rows: int = Field(250, ge=1)
    worker_threads: int = Field(32, ge=2, le=512)
    long_poll_threads: int = Field(128, ge=1, le=4096)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    sqlite_busy_timeout_ms: int = Field(30_000, ge=0)
    # Request limits: checked before anything costly, so no anonymous or hostile client exhausts the server.
    anonymous_max_body_bytes: int = Field(16 * 1024, ge=1024)
    max_json_depth: int = Field(64, ge=4, le=500)
    max_query_chars: int = Field(1024 * 1024, ge=1024)
    max_query_tokens: int = Field(10_000, ge=100)
    max_query_depth: int = Field(20, ge=2, le=200)
    max_query_aliases: int = Field(100, ge=0)
    max_query_fields: int = Field(2_000, ge=10)
    document_cache_bytes: int = Field(256 * 1024, ge=0)
    document_cache_max_query_bytes: int = Field(16 * 1024, ge=0)
    token_cache_ttl_s: float = Field(5.0, ge=0)
    # FLOW_RUN tokens (one flow run each): dead once their run has been finished for the grace period (the
    # last task states and logs still arrive), or after the maximum lifetime, whichever comes first.
    flow_run_token_grace_s: float = Field(60.0, ge=0)
    flow_run_token_max_lifetime_s: float = Field(72 * 3600.0, gt=0)

    @model_validator(mode="after")
    def _lease_outlives_interval(self) -> ServerSettings:
        if self.zombie_lease_ttl_s is not None and self.zombie_lease_ttl_s <= self.zombie_check_interval_s:
            raise ValueError("zombie_lease_ttl_s must be longer than zombie_check_interval_s, or the sweep's "
                             "lease runs out between two rounds and passes from replica to replica")
        return self

    @property
    def ui_url(self) -> str:
        """The web UI's address as a user's browser reaches it."""
        if self.public_url:
            return self.public_url.rstrip("/") + "/ui/"
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/ui/"

    @property
    def scheduler_lease_ttl_s(self) -> float:
        """How long the scheduler's lease lasts without renewal: a dead replica is replaced within it. At
        least 30 s, so that a round that creates many runs keeps it however short the interval."""
        return max(3 * self.scheduler_interval_s, 30.0)

    @property
    def lease_ttl_s(self) -> float:
        """How long the sweep's lease lasts without renewal."""
        return self.zombie_lease_ttl_s or 3 * self.zombie_check_interval_s
