"""What the run's log says when its container dies unasked: exit code, OOM kill, image and digest, the
container's name, how long it is kept, and the last lines of its output, read before anyone removes it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from loguru import logger

from agent.runtime.docker_types import ContainerInfo, DockerError
from agent.runtime.port import ContainerRuntime
from agent.supervise.cleanup import keep_notice

T = TypeVar("T")
TAIL_LINES = 50


async def exit_report(runtime: ContainerRuntime, name: str, info: ContainerInfo | None, state: str | None,
                      keep_hours: float) -> tuple[str, str]:
    """(the Failed state's one-line message, the structured ERROR run log)."""
    if info is None:
        summary = f"Flow run container {name} disappeared while the run was {state}"
        return summary, summary + " (removed outside the agent); its output is lost."
    killed = " after being OOM-killed (out of memory)" if info.oom_killed else ""
    summary = f"Flow run {info.kind} {info.name} exited with code {info.exit_code}{killed}"
    if info.exit_code is None and info.error:  # never ran: the engine's reason (Swarm could not place it)
        summary = f"Flow run {info.kind} {info.name} did not run: {info.error}"
    image = await _quiet(runtime.image_digest(info.image)) or info.image_id
    tail = await _quiet(runtime.logs_tail(info.id, TAIL_LINES))
    lines = [
        f"{summary} while the run was {state}.",
        f"Exit code: {info.exit_code}",
        *([f"Engine error: {info.error}"] if info.error else []),
        f"OOMKilled: {str(info.oom_killed).lower()}",
        f"Image: {info.image}" + (f" ({image})" if image else ""),
        f"{info.kind.capitalize()}: {info.name} ({info.id[:12]})",
        keep_notice(info.name, keep_hours, info.kind, info.removed),
        f"Last {TAIL_LINES} lines of its output:",
        (tail or "(no output)").rstrip("\n"),
    ]
    return summary, "\n".join(lines)


async def _quiet(read: Awaitable[T]) -> T | None:
    """A best-effort engine read for forensics: None when it fails (the report goes out anyway)."""
    try:
        return await read
    except DockerError as exc:
        logger.debug("forensics: {error}", error=exc)
        return None

