"""Which engine flow runs start on: this host's engine (`docker`: Docker, or Podman's Docker-compatible API,
told apart by its `/version`), Podman explicitly (`podman`), or a Docker Swarm through a manager (`swarm`).

The one place that turns `Settings.engine` into the synchronous runtime behind the port; the CLI's early
connection, the agent and `explain` all build theirs here, so they can never disagree on the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.runtime.docker import DockerRuntime
from agent.runtime.podman import DETECT_TIMEOUT_S, PodmanRuntime, detect_engine

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
    """The engine's synchronous runtime (`agent.runtime.engine.DockerEngine` makes it the port).

    `docker` asks the engine what it is (one `/version` request): a Podman service gets the Podman-aware
    runtime, so pointing BASE_URL or DOCKER_HOST at Podman's socket is enough. An engine that does not answer
    gets the Docker runtime, whose start-up check then reports it unreachable."""
    if settings.engine == "swarm":
        from agent.runtime.swarm import SwarmRuntime

        return SwarmRuntime(settings.base_url, settings.docker_timeout, swarm_options(settings))
    detect_timeout = min(settings.docker_timeout, DETECT_TIMEOUT_S)
    if settings.engine == "podman" or detect_engine(settings.base_url, detect_timeout) == "podman":
        return PodmanRuntime(base_url=settings.base_url, timeout=settings.docker_timeout)
    return DockerRuntime(base_url=settings.base_url, timeout=settings.docker_timeout)
