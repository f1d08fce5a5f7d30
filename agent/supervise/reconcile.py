"""Restart recovery: what this agent left behind, and runs it claimed but never launched.

At start the agent lists the containers carrying its labels (`io.local-agent.agent=<name>` and a flow-run id):
running ones are adopted (watched, cancellable), finished ones are settled (their exit is recorded if the run
never was), and ones that were created but never started (the agent died between create and start) are
removed, so their run counts as "claimed, not launched".

A run that was Submitted by this agent (same registered agent id) before this process claimed anything, and
has no container on this host, was claimed by an earlier process of this agent that died before creating its
container. It is put back to **Scheduled** (not failed) at once, at start: nothing of it ever ran, so running
it is exactly what the user asked for, and waiting for a heartbeat to go stale (Prefect Server's Lazarus: 10
minutes) only delays it. One agent name on one Docker host is one agent: a second live process with the same
name on the same host could see its launch in flight requeued, but never doubled (a run's container name
derives from its id, so the relaunch adopts the container); give every process its own `NAME`.

Agents with the same name and labels on two Docker hosts share one registered agent id, so the agent id does
not say WHERE a run was claimed. Every claim therefore records the claiming Docker host (`host_id`, in the
Submitted state's `context`, see `models.submitted_state`), and only that host may reschedule the run: host B
cannot see host A's containers. Runs whose Submitted state has no marker are left to the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from agent.api.cloud import ApiError, CloudClient, StateUpdateFailed
from agent.api.models import attempts_of, claimed_on, iso_now, scheduled_state
from agent.launch.plan import LABEL_AGENT
from agent.ops.metrics import METRICS
from agent.runtime.docker_types import FLOW_RUN_LABEL, ContainerInfo
from agent.runtime.port import ContainerRuntime

ORPHAN_MESSAGE = ("Rescheduled by agent {agent!r}: it had claimed this run but no container was created "
                  "(the agent stopped between claiming and launching)")
CHUNK = 200


@dataclass(frozen=True)
class RunState:
    id: str
    state: str | None
    name: str | None
    version: int | None


async def run_states(cloud: CloudClient, ids: list[str]) -> dict[str, RunState]:
    """States of `ids` in one query per 200 ids; runs missing from the answer no longer exist."""
    found: dict[str, RunState] = {}
    for start in range(0, len(ids), CHUNK):
        for row in await cloud.flow_run_states(ids[start:start + CHUNK]):
            found[str(row["id"])] = RunState(str(row["id"]), row.get("state"), row.get("name"),
                                             row.get("version"))
    return found


def agent_labels(agent_name: str) -> dict[str, str | None]:
    """The label filter for this agent's flow-run containers."""
    return {LABEL_AGENT: agent_name, FLOW_RUN_LABEL: None}


@dataclass
class Inventory:
    running: list[ContainerInfo]
    finished: list[ContainerInfo]
    never_started: list[ContainerInfo]


async def inventory(runtime: ContainerRuntime, agent_name: str) -> Inventory:
    infos = await runtime.find(agent_labels(agent_name), all=True)
    return Inventory(
        running=[i for i in infos if i.running],
        finished=[i for i in infos if i.exited],
        never_started=[i for i in infos if i.status == "created"],
    )


async def discard_never_started(runtime: ContainerRuntime, infos: list[ContainerInfo]) -> None:
    """Created but never started: nothing ran; remove it so the run is relaunched cleanly."""
    for info in infos:
        logger.warning("removing container {name}: created but never started (the agent stopped in between)",
                       name=info.name)
        await runtime.remove(info.id, force=True)


async def submitted_ids(cloud: CloudClient, agent_id: str) -> set[str]:
    """The runs this agent id holds in Submitted, listed at start before the first claim: the candidates."""
    return {str(row["id"]) for row in await cloud.submitted_runs(agent_id)}


def _claimed_here(row: dict[str, Any], host: str) -> bool:
    """Only the Docker host that claimed a run may conclude that it never got a container."""
    claimed = claimed_on(row.get("serialized_state"))
    if claimed is not None and claimed == host:
        return True
    if claimed is None:
        logger.info("flow run {id}: Submitted without the claiming host's id (claimed by an older agent); "
                    "not rescheduled by this agent, the backend's zombie handling covers it", id=row["id"])
    else:
        logger.debug("flow run {id}: claimed on Docker host {host}, not this one; left alone",
                     id=row["id"], host=claimed)
    return False


async def requeue_orphans(cloud: CloudClient, runtime: ContainerRuntime, *, agent_id: str, agent_name: str,
                          host: str, busy: set[str], candidates: set[str] | None = None) -> int:
    """Put this agent's Submitted runs without a container back to Scheduled; returns how many.

    `candidates` (updated in place): the runs Submitted before this process claimed anything. Only those
    may be requeued: a run this process claimed is never an orphan of it (its launch is in flight, done,
    or reported), whatever happened to its container since. Candidates that left Submitted are dropped,
    and so are runs claimed on another Docker host than `host` (`ContainerRuntime.host_id`) or without a
    host marker: they never become ours.
    """
    rows = await cloud.submitted_runs(agent_id)
    if candidates is not None:
        candidates.intersection_update(str(row["id"]) for row in rows)
        rows = [row for row in rows if str(row["id"]) in candidates]
    requeued = 0
    for row in rows:
        run_id = str(row["id"])
        if run_id in busy:
            continue
        if not _claimed_here(row, host):
            if candidates is not None:
                candidates.discard(run_id)
            continue
        if await runtime.find({FLOW_RUN_LABEL: run_id}, inspect=False):
            continue  # it has a container (maybe another agent's, on this host): not an orphan
        requeued += await _requeue(cloud, row, agent_name)
        if candidates is not None:
            candidates.discard(run_id)
    return requeued


async def _requeue(cloud: CloudClient, row: dict[str, Any], agent_name: str) -> int:
    run_id, message = str(row["id"]), ORPHAN_MESSAGE.format(agent=agent_name)
    back = scheduled_state(message, iso_now(), attempts_of(row.get("serialized_state")))  # the count goes on
    try:
        await cloud.set_flow_run_state(run_id, back, row.get("version"))
    except StateUpdateFailed:  # a backend that locks the version saw the run move on: nothing to recover
        return 0  # (ours and Prefect Server lock no Scheduled write: the row above was read just before)
    logger.warning("flow run {id}: claimed but never launched; rescheduled", id=run_id)
    METRICS.runs_requeued.labels(reason="no_container").inc()
    try:
        await cloud.write_run_log(run_id, agent_name, message, "WARNING")
    except ApiError as exc:
        logger.debug("flow run {id}: run log not written: {error}", id=run_id, error=exc)
    return 1
