"""`python -m benchmarks swarm [--quick]`: our agent on Docker Swarm against the Swarm ceiling and against
itself on plain Docker, in one run on one daemon (which must already be a swarm manager; never changed here).

Six bursts of N runs each, in this order, on the stand-in flow image (busybox plus a no-op `/bin/prefect`),
each agent burst right after the ceiling measured the same way (its like-for-like ratio spans no other burst):
1. the Swarm ceiling: docker-py creating N replicated-job services directly, no network (`swarm_ceiling.py`);
2. our agent with `PREFECT__CLOUD__AGENT__ENGINE=swarm` and `SWARM_NETWORK=""`: no overlay, as in 1;
3. the ceiling on an attachable overlay network; 4. our swarm agent on its default flow network (an overlay);
5. our agent with the docker engine; 6. the ceiling again: how far the engine's own speed drifted.
An agent runs as `python -m agent start` against a real server (SQLite) through a counting proxy; it is
polling when its N runs are created, all due at one instant `lead_s` ahead (`go`). The ceiling's `go` is its
first create call. Throughput = N / (last task container exit - go); lateness = container start - go (and,
for the ceiling, - its own create call). Every figure is from the daemon's container event stream.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from benchmarks import backend
from benchmarks.config import BENCH_LABEL, REPO_ROOT
from benchmarks.dockerenv import FLOW_NAME_LABEL, docker_client, ensure_flow_image, remove_flow_containers
from benchmarks.peers import AgentProcess, our_agent, ours_concurrency
from benchmarks.proxy import CountingProxy
from benchmarks.report import write_benchmark
from benchmarks.stats import ratio
from benchmarks.swarm_ceiling import (
    Burst,
    EventClock,
    bench_network,
    image_id,
    remove_network,
    remove_services,
    run_swarm_ceiling,
    task_states,
)
from benchmarks.swarm_report import markdown

TARGET_RATIO = 0.9
AGENT_LABEL = "io.local-agent.agent"


@dataclass(frozen=True)
class Sizes:
    runs: int
    lead_s: float  # runs are created this far ahead of their common due time, the agent already polling
    timeout_s: float
    rounds: int  # the engine's speed drifts (and the machine is shared): ratios are taken within a round


FULL = Sizes(runs=40, lead_s=5.0, timeout_s=240.0, rounds=2)
QUICK = Sizes(runs=4, lead_s=4.0, timeout_s=90.0, rounds=1)


class SwarmBenchError(RuntimeError):
    """A part could not be measured; the message says why (and carries the agent's log tail)."""


@dataclass
class Env:
    client: docker.DockerClient
    clock: EventClock
    server: backend.Server
    flow_id: str
    flow_name: str
    image_id: str
    sizes: Sizes
    work: Path
    token: str


def check_manager(client: docker.DockerClient) -> str:
    """The swarm's cluster id; a clear error when this daemon is not a manager (nothing is changed)."""
    swarm = client.info().get("Swarm", {})
    if not swarm.get("ControlAvailable"):
        raise SwarmBenchError("the Docker daemon is not a swarm manager (LocalNodeState="
                              f"{swarm.get('LocalNodeState', '?')}); run `docker swarm init` first")
    return str(swarm.get("Cluster", {}).get("ID", "?"))


def _ceiling(env: Env, network: str | None) -> Burst:
    labels = {BENCH_LABEL: "swarm-ceiling", FLOW_NAME_LABEL: env.flow_name}
    try:
        return run_swarm_ceiling(env.client, env.clock, image=env.image_id, flow_name=env.flow_name,
                                 runs=env.sizes.runs, concurrency=ours_concurrency(),
                                 timeout=env.sizes.timeout_s, network=network)
    finally:
        remove_services(env.client, labels)


def _failure(agent: AgentProcess, what: str, lines: int = 25) -> SwarmBenchError:
    """`what`, the agent's last log line on the same line (the markdown shows one), then its log's tail."""
    try:
        tail = [line for line in agent.log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        tail = ["(no log)"]
    last = tail[-1].strip() if tail else "(empty log)"
    return SwarmBenchError(f"{what}; its log ends: {last}\n" + "\n".join(tail[-lines:]))


def _wait_first_poll(agent: AgentProcess, proxy: CountingProxy, since: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proxy.first_poll_after(since) is None:
        if not agent.alive():
            raise _failure(agent, f"the agent exited with {agent.process and agent.process.returncode}")
        if time.monotonic() > deadline:
            raise _failure(agent, f"the agent did not poll within {timeout:.0f} s")
        time.sleep(0.05)


def _create_runs(env: Env, label: str, go: float, tag: str) -> list[str]:
    def one(index: int) -> str:
        return backend.create_flow_run(env.server.url, env.flow_id, name=f"bench-{tag}-{index}-{env.token}",
                                       labels=[label], scheduled_at=go)

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="create") as pool:
        return list(pool.map(one, range(env.sizes.runs)))


@dataclass(frozen=True)
class AgentVariant:
    """One agent burst: its name in the results, the engine, and any further agent settings."""

    burst: str
    engine: str
    settings: tuple[tuple[str, str], ...] = ()


SWARM_AGENT = AgentVariant("swarm-agent", "swarm")  # the default flow network: an attachable overlay
SWARM_AGENT_NO_OVERLAY = AgentVariant("swarm-agent-no-overlay", "swarm",
                                      (("PREFECT__CLOUD__AGENT__SWARM_NETWORK", ""),))
DOCKER_AGENT = AgentVariant("docker-agent", "docker")


def _agent_name(env: Env, variant: AgentVariant) -> str:
    return f"bench-{variant.burst}-{env.token}"


def _agent(env: Env, variant: AgentVariant, proxy: CountingProxy) -> AgentProcess:
    log_dir = env.work / variant.burst
    log_dir.mkdir(exist_ok=True)
    name = _agent_name(env, variant)
    agent = our_agent(proxy.url, env.server.port, name, name, log_dir)
    agent.env["PREFECT__CLOUD__AGENT__ENGINE"] = variant.engine
    agent.env.update(dict(variant.settings))
    return agent


def agent_burst(env: Env, variant: AgentVariant) -> Burst:
    """The agent polling, N runs due together `lead_s` ahead: every run's container start and exit."""
    engine = variant.engine
    with CountingProxy(env.server.url, f"swarm-bench-{variant.burst}") as proxy:
        agent = _agent(env, variant, proxy)
        try:
            _wait_first_poll(agent, proxy, agent.start(), 60.0)
            time.sleep(1.0)  # its first long poll in flight, as in normal operation
            go = time.time() + env.sizes.lead_s
            runs = _create_runs(env, agent.label, go, variant.burst)
            if not env.clock.wait_done(runs, env.sizes.timeout_s) and not agent.alive():
                raise _failure(agent, "the agent died mid-burst")
            proxy.wait_quiet(quiet_s=2.0, timeout=15.0)  # the trailing Submitted / log writes
            requests = len(proxy.requests(go, time.time()))
            owner = {AGENT_LABEL: agent.env["PREFECT__CLOUD__AGENT__NAME"]}
            states = task_states(env.client, owner) if engine == "swarm" else {}
            shape = service_shape(env.client, owner) if engine == "swarm" else {}
        finally:
            agent.stop()
    backend.finish_runs(env.server.url, runs)
    extra: dict[str, Any] = {"requests_per_run": round(requests / max(len(runs), 1), 2),
                             "agent_settings": {"ENGINE": engine, **{k.rsplit("__", 1)[-1]: v
                                                                      for k, v in variant.settings}},
                             "log": str(agent.log_path)}
    if engine == "swarm":
        extra |= {"task_states": states, "service_spec": shape}
    return Burst(variant.burst, go, dict.fromkeys(runs, go),
                 {r: env.clock.starts[r] for r in runs if r in env.clock.starts},
                 {r: env.clock.dies[r] for r in runs if r in env.clock.dies}, extra)


def service_shape(client: docker.DockerClient, labels: dict[str, str]) -> dict[str, Any]:
    """One of the agent's services' spec without env and labels: what it asked Swarm for, on the record."""
    services = client.api.services(filters={"label": [f"{k}={v}" for k, v in labels.items()]})
    if not services:
        return {}
    spec = json.loads(json.dumps(services[0]["Spec"]))
    spec.pop("Labels", None)
    container = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
    for key in ("Env", "Labels"):
        container.pop(key, None)
    return dict(spec)


def _clean(env: Env) -> None:
    remove_services(env.client, {FLOW_NAME_LABEL: env.flow_name})
    remove_flow_containers(env.client, env.flow_name)
    for variant in (SWARM_AGENT, SWARM_AGENT_NO_OVERLAY):
        label = f"{AGENT_LABEL}={_agent_name(env, variant)}"
        for network in env.client.api.networks(filters={"label": label}):
            remove_network(env.client, network["Id"])  # the flow network a swarm agent created, if it did


def _phase(results: dict[str, Any], errors: dict[str, str], name: str, fn: Any) -> None:
    print(f"[swarm-bench {time.strftime('%H:%M:%S')}] {name}", flush=True)
    try:
        results[name] = fn().figures()
    except Exception as exc:  # noqa: BLE001 - one failed part must not lose the others' figures
        errors[name] = f"{type(exc).__name__}: {exc}"


def one_round(env: Env, network: str) -> dict[str, Any]:
    """The six bursts in order; their figures, errors and same-round ratios."""
    bursts: dict[str, Any] = {}
    errors: dict[str, str] = {}
    _phase(bursts, errors, "swarm-ceiling", lambda: _ceiling(env, None))
    _phase(bursts, errors, SWARM_AGENT_NO_OVERLAY.burst, lambda: agent_burst(env, SWARM_AGENT_NO_OVERLAY))
    _clean(env)
    _phase(bursts, errors, "swarm-ceiling+overlay", lambda: _ceiling(env, network))
    _phase(bursts, errors, SWARM_AGENT.burst, lambda: agent_burst(env, SWARM_AGENT))
    _clean(env)
    _phase(bursts, errors, DOCKER_AGENT.burst, lambda: agent_burst(env, DOCKER_AGENT))
    _phase(bursts, errors, "swarm-ceiling-after", lambda: _ceiling(env, None))  # the engine's drift
    return {"bursts": bursts, "errors": errors, "ratios": ratios(bursts)}


def measure(sizes: Sizes, work: Path) -> dict[str, Any]:
    """`sizes.rounds` rounds against one server, one event clock; every round's figures and the medians."""
    client = docker_client()
    cluster = check_manager(client)
    image = ensure_flow_image(client)
    token = uuid.uuid4().hex[:8]
    flow_name = f"local-agent-bench-swarm-{token}"
    with ExitStack() as stack:
        server = backend.Server(f"sqlite:///{work / 'swarm.db'}", work / "server.log").start()
        stack.callback(server.stop)
        clock = stack.enter_context(EventClock(client, flow_name))
        env = Env(client, clock, server, backend.register_flow(server.url, flow_name, image), flow_name,
                  image_id(client, image), sizes, work, token)
        stack.callback(_clean, env)
        network = bench_network(client, f"local-agent-bench-{token}")
        stack.callback(remove_network, client, network)
        rounds = [one_round(env, network) for _ in range(sizes.rounds)]
    medians = {key: _median([r["ratios"][key] for r in rounds]) for key in rounds[0]["ratios"]}
    return {"cluster_id": cluster, "image_id": env.image_id, "rounds": rounds, "ratios_median": medians}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


# (key, numerator burst, denominator burst). The first two are the targets: each agent against the ceiling
# whose services have the same networks. The rest say what the overlay costs and what Swarm costs.
RATIO_PAIRS = (
    ("swarm_agent_to_ceiling_overlay", "swarm-agent", "swarm-ceiling+overlay"),
    ("swarm_agent_no_overlay_to_ceiling", "swarm-agent-no-overlay", "swarm-ceiling"),
    ("ceiling_overlay_to_ceiling", "swarm-ceiling+overlay", "swarm-ceiling"),
    ("swarm_agent_to_no_overlay", "swarm-agent", "swarm-agent-no-overlay"),
    ("swarm_agent_to_docker_agent", "swarm-agent", "docker-agent"),
    ("swarm_agent_no_overlay_to_docker_agent", "swarm-agent-no-overlay", "docker-agent"),
)
TARGET_KEYS = ("swarm_agent_to_ceiling_overlay", "swarm_agent_no_overlay_to_ceiling")


def ratios(bursts: dict[str, Any]) -> dict[str, float | None]:
    def rate(name: str) -> float | None:
        value: float | None = bursts.get(name, {}).get("runs_per_s")
        return value

    return {key: _r(ratio(rate(top), rate(bottom))) for key, top, bottom in RATIO_PAIRS}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _cache() -> Path:
    path = REPO_ROOT / ".cache" / "benchmarks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_swarm(quick: bool, out_dir: Path) -> dict[str, Path]:
    """Measure and write `swarm-<date>.json` and `.md` (`swarm-quick.*` with --quick)."""
    sizes = QUICK if quick else FULL
    began, load_before = datetime.now(UTC), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="swarm-", dir=_cache()))  # the agents' logs stay for inspection
    figures = measure(sizes, work)
    for db_file in work.glob("*.db*"):
        db_file.unlink(missing_ok=True)
    return write_benchmark("swarm", quick=quick, began=began, load_before=load_before, figures=figures,
                           render=markdown, out_dir=out_dir,
                           docker_version=docker_client().version().get("Version", "?"), sizes=asdict(sizes),
                           concurrency=ours_concurrency(), work_dir=str(work), target_ratio=TARGET_RATIO,
                           target_ratios=list(TARGET_KEYS))
