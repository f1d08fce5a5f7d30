"""The whole benchmark, in the order that keeps it fair and under 20 minutes.

1. start-up (each agent alone, `startup_repeats` launches);
2. idle (both agents side by side, each behind its own proxy: they do not interact);
3. immediate, then scheduled (one agent at a time; the other idles in the background);
4. bursts, each right after a ceiling burst at its agent's options, in rounds: ceiling, ours, ceiling,
   Prefect, ceiling, ours, ... (`burst_repeats` of ours, `prefect_burst_repeats` of Prefect's; medians);
5. server queue latency on a separately seeded database; 6. our agent's image size.
A system whose agent cannot start is reported as "not measured" and the rest goes on.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import backend
from benchmarks.ceiling import CeilingResult, CeilingSpec
from benchmarks.config import REPO_ROOT, BenchConfig
from benchmarks.dockerenv import StartWatcher, docker_client, ensure_flow_image, remove_flow_containers
from benchmarks.image_size import measure_agent_image
from benchmarks.peers import our_agent, prefect_agent
from benchmarks.proxy import CountingProxy
from benchmarks.queue_latency import measure_queue
from benchmarks.report import evaluate_targets
from benchmarks.scenarios import (
    AgentFailed,
    Bench,
    System,
    ceiling_burst,
    finish_bursts,
    finish_startup,
    launch,
    scenario_burst,
    scenario_idle,
    scenario_immediate,
    scenario_scheduled,
    scenario_startup,
)

FACTORIES = {"ours": our_agent, "prefect": prefect_agent}


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _guard(system: System, phase: str, fn: Callable[[], object], dead: set[str]) -> None:
    """Run one phase of one system; an error is recorded, and a dead agent skips its remaining phases."""
    if system.name in dead:
        return
    _log(f"{phase}: {system.name}")
    try:
        fn()
    except AgentFailed as exc:
        system.errors[phase] = str(exc)
        dead.add(system.name)
    except Exception as exc:  # noqa: BLE001 - one failed scenario must not lose the others' figures
        system.errors[phase] = f"{type(exc).__name__}: {exc}"
    finally:
        running_phase = phase in {"idle", "immediate", "scheduled"}
        if running_phase and not system.agent.alive() and system.name not in dead:
            system.errors.setdefault(phase, "agent process exited")
            dead.add(system.name)


def _machine(client: Any) -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB RAM, "
        f"{platform.system()} {platform.release()}",
        "docker_version": client.version().get("Version", "?"),
        "python": platform.python_version(),
    }


def _agent_phases(bench: Bench, systems: list[System], dead: set[str]) -> dict[str, dict[str, Any]]:
    """Phases 1-4; returns the ceiling figures keyed by the agent each one preceded."""
    for s in systems:
        _guard(s, "startup", partial(scenario_startup, bench, s), dead)
    for s in systems:
        _guard(s, "launch", partial(launch, s), dead)
    idle = [s for s in systems if s.name not in dead]
    if idle:
        _log(f"idle: {', '.join(s.name for s in idle)} for {bench.config.idle_s:.0f} s")
        try:
            scenario_idle(bench, idle)
        except Exception as exc:  # noqa: BLE001
            for s in idle:
                s.errors["idle"] = f"{type(exc).__name__}: {exc}"
    for phase, fn in (("immediate", scenario_immediate), ("scheduled", scenario_scheduled)):
        for s in systems:
            _guard(s, phase, partial(fn, bench, s), dead)
    for s in systems:
        s.agent.stop()
    remove_flow_containers(bench.docker, bench.flow_name)
    ceilings = _bursts(bench, systems, dead)
    for s in systems:
        finish_startup(s)
        finish_bursts(s)
    return ceilings


def burst_schedule(config: BenchConfig, names: list[str]) -> list[tuple[str, int]]:
    """(system, repeat) in the order run: round k holds every system with a k-th burst, so the engine's drift
    during the phase touches both agents alike; the rounds past Prefect's repeats are ours alone."""
    rounds = max((config.repeats_of(name) for name in names), default=0)
    return [(name, k) for k in range(1, rounds + 1) for name in names if k <= config.repeats_of(name)]


def _bursts(bench: Bench, systems: list[System], dead: set[str]) -> dict[str, dict[str, Any]]:
    """Each burst right after a ceiling burst at its agent's options; returns the ceilings per agent."""
    by_name = {s.name: s for s in systems}
    ceilings: dict[str, list[CeilingResult]] = {}
    for name, k in burst_schedule(bench.config, list(by_name)):
        s = by_name[name]
        if name in dead:
            continue
        agent = s.agent
        spec = CeilingSpec(concurrency=agent.concurrency, auto_remove=agent.auto_remove, init=agent.init)
        _log(f"ceiling before {name} burst {k}/{bench.config.repeats_of(name)}: "
             f"{bench.config.burst_runs} runs at concurrency {spec.concurrency}")
        ceiling: CeilingResult | None = None
        try:
            ceiling = ceiling_burst(bench, spec)
            ceilings.setdefault(name, []).append(ceiling)
        except Exception as exc:  # noqa: BLE001 - the burst still runs; its ratio is not measured
            s.errors[f"ceiling{k}"] = f"{type(exc).__name__}: {exc}"
            remove_flow_containers(bench.docker, bench.flow_name)
        phase = f"burst{k}"
        _guard(s, phase, partial(scenario_burst, bench, s, ceiling, phase), dead)
    return {f"before_{name}": _ceiling_summary(results) for name, results in ceilings.items()}


def _ceiling_summary(results: list[CeilingResult]) -> dict[str, Any]:
    """The ceilings taken before one agent's bursts: their median and each one, in order."""
    return {
        **results[0].__dict__,
        "repeats": len(results),
        "runs_per_s": statistics.median(r.runs_per_s for r in results),
        "duration_s": statistics.median(r.duration_s for r in results),
        "started": min(r.started for r in results),
        "runs_per_s_each": [r.runs_per_s for r in results],
    }


def _measure_agents(
    config: BenchConfig, client: Any, work: Path, token: str, flow_name: str
) -> tuple[list[System], dict[str, dict[str, Any]]]:
    """Phases 1-4 against one server, one start-event clock and one proxy per agent; all torn down after."""
    image = ensure_flow_image(client)
    systems: list[System] = []
    server = backend.Server(database_url=f"sqlite:///{work / 'bench.db'}", log_path=work / "server.log")
    with ExitStack() as stack:
        server.start()
        stack.callback(server.stop)
        stack.callback(remove_flow_containers, client, flow_name)
        flow_id = backend.register_flow(server.url, flow_name, image)
        watcher = stack.enter_context(StartWatcher(client, flow_name))
        bench = Bench(config, client, watcher, server.url, flow_id, flow_name, image,
                      random.Random(config.seed), token)
        for name in config.systems:
            proxy = stack.enter_context(CountingProxy(server.url, name))
            agent = FACTORIES[name](proxy.url, server.port, f"bench-{name}-{token}", f"bench-{name}", work)
            systems.append(System(agent, proxy))
            stack.callback(agent.stop)
        return systems, _agent_phases(bench, systems, set())


def run(config: BenchConfig) -> dict[str, Any]:
    """Run every scenario and return the results (the caller writes them)."""
    began = time.time()
    token = uuid.uuid4().hex[:8]
    work = REPO_ROOT / ".cache" / "benchmarks" / token
    work.mkdir(parents=True, exist_ok=True)
    client = docker_client()
    flow_name = f"local-agent-bench-{token}"
    _log(f"work dir {work}")
    systems, ceilings = _measure_agents(config, client, work, token, flow_name)
    figures: dict[str, dict[str, Any]] = {s.name: s.figures for s in systems}
    figures["ceiling"] = ceilings
    errors = {f"{s.name}.{phase}": msg for s in systems for phase, msg in s.errors.items()}
    figures["server"] = _server_figures(config, work, errors)
    if config.build_agent_image:
        _log("agent image size")
        figures.setdefault("ours", {}).update(measure_agent_image(client))
    for db_file in work.glob("*.db*"):  # databases are big and disposable; logs stay for inspection
        db_file.unlink(missing_ok=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), **_machine(client),
        "command": "python -m benchmarks run" + (" --smoke" if config.smoke else ""), "smoke": config.smoke,
        "wall_s": time.time() - began, "work_dir": str(work), "flow_name": flow_name,
        "config": dict(config.__dict__),
    }
    return {
        "meta": meta, "figures": figures, "targets": evaluate_targets(figures),
        "samples": {s.name: s.samples for s in systems}, "errors": errors,
    }


def _server_figures(config: BenchConfig, work: Path, errors: dict[str, str]) -> dict[str, Any]:
    _log(f"server queue latency with {config.queue_runs:,} runs stored")
    try:
        return measure_queue(work, config.queue_runs, config.queue_samples)
    except Exception as exc:  # noqa: BLE001
        errors["server.queue"] = f"{type(exc).__name__}: {exc}"
        return {}
