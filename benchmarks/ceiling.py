"""The ceiling: docker-py creating and starting the agents' containers with no agent and no API in between.

Each agent's burst is compared with a ceiling burst taken just before it, at that agent's own launch
concurrency and with its container options (auto-remove or not), because the engine's speed drifts during a
day (3.7 -> 5.5 containers/s was observed): only same-run ratios mean anything.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import docker

from benchmarks.config import BENCH_LABEL
from benchmarks.dockerenv import FLOW_NAME_LABEL, RUN_ID_LABEL, StartWatcher


@dataclass(frozen=True)
class CeilingSpec:
    """What to imitate: the agent's number of concurrent launches, whether its containers auto-remove, and
    whether they run Docker's init."""

    concurrency: int
    auto_remove: bool
    init: bool = False


@dataclass(frozen=True)
class CeilingResult:
    runs: int
    concurrency: int
    auto_remove: bool
    duration_s: float
    runs_per_s: float
    started: int


def _flow_env(run_id: str, flow_id: str) -> dict[str, str]:
    """About the size of the env both agents give a flow container, so create requests weigh the same."""
    return {
        "PREFECT__BACKEND": "server",
        "PREFECT__CLOUD__API": "http://host.docker.internal:4200",
        "PREFECT__CLOUD__API_KEY": "",
        "PREFECT__CLOUD__TENANT_ID": "",
        "PREFECT__CLOUD__AGENT__LABELS": "['bench']",
        "PREFECT__CONTEXT__FLOW_RUN_ID": run_id,
        "PREFECT__CONTEXT__FLOW_ID": flow_id,
        "PREFECT__CONTEXT__IMAGE": "local-agent-bench-flow:latest",
        "PREFECT__CLOUD__USE_LOCAL_SECRETS": "false",
        "PREFECT__ENGINE__FLOW_RUNNER__DEFAULT_CLASS": "prefect.engine.cloud.CloudFlowRunner",
        "PREFECT__LOGGING__LEVEL": "INFO",
        "PREFECT__CLOUD__SEND_FLOW_RUN_LOGS": "true",
    }


def _launch(api: docker.APIClient, image: str, flow_name: str, run_id: str, auto_remove: bool,
            init: bool) -> None:
    host_config = api.create_host_config(
        auto_remove=auto_remove, extra_hosts={"host.docker.internal": "host-gateway"}, init=init or None
    )
    labels = {
        FLOW_NAME_LABEL: flow_name,
        RUN_ID_LABEL: run_id,
        "io.prefect.flow-id": "ceiling",
        BENCH_LABEL: "ceiling",
    }
    container = api.create_container(
        image,
        command=["prefect", "execute", "flow-run"],
        environment=_flow_env(run_id, "ceiling"),
        name=f"bench-ceiling-{run_id}",
        host_config=host_config,
        labels=labels,
    )
    api.start(container=container["Id"])


def run_ceiling(
    client: docker.DockerClient,
    watcher: StartWatcher,
    *,
    image: str,
    flow_name: str,
    runs: int,
    spec: CeilingSpec,
    timeout: float,
) -> CeilingResult:
    """Create+start `runs` containers through a pool of `spec.concurrency` threads; time go -> last start."""
    run_ids = [f"ceiling-{uuid.uuid4().hex[:12]}" for _ in range(runs)]
    api = client.api
    go = time.time()
    with ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="ceiling") as pool:
        futures = [pool.submit(_launch, api, image, flow_name, rid, spec.auto_remove, spec.init)
                   for rid in run_ids]
        for future in futures:
            future.result()
    starts = watcher.wait_for(run_ids, timeout=timeout)
    duration = (max(starts.values()) - go) if starts else float("nan")
    return CeilingResult(
        runs=runs,
        concurrency=spec.concurrency,
        auto_remove=spec.auto_remove,
        duration_s=duration,
        runs_per_s=len(starts) / duration if starts and duration > 0 else 0.0,
        started=len(starts),
    )
