"""Create + start on Docker with adoption by name: one container per flow run per host, started once.

Container names derive from the flow-run id, so Docker's unique-name rule is a per-host lock: a second launch
of a run finds the first container and adopts it instead of running twice. The delicate cases are Docker's
answers that do not match what it did: a create answered 409 whose holder vanished before the lookup, and a
start answered with an error although the container started (a reply lost between the daemon and us), which
must be kept, not removed and started again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import docker
import docker.errors
from loguru import logger

from agent.runtime.docker_types import (
    FLOW_RUN_LABEL,
    ContainerCreateError,
    ContainerSpec,
    DockerError,
    LaunchResult,
    engine_error_is_transient,
    explanation,
)

if TYPE_CHECKING:
    from agent.runtime.docker import DockerRuntime

BeforeStart = Callable[[str], None]


def launch(rt: DockerRuntime, spec: ContainerSpec, replace_exited: bool,
           before_start: BeforeStart | None) -> LaunchResult:
    """Create, connect and start the container of `spec` (never `containers.run`).

    A name conflict means this run was launched before: the existing container is adopted (`created=False`)
    and started only if it never was, e.g. after an agent crash between create and start. An adopted
    container that already finished is returned as is (`status="exited"`), or, with `replace_exited=True` (a
    new attempt of the same flow run), removed and replaced. A container that cannot be connected or started
    is removed and `ContainerCreateError` carries Docker's message. On timeouts nothing is removed: the
    container may well be running, and the retry adopts it. `before_start(container_id)` runs before this
    call starts a container (the launch's record is written then, before anything runs).
    """
    client = rt.client()
    for _ in range(3):  # the holder of the name may vanish between our create and our lookup
        try:
            container_id = rt.create(spec)
        except ContainerCreateError as exc:
            if exc.status_code != 409:  # 409: the name is taken, by an earlier launch of this run
                raise
            adopted = _adopt(rt, client, spec, replace_exited, before_start)
            if adopted is not None:
                return adopted
            continue
        if before_start is not None:
            before_start(container_id)
        _start(rt, client, container_id, spec, spec.networks[1:])
        logger.debug("started container {name} ({id})", name=spec.name, id=container_id[:12])
        return LaunchResult(container_id, created=True, started=True)
    raise ContainerCreateError(f"container name {spec.name} is in use but its holder keeps disappearing",
                               status_code=409, transient=True)


def _start(rt: DockerRuntime, client: docker.DockerClient, container_id: str, spec: ContainerSpec,
           networks: list[str]) -> None:
    api = client.api
    with rt.errors("start a container"):
        try:
            for network in networks:
                api.connect_container_to_network(container_id, network)
            api.start(container_id)
        except docker.errors.APIError as exc:
            if _started_anyway(rt, container_id):
                logger.warning("Docker answered the start of {name} with an error but started it; kept: "
                               "{error}", name=spec.name, error=explanation(exc))
                return
            _discard(rt, container_id)
            raise ContainerCreateError(
                f"Docker created container {spec.name} but could not start it: {explanation(exc)}",
                status_code=exc.status_code, transient=engine_error_is_transient(exc)) from exc


def _started_anyway(rt: DockerRuntime, container_id: str) -> bool:
    """After an error answer to a start: did Docker start it all the same?"""
    try:
        info = rt.inspect(container_id)
    except DockerError:
        return False
    return info is not None and (info.running or info.started_at is not None)


def _adopt(rt: DockerRuntime, client: docker.DockerClient, spec: ContainerSpec, replace_exited: bool,
           before_start: BeforeStart | None) -> LaunchResult | None:
    info = rt.inspect(spec.name)
    if info is None:
        return None
    run_id = spec.labels.get(FLOW_RUN_LABEL)
    if run_id is not None and info.labels.get(FLOW_RUN_LABEL) != run_id:
        raise ContainerCreateError(
            f"container name {spec.name} is taken by container {info.id[:12]}, which does not belong to "
            f"flow run {run_id}", status_code=409)
    if replace_exited and info.exited:
        logger.debug("replacing finished container {name}", name=spec.name)
        rt.remove(info.id, force=True)
        return None
    logger.debug("adopting existing container {name} ({status})", name=spec.name, status=info.status)
    if info.status != "created":
        return LaunchResult(info.id, created=False, status=info.status)
    attrs = client.api.inspect_container(info.id)
    joined = set((attrs.get("NetworkSettings") or {}).get("Networks") or {})
    if before_start is not None:
        before_start(info.id)
    _start(rt, client, info.id, spec, [n for n in spec.networks if n not in joined])
    return LaunchResult(info.id, created=False, started=True)


def _discard(rt: DockerRuntime, container_id: str) -> None:
    try:
        rt.remove(container_id, force=True)
    except DockerError as exc:
        logger.warning("could not remove failed container {id}: {error}", id=container_id[:12], error=exc)
