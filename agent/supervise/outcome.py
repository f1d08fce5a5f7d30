"""The one INFO line that says how a flow run the agent launched (or adopted) ended.

Without it the agent's log stops at "Submitted" for a run that went well: whoever watches `docker compose logs
agent` never learns that the flow succeeded. The line carries the run's name and id, its final state as the
backend has it (or the state the agent itself just set), the container's exit code (and the OOM kill), and the
run's duration: container start to finish from the engine's record when it has both, else the time since the
agent started watching. A run name is user text: it is quoted (no line breaks) and masked like every line.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from loguru import logger

from agent.runtime.docker_types import ContainerInfo, docker_time

REMEMBERED = 4096  # runs whose line was written: a later re-settle (periodic cleanup) stays silent
STILL = "state still "  # an exit 0 whose run the flow runner left unfinished


def duration(info: ContainerInfo | None, watched_since: float | None, now: float | None = None) -> str:
    """'12.4 s' from the engine's start and finish times; the watched span, said so, when it lacks them."""
    started = docker_time(info.started_at) if info is not None else None
    finished = docker_time(info.finished_at) if info is not None else None
    if started is not None and finished is not None and finished >= started:
        return f"{(finished - started).total_seconds():.1f} s"
    if watched_since is None:
        return "duration unknown"
    span = max(0.0, (time.monotonic() if now is None else now) - watched_since)
    return f"{span:.1f} s since the agent started watching"


def exit_text(info: ContainerInfo | None) -> str:
    if info is None:
        return "exit code unknown (container gone)"
    if info.exit_code is None:
        return "exit code unknown"
    return f"exit code {info.exit_code}{' (OOM-killed)' if info.oom_killed else ''}"


def describe(run_id: str, run_name: str, state: str | None, info: ContainerInfo | None,
             watched_since: float | None, now: float | None = None) -> str:
    """The line's text; `state` None: the API cannot tell (the run is gone or could not be read)."""
    shown = " ".join(run_name.split())  # user text on one line, unescaped: the masker sees it as written
    return (f"flow run '{shown}' ({run_id}) ended: {state or 'unknown'}, {exit_text(info)}, "
            f"{duration(info, watched_since, now)}")


def _key(run_id: str, info: ContainerInfo | None) -> str:
    """Per container: a run relaunched later (rescheduled by the backend) gets a line for its new one."""
    return f"{run_id}/{info.id if info is not None else ''}"


class Outcomes:
    """Writes each run's line once per process, however often its exit is settled again."""

    def __init__(self) -> None:
        self._reported: OrderedDict[str, None] = OrderedDict()

    def report(self, run_id: str, run_name: str, state: str | None, info: ContainerInfo | None,
               watched_since: float | None) -> None:
        key = _key(run_id, info)
        if key in self._reported:
            return
        self._reported[key] = None
        while len(self._reported) > REMEMBERED:
            self._reported.popitem(last=False)
        logger.info("{line}", line=describe(run_id, run_name, state, info, watched_since))
