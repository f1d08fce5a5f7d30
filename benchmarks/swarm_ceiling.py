"""The Swarm ceiling: docker-py creating replicated-job services directly, no agent and no API in between.

Each run is one service (`replicated-job`, one completion, max concurrency 1, restart condition none) on the
stand-in flow image referenced by its local image ID (`sha256:...`): no registry is reachable, and for a
name Swarm would try to resolve and pull it on every task. Services are created from a pool of threads as
wide as the agent's launch concurrency, with the agent's command, env size and labels on the service and on
its task container, Docker's init as the agent asks for, so a create request weighs what the agent's does.

One clock for every system: the daemon's container event stream (`start` and `die` of the task containers,
keyed by their `io.prefect.flow-run-id` label). On a single-node swarm every task container runs on this
daemon, so the same stream times the ceiling, the agent on Swarm and the agent on plain Docker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.types import ContainerSpec, RestartPolicy, ServiceMode, TaskTemplate

from benchmarks.ceiling import _flow_env
from benchmarks.config import BENCH_LABEL
from benchmarks.dockerenv import FLOW_NAME_LABEL, RUN_ID_LABEL, ContainerEvents
from benchmarks.stats import percentile

COMMAND = ["prefect", "execute", "flow-run"]  # the stand-in image's no-op `/bin/prefect`


class EventClock(ContainerEvents):
    """First `start` and first `die` event per flow run of one benchmark flow's containers."""

    def __init__(self, client: docker.DockerClient, flow_name: str) -> None:
        super().__init__(client, flow_name, ("start", "die"))
        self.starts, self.dies = self.first["start"], self.first["die"]

    def wait_done(self, run_ids: Iterable[str], timeout: float) -> bool:
        """Block until every run's container started and died (or `timeout`); True when all did."""
        return self.wait(run_ids, timeout)


@dataclass
class Burst:
    """What one system did with N runs: per run its origin (create call or due time), start and exit."""

    system: str
    go: float  # the ceiling's first create call / the agent's runs' common due time
    origin: dict[str, float]
    starts: dict[str, float]
    dies: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        """Throughput to the last start and to the last exit, lateness from `go` and from each origin."""
        n = len(self.origin)
        done = [rid for rid in self.origin if rid in self.dies]
        last_start = max(self.starts.values(), default=float("nan"))
        last_die = max((self.dies[r] for r in done), default=float("nan"))
        from_go = [self.starts[r] - self.go for r in self.origin if r in self.starts]
        from_origin = [self.starts[r] - self.origin[r] for r in self.origin if r in self.starts]
        return {
            "runs": n, "started": sum(r in self.starts for r in self.origin), "completed": len(done),
            "to_last_start_s": _round(last_start - self.go),
            "to_last_exit_s": _round(last_die - self.go),
            "runs_per_s": _round(len(done) / (last_die - self.go)) if done else None,
            "runs_per_s_to_last_start": _round(len(from_go) / (last_start - self.go)) if from_go else None,
            "lateness_from_go": spread(from_go),
            "lateness_from_origin": spread(from_origin),
            **self.extra,
        }


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_s": _round(percentile(values, 50)),
            "p95_s": _round(percentile(values, 95)), "max_s": _round(max(values)),
            "min_s": _round(min(values))}


def _round(value: float | None) -> float | None:
    return None if value is None or value != value else round(value, 3)


def image_id(client: docker.DockerClient, reference: str) -> str:
    """The local image's ID (`sha256:...`): Swarm neither resolves nor pulls an ID that is on the node."""
    return str(client.images.get(reference).id)


def _service_kwargs(image: str, flow_name: str, run_id: str, network: str | None) -> dict[str, Any]:
    labels = {FLOW_NAME_LABEL: flow_name, RUN_ID_LABEL: run_id, "io.prefect.flow-id": "swarm-ceiling",
              BENCH_LABEL: "swarm-ceiling"}
    env = [f"{k}={v}" for k, v in _flow_env(run_id, "swarm-ceiling").items()]
    container = ContainerSpec(image, args=COMMAND, env=env, labels=labels, init=True,
                              hosts={"host.docker.internal": "host-gateway"})
    template = TaskTemplate(container, restart_policy=RestartPolicy(condition="none"),
                            networks=[network] if network else None)
    return {"task_template": template, "name": f"bench-swarm-ceiling-{run_id}", "labels": labels,
            "mode": ServiceMode("replicated-job", concurrency=1, replicas=1)}


def run_swarm_ceiling(client: docker.DockerClient, clock: EventClock, *, image: str, flow_name: str,
                      runs: int, concurrency: int, timeout: float, network: str | None = None) -> Burst:
    """Create `runs` services through `concurrency` threads; every run's container started and exited."""
    run_ids = [f"swarm-ceiling-{uuid.uuid4().hex[:12]}" for _ in range(runs)]
    origin: dict[str, float] = {}
    api = client.api

    def create(run_id: str) -> None:
        origin[run_id] = time.time()
        api.create_service(**_service_kwargs(image, flow_name, run_id, network))

    go = time.time()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="swarm-ceiling") as pool:
        for future in [pool.submit(create, rid) for rid in run_ids]:
            future.result()
    created = time.time()
    clock.wait_done(run_ids, timeout)
    states = task_states(client, {BENCH_LABEL: "swarm-ceiling", FLOW_NAME_LABEL: flow_name})
    extra = {"concurrency": concurrency, "network": network, "creates_s": round(created - go, 3),
             "task_states": states}
    return Burst("swarm-ceiling" + ("+overlay" if network else ""), go, origin,
                 {r: clock.starts[r] for r in run_ids if r in clock.starts},
                 {r: clock.dies[r] for r in run_ids if r in clock.dies}, extra)


def task_states(client: docker.DockerClient, labels: dict[str, str],
                settle_s: float = 10.0) -> dict[str, int]:
    """Counts of the latest task state of each service with `labels`, once none is still moving (or
    `settle_s`): the task reports `complete` a moment after its container's `die` event."""
    deadline = time.monotonic() + settle_s
    while True:
        counts: dict[str, int] = {}
        for service in client.api.services(filters={"label": [f"{k}={v}" for k, v in labels.items()]}):
            tasks = client.api.tasks(filters={"service": service["ID"]})
            latest = max(tasks, key=lambda t: t.get("UpdatedAt", ""), default=None)
            state = latest["Status"]["State"] if latest else "no task"
            counts[state] = counts.get(state, 0) + 1
        if set(counts) <= {"complete", "failed", "rejected", "shutdown"} or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def remove_services(client: docker.DockerClient, labels: dict[str, str]) -> int:
    """Remove every service carrying all of `labels` (idempotent: gone already is fine)."""
    removed = 0
    for service in client.api.services(filters={"label": [f"{k}={v}" for k, v in labels.items()]}):
        try:
            client.api.remove_service(service["ID"])
            removed += 1
        except (NotFound, APIError):
            continue
    return removed


def bench_network(client: docker.DockerClient, name: str) -> str:
    """An attachable overlay network for the ceiling that imitates the agent's flow network."""
    client.api.create_network(name, driver="overlay", attachable=True, labels={BENCH_LABEL: "swarm"})
    return name


def remove_network(client: docker.DockerClient, name: str) -> None:
    try:
        client.api.remove_network(name)
    except (NotFound, APIError):  # still in use by a task being torn down, or gone: best effort
        time.sleep(2.0)
        try:
            client.api.remove_network(name)
        except (NotFound, APIError):
            pass
