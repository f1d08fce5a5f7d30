"""`Options`: the container fields the agent's settings and a run's config decide, each with its origin.

Every value records where it came from (`Decision`: agent setting, agent default, run config, policy clamp),
which is what `local-agent explain` prints and the debug log shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AGENT, RUN, CLAMP, DEFAULT = "agent setting", "run config", "policy clamp", "agent default"


@dataclass(frozen=True)
class Decision:
    """One field of the container, its value and where it came from (for `explain` and debug logs)."""

    field: str
    value: Any
    source: str
    note: str = ""


@dataclass
class Options:
    """The `ContainerSpec` fields this module owns, built up by agent defaults then the run config."""

    host_config: dict[str, Any] = field(default_factory=dict)
    networks: list[str] = field(default_factory=list)
    extra_hosts: dict[str, str] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # for the run's log: clamps and ignored keys
    named_volumes: list[str] = field(default_factory=list)  # agent-level, created with the agent's labels

    def set(self, key: str, value: Any, source: str, note: str = "") -> None:
        self.host_config[key] = value
        self.decisions.append(Decision(key, value, source, note))

    def clamp(self, key: str, requested: Any, granted: Any, note: str | None) -> None:
        """The run's request, then (above the maximum) the policy's clamp, both visible in `explain`."""
        self.set(key, requested, RUN)
        if note:
            self.set(key, granted, CLAMP, note)
            self.notices.append(note)
        self.host_config[key] = granted


def env_of(name: str) -> str:
    return f"PREFECT__CLOUD__AGENT__{name.upper()}"
