"""API payloads the agent reads and the state JSON it writes (pydantic, no I/O).

Only what the agent dereferences is modelled strictly; everything else is kept as plain JSON so a backend
that returns more (or a newer Prefect that adds storage fields) never breaks parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The state classes for which Prefect 1.4.1's `State.is_scheduled()` is true (§4.8).
SCHEDULED_STATES = frozenset({"Scheduled", "Paused", "Resume", "Retrying", "Queued"})
# Prefect 1.x finished state types (server/states.py FINISHED_STATES), and the failed ones among them.
FINISHED_STATES = frozenset({
    "Success", "Skipped", "Mapped", "Cached", "Failed", "TimedOut", "TriggerFailed", "ValidationFailed",
    "Cancelled", "Looped", "Finished",
})
FAILED_STATES = frozenset({"Failed", "TimedOut", "TriggerFailed", "ValidationFailed"})
# Runs whose container is kept like a failed run's, whatever its exit code.
UNSUCCESSFUL_STATES = FAILED_STATES | {"Cancelled"}
# States in which nobody but the container would report the run's end: its exit must be recorded.
ACTIVE_STATES = frozenset({"Submitted", "Running", "Cancelling"})
# Runs whose container is stopped by the watcher, and runs whose container's exit fails them.
CANCEL_STATES = frozenset({"Cancelling", "Cancelled"})
FAILABLE_STATES = frozenset({"Submitted", "Running"})
# The version stamped into state JSON we write: the Prefect client version whose wire format we speak.
PREFECT_WIRE_VERSION = "1.4.1"
# Run-config types the Docker-style launch understands; anything else is refused with a clear message.
DOCKER_RUN_CONFIGS = frozenset({"DockerRun", "UniversalRun"})
# The key, in a Submitted state's `context`, naming the Docker host whose agent claimed the run (reconcile).
AGENT_HOST_KEY = "agent_host"
# Keys, in a Scheduled state's `context`, carrying a run's launch attempts across infrastructure deaths.
ATTEMPT_KEY = "local_agent_attempt"
INFRA_HISTORY_KEY = "local_agent_infra_history"
MAX_HISTORY, MAX_CAUSE_CHARS = 20, 400  # bounds on what a state (anyone may write one) makes us carry


@dataclass(frozen=True)
class Attempts:
    """Which launch of a run this is, and what ended each earlier one (infrastructure deaths only)."""

    number: int = 1
    history: tuple[str, ...] = ()

    def context(self) -> dict[str, Any]:
        if self.number == 1 and not self.history:
            return {}
        return {ATTEMPT_KEY: self.number, INFRA_HISTORY_KEY: list(self.history)}

    def after(self, cause: str) -> Attempts:
        """The next attempt, once this one ended by `cause`."""
        history = (*self.history, f"attempt {self.number}: {cause[:MAX_CAUSE_CHARS]}")
        return Attempts(self.number + 1, history[-MAX_HISTORY:])


def attempts_of(serialized: dict[str, Any] | None) -> Attempts:
    """From a Scheduled state we wrote, or the one a Submitted state wraps; attempt 1 without a record."""
    state = serialized or {}
    wrapped = state.get("state")
    for candidate in (state, wrapped if isinstance(wrapped, dict) else {}):
        context = candidate.get("context")
        if isinstance(context, dict) and ATTEMPT_KEY in context:
            return parse_attempts(context.get(ATTEMPT_KEY), context.get(INFRA_HISTORY_KEY))
    return Attempts()


def parse_attempts(number: Any, history: Any) -> Attempts:
    """Lenient: whatever is not a sane count or list of strings reads as a first attempt's."""
    try:
        count = int(number)
    except (TypeError, ValueError):
        return Attempts()
    causes = [str(c)[:MAX_CAUSE_CHARS] for c in history] if isinstance(history, list) else []
    return Attempts(count, tuple(causes[-MAX_HISTORY:])) if 1 <= count <= 1_000 else Attempts()


class Flow(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    version: int | None = None
    core_version: str | None = None
    storage: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None


class TaskRun(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    version: int
    task_id: str | None = None
    serialized_state: dict[str, Any] | None = None

    @property
    def is_scheduled(self) -> bool:
        return state_type(self.serialized_state) in SCHEDULED_STATES


class FlowRun(BaseModel):
    """One row of the §3.3(b) metadata query."""

    model_config = ConfigDict(extra="ignore")

    id: str
    version: int
    state: str | None = None
    name: str | None = None
    serialized_state: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    scheduled_start_time: datetime | None = None
    run_config: dict[str, Any] | None = None
    flow: Flow
    task_runs: list[TaskRun] = Field(default_factory=list)

    @property
    def is_scheduled(self) -> bool:
        return state_type(self.serialized_state) in SCHEDULED_STATES

    @property
    def start_time(self) -> datetime | None:
        """When the run may start: the current state's `start_time` (a scheduled state), else now."""
        raw = (self.serialized_state or {}).get("start_time")
        return parse_time(raw) if isinstance(raw, str) else None

    def sort_key(self) -> datetime:
        return self.start_time or datetime.min.replace(tzinfo=UTC)


def state_type(serialized: dict[str, Any] | None) -> str | None:
    return serialized.get("type") if serialized else None


def parse_time(raw: str) -> datetime:
    """ISO 8601 as Prefect writes it (`+00:00` or `Z`); naive values are taken as UTC, as Prefect does."""
    value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso_now(offset_seconds: float = 0.0) -> str:
    """`now + offset` in UTC as ISO 8601 with `+00:00`, the form the Prefect client sends."""

    return (datetime.now(UTC) + timedelta(seconds=offset_seconds)).isoformat()


def _state(type_: str, message: str | None, context: dict[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    """A state in the exact JSON shape the Prefect 1.4.1 client serializes (§4.8)."""
    return {
        "type": type_,
        "message": message,
        **extra,
        "context": context or {},
        "cached_inputs": {},
        "_result": {"type": "NoResultType", "__version__": PREFECT_WIRE_VERSION},
        "__version__": PREFECT_WIRE_VERSION,
    }


def submitted_state(
    wrapped: dict[str, Any] | None, message: str = "Submitted for execution", *, agent_host: str | None = None
) -> dict[str, Any]:
    """`Submitted` wrapping the current state, as §3.4 step 2 sends it: THE claim every path sends.

    `agent_host` (the claiming agent's Docker host, `reconcile.host_id`) goes into the state's `context`, a
    plain Prefect `State` field the backend stores and the flow runner ignores: agents of the same name on
    two hosts share one agent id, and only the host that claimed a run may decide it was never launched.
    """
    context = {AGENT_HOST_KEY: agent_host} if agent_host else None
    return _state("Submitted", message, context, state=wrapped or {"type": "Scheduled"})


def claimed_on(serialized: dict[str, Any] | None) -> str | None:
    """The Docker host recorded by `submitted_state`, None when the state carries no marker."""
    context = (serialized or {}).get("context")
    host = context.get(AGENT_HOST_KEY) if isinstance(context, dict) else None
    return host if isinstance(host, str) and host else None


def pending_state(message: str) -> dict[str, Any]:
    return _state("Pending", message)


def failed_state(message: str) -> dict[str, Any]:
    return _state("Failed", message)


def scheduled_state(message: str, start_time: str, attempts: Attempts | None = None) -> dict[str, Any]:
    """Puts a claimed run back in the queue; `attempts` go along in its context (infrastructure deaths)."""
    return _state("Scheduled", message, (attempts or Attempts()).context(), start_time=start_time)
