"""The scenarios, each a function of the shared `Bench` and one agent `System`.

Clocks: a flow run's lateness is the Docker `start` event of its container minus the run's scheduled start
time (both wall clock on this host). Burst throughput runs from the agent's first poll (the moment it could
see the 200 due runs) to the last container start, so agent start-up is not charged to it.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker

from benchmarks import backend
from benchmarks.ceiling import CeilingResult, CeilingSpec, run_ceiling
from benchmarks.config import BenchConfig
from benchmarks.cpu_window import CpuSampler
from benchmarks.dockerenv import StartWatcher, remove_flow_containers
from benchmarks.peers import AgentProcess
from benchmarks.procstats import usage
from benchmarks.proxy import POLL_OPERATION, CountingProxy
from benchmarks.stats import ratio, summary


class AgentFailed(RuntimeError):
    """The agent did not reach its first poll, or died; the message carries the tail of its log."""


@dataclass
class Bench:
    """Everything the scenarios share: one server, one daemon, one flow image, one event clock."""

    config: BenchConfig
    docker: docker.DockerClient
    watcher: StartWatcher
    server_url: str
    flow_id: str
    flow_name: str
    image: str
    rng: random.Random
    token: str


@dataclass
class System:
    """One agent under test, its proxy, and what was measured about it."""

    agent: AgentProcess
    proxy: CountingProxy
    figures: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.agent.system


def _log_tail(agent: AgentProcess, lines: int = 30) -> str:
    try:
        return "\n".join(agent.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def launch(system: System, timeout: float = 60.0) -> float:
    """Start the agent and wait for its first poll; records launch -> first poll, returns the poll's time."""
    return await_first_poll(system, system.agent.start(), timeout)


def await_first_poll(system: System, started: float, timeout: float = 60.0, key: str = "startup") -> float:
    """The wall-clock time of the first poll of the agent launched at `started`; AgentFailed if none comes.
    Launch -> first poll goes to `samples[key]`: a launch into a burst is not a quiet start-up (the bursts
    are 5 of ours and 2 of Prefect's, so mixing them in would compare unlike medians)."""
    first = system.proxy.wait_first_poll(started, timeout)
    if first is None or not system.agent.alive():
        system.agent.stop()
        raise AgentFailed(f"{system.name} agent never polled within {timeout} s:\n{_log_tail(system.agent)}")
    system.samples.setdefault(key, []).append(first - started)
    return first


def create_runs(bench: Bench, label: str, times: list[float], tag: str) -> dict[str, float]:
    """Create one flow run per scheduled time (8 in parallel); returns {run id: scheduled start}."""

    def one(index: int, at: float) -> tuple[str, float]:
        name = f"bench-{tag}-{index}-{bench.token}"
        run_id = backend.create_flow_run(bench.server_url, bench.flow_id, name=name, labels=[label],
                                         scheduled_at=at)
        return run_id, at

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="create") as pool:
        return dict(pool.map(one, range(len(times)), times))


def _lateness(bench: Bench, runs: dict[str, float], system: System, key: str) -> list[float]:
    starts = bench.watcher.wait_for(runs, timeout=bench.config.run_timeout_s)
    late = [starts[rid] - at for rid, at in runs.items() if rid in starts]
    system.samples[key] = late
    system.figures.update(summary(late, key))
    system.figures[f"{key}.started"] = f"{len(starts)}/{len(runs)}"
    if len(starts) < len(runs):
        system.errors[key] = f"only {len(starts)} of {len(runs)} containers started"
    backend.finish_runs(bench.server_url, list(runs))
    return late


def scenario_startup(bench: Bench, system: System) -> None:
    """Launch -> first poll, `startup_repeats` times on a quiet queue (plus every other launch in the run)."""
    for _ in range(bench.config.startup_repeats):
        launch(system)
        time.sleep(1.0)  # let start-up settle (a first long poll in flight), as in normal operation
        took = system.agent.stop()
        if took is not None:
            system.samples.setdefault("shutdown", []).append(took)


def scenario_idle(bench: Bench, systems: list[System]) -> None:
    """Agents side by side with nothing to do: RSS, CPU seconds and API requests per minute."""
    warmup = 2.0 if bench.config.smoke else 30.0  # past Prefect's backoff ramp (0.25 s .. 10 s)
    time.sleep(warmup)
    begin = time.time()
    before = {s.name: usage(s.agent.pid) for s in systems}
    peak = {s.name: before[s.name].rss_mb for s in systems}
    while time.time() - begin < bench.config.idle_s:
        time.sleep(min(5.0, max(0.0, bench.config.idle_s - (time.time() - begin))))
        for s in systems:
            peak[s.name] = max(peak[s.name], usage(s.agent.pid).rss_mb)
    end = time.time()
    for s in systems:
        after = usage(s.agent.pid)
        cpu = after.cpu_s - before[s.name].cpu_s
        requests = len(s.proxy.requests(begin, end))
        s.figures.update({
            "idle.rss_mb": after.rss_mb,
            "idle.peak_rss_mb": peak[s.name],
            "idle.cpu_s": cpu,
            "idle.cpu_percent": 100.0 * cpu / (end - begin),
            "idle.requests_per_min": 60.0 * requests / (end - begin),
            "idle.window_s": end - begin,
            "idle.requests_by_operation": s.proxy.by_operation(begin, end),
        })


def scenario_immediate(bench: Bench, system: System) -> None:
    """Runs created one at a time, due at once, at random moments while the agent idles."""
    runs: dict[str, float] = {}
    low, high = bench.config.immediate_gap_s
    for index in range(bench.config.immediate_runs):
        time.sleep(bench.rng.uniform(low, high))
        runs.update(create_runs(bench, system.agent.label, [time.time()], f"{system.name}-imm{index}"))
    _lateness(bench, runs, system, "immediate")


def scenario_scheduled(bench: Bench, system: System) -> None:
    """Runs due at staggered future times, all created up front: how punctual is each container start?"""
    cfg = bench.config
    base = time.time() + cfg.scheduled_lead_s
    times = [base + i * cfg.scheduled_spacing_s for i in range(cfg.scheduled_runs)]
    runs = create_runs(bench, system.agent.label, times, f"{system.name}-sched")
    _lateness(bench, runs, system, "scheduled")


def ceiling_burst(bench: Bench, spec: CeilingSpec) -> CeilingResult:
    result = run_ceiling(bench.docker, bench.watcher, image=bench.image, flow_name=bench.flow_name,
                         runs=bench.config.burst_runs, spec=spec, timeout=bench.config.run_timeout_s)
    remove_flow_containers(bench.docker, bench.flow_name)
    return result


def scenario_burst(bench: Bench, system: System, ceiling: CeilingResult | None, phase: str = "burst") -> None:
    """N runs due now, the agent started on them: throughput, API requests and the agent's CPU per launched
    run. Appended to the system's `burst.each`; `finish_bursts` turns the repeats into the figures."""
    n = bench.config.burst_runs
    runs = create_runs(bench, system.agent.label, [time.time()] * n, f"{system.name}-{phase}")
    started = system.agent.start()
    with CpuSampler(system.agent.pid) as cpu:  # sampling from launch, so the first poll lies inside
        first_poll = await_first_poll(system, started, key="startup_burst")
        starts = bench.watcher.wait_for(runs, timeout=bench.config.run_timeout_s)
        system.proxy.wait_quiet(quiet_s=2.0, timeout=15.0)  # the last runs' trailing Submitted/log writes
        stopping = time.time()  # whatever the agent sends while shutting down is not the burst's
    system.agent.stop()
    if not starts:
        raise AgentFailed(f"no container of the {n}-run burst started:\n{_log_tail(system.agent)}")
    tail = [r.at for r in system.proxy.requests(first_poll, stopping) if r.operation != POLL_OPERATION]
    window_end = max([*starts.values(), *tail]) + 1e-6
    requests = system.proxy.requests(first_poll, window_end)
    duration = max(starts.values()) - first_poll
    runs_per_s = len(starts) / duration if duration > 0 else None
    ceiling_rate = ceiling.runs_per_s if ceiling else None
    window = cpu.window(first_poll, window_end)
    system.figures.setdefault("burst.each", []).append({
        "runs": n, "started": len(starts), "duration_s": duration, "runs_per_s": runs_per_s,
        "ceiling_runs_per_s": ceiling_rate, "ratio_to_ceiling": ratio(runs_per_s, ceiling_rate),
        "requests": len(requests), "requests_per_run": len(requests) / len(starts),
        "window_s": window.wall_s, "cpu_s": window.agent_cpu_s,
        "cpu_ms_per_run": 1000.0 * window.agent_cpu_s / len(starts), "cpu_percent": window.percent_of_core,
        "machine_busy_s": window.machine_busy_s, "cpu_share_percent": window.share_percent,
        "requests_by_operation": system.proxy.by_operation(first_poll, window_end),
    })
    if len(starts) < n:
        system.errors[phase] = f"only {len(starts)} of {n} containers started"
    backend.finish_runs(bench.server_url, list(runs))
    remove_flow_containers(bench.docker, bench.flow_name)


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def burst_figures(each: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeated bursts as figures: medians, the ratio's spread, requests by operation summed."""
    ratios = [b["ratio_to_ceiling"] for b in each if b["ratio_to_ceiling"] is not None]
    operations: Counter[str] = Counter()
    for b in each:
        operations.update(b["requests_by_operation"])
    figures: dict[str, Any] = {
        "burst.runs": each[0]["runs"], "burst.started": min(b["started"] for b in each),
        "burst.repeats": len(each),
        "burst.ratio_min": min(ratios, default=None), "burst.ratio_max": max(ratios, default=None),
        "burst.requests_by_operation": dict(operations.most_common()),
    }
    for key in ("duration_s", "runs_per_s", "ceiling_runs_per_s", "ratio_to_ceiling", "requests_per_run",
                "cpu_s", "cpu_ms_per_run", "cpu_percent", "cpu_share_percent"):
        figures[f"burst.{key}"] = _median([b[key] for b in each])
    return figures


def finish_bursts(system: System) -> None:
    each: list[dict[str, Any]] = system.figures.get("burst.each", [])
    if not each:
        return
    system.figures.update(burst_figures(each))
    system.samples["burst_ratio"] = [b["ratio_to_ceiling"] for b in each if b["ratio_to_ceiling"] is not None]
    system.samples["burst_requests"] = [float(b["requests"]) for b in each]


def finish_startup(system: System) -> None:
    samples = system.samples.get("startup", [])
    if samples:
        system.figures["startup.first_poll_s"] = statistics.median(samples)
        system.figures["startup.samples"] = len(samples)
    stops = system.samples.get("shutdown", [])
    if stops:
        system.figures["shutdown.stop_s"] = statistics.median(stops)
