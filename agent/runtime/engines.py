"""Which engine flow runs start on: this Docker host (`docker`) or a Docker Swarm through a manager (`swarm`).

The one place that turns `Settings.engine` into the synchronous runtime behind the port; the CLI's early
connection, the agent and `explain` all build theirs here, so they can never disagree on the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.runtime.docker import DockerRuntime

if TYPE_CHECKING:
    from agent.runtime.swarm_types import SwarmOptions
    from agent.settings import Settings


def swarm_options(settings: Settings) -> SwarmOptions:
    """The Swarm runtime's options from the agent's settings (placement, network, timeouts, GPUs)."""
    from agent.runtime.swarm_types import SwarmOptions

    return SwarmOptions(
        constraints=tuple(settings.swarm_constraints),
        preferences=tuple(settings.swarm_preferences),
        network=settings.swarm_network,
        schedule_timeout=settings.swarm_schedule_timeout,
        stop_grace=settings.cancel_grace_seconds,
        gpu_resource=settings.swarm_gpu_resource,
        network_labels={"io.local-agent.agent": settings.name},
    )


def open_runtime(settings: Settings) -> DockerRuntime:
    """The engine's synchronous runtime (`agent.runtime.engine.DockerEngine` makes it the port)."""
    if settings.engine == "swarm":
        from agent.runtime.swarm import SwarmRuntime

        return SwarmRuntime(settings.base_url, settings.docker_timeout, swarm_options(settings))
    return DockerRuntime(base_url=settings.base_url, timeout=settings.docker_timeout)
