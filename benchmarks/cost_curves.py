"""`python -m benchmarks cost [--quick]`: how our agent's cost grows with the flow containers it watches.

One server (SQLite, auth off), one counting proxy, our agent alone (default settings: unlimited concurrent
runs). Level by level (0, 50, 200, 500 containers running), runs due now are created with the agent's label
and the agent starts their long-sleeping stand-in containers (`dockerenv.ensure_sleeper_image`); the ramp to
each level is measured (the agent's CPU ms per launched run), then, after a settle period, a window: the
agent's RSS, CPU seconds per minute, open fds and threads (psutil, its process tree), its API requests per
minute by operation at the proxy, and the server's and dockerd's CPU seconds per minute as context.

Level 0 is measured after one short warm-up run (the launch path loads at the first launch). The benchmark
plays the flow runner's part the stand-in lacks (Running at start, heartbeats:
`cost_standin.py`), and checks at the end that every run was claimed and started exactly once, none was
rescheduled by the zombie sweep, and every container was removed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import psutil
from docker.errors import APIError, NotFound

from benchmarks import backend
from benchmarks.config import REPO_ROOT
from benchmarks.cost_standin import FlowRunnerStandIn, StartCounter
from benchmarks.dockerenv import (
    FLOW_NAME_LABEL,
    StartWatcher,
    docker_client,
    ensure_sleeper_image,
    remove_flow_containers,
)
from benchmarks.peers import AgentProcess, our_agent
from benchmarks.procstats import usage
from benchmarks.proxy import CountingProxy


@dataclass(frozen=True)
class Sizes:
    levels: tuple[int, ...]  # flow containers running and watched, in order; the first is the baseline
    settle_s: float  # after a ramp, before the window
    window_s: float
    sample_s: float  # RSS, fds and threads sampled this often in the window
    heartbeat_s: float  # the stand-in flow runner's heartbeat per run (the zombie timeout is 600 s)
    sleep_s: int  # the stand-ins' lifetime: longer than the whole benchmark
    ramp_timeout_s: float


# ~12 min on 2 cores: 4 x (25 + 110) s of windows, ~2.5 min of ramps (500 launches), ~1 min around them.
FULL = Sizes(levels=(0, 50, 200, 500), settle_s=25.0, window_s=110.0, sample_s=5.0, heartbeat_s=180.0,
             sleep_s=3600, ramp_timeout_s=360.0)
QUICK = Sizes(levels=(0, 2, 4), settle_s=2.0, window_s=5.0, sample_s=1.0, heartbeat_s=3.0, sleep_s=600,
              ramp_timeout_s=60.0)


LOG_PROBLEM = re.compile(r" - (WARNING|ERROR|CRITICAL) - |Traceback \(most recent call last\)")


def _log(message: str) -> None:
    print(f"[cost {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Rig:
    """The parts one cost run shares: server, proxy, agent, the event clocks and the stand-in runner."""

    client: docker.DockerClient
    server: backend.Server
    proxy: CountingProxy
    agent: AgentProcess
    watcher: StartWatcher
    counter: StartCounter
    runner: FlowRunnerStandIn
    flow_id: str
    flow_name: str
    token: str
    runs: list[str] = field(default_factory=list)
    dockerd: psutil.Process | None = None


def _dockerd() -> psutil.Process | None:
    """The local daemon's process, when this machine runs it and lets us read its CPU times."""
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "dockerd":
            try:
                proc.cpu_times()
                return proc
            except psutil.Error:
                return None
    return None


def _cpu_s(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    try:
        times = proc.cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return None


def _per_min(before: float | None, after: float | None, minutes: float) -> float | None:
    return (after - before) / minutes if before is not None and after is not None else None


def _tree_counts(pid: int) -> tuple[int, int]:
    """Open fds and threads of the process tree."""
    root = psutil.Process(pid)
    fds = threads = 0
    for proc in (root, *root.children(recursive=True)):
        try:
            fds += proc.num_fds()
            threads += proc.num_threads()
        except psutil.Error:
            continue
    return fds, threads


def create_runs(rig: Rig, count: int, tag: str) -> list[str]:
    """`count` runs due now with the agent's label (8 creations in flight)."""
    now = time.time()

    def one(index: int) -> str:
        return backend.create_flow_run(rig.server.url, rig.flow_id, name=f"cost-{tag}-{index}-{rig.token}",
                                       labels=[rig.agent.label], scheduled_at=now)

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="cost-create") as pool:
        return list(pool.map(one, range(count)))


def ramp(rig: Rig, count: int, sizes: Sizes, idle_cpu_per_s: float | None) -> dict[str, Any]:
    """Grow by `count` containers: the agent's CPU while it launches them, per launched run."""
    before, began = usage(rig.agent.pid), time.time()
    runs = create_runs(rig, count, f"to{len(rig.runs) + count}")
    starts = rig.watcher.wait_for(runs, timeout=sizes.ramp_timeout_s)
    rig.proxy.wait_quiet(quiet_s=2.0, timeout=15.0)  # the trailing Submitted and run-log writes
    after, ended = usage(rig.agent.pid), time.time()
    rig.runs += runs
    rig.runner.running([run for run in runs if run in starts])
    cpu = after.cpu_s - before.cpu_s
    net = cpu - idle_cpu_per_s * (ended - began) if idle_cpu_per_s is not None else None
    last = max(starts.values()) if starts else None
    return {"runs": count, "started": len(starts), "launch_s": (last - began) if last else None,
            "window_s": ended - began, "cpu_s": cpu, "cpu_ms_per_run": 1000.0 * cpu / max(len(starts), 1),
            "cpu_ms_per_run_net": 1000.0 * net / max(len(starts), 1) if net is not None else None,
            "requests": len(rig.proxy.requests(began, ended)),
            "requests_by_operation": rig.proxy.by_operation(began, ended)}


def _running_containers(rig: Rig) -> int:
    filters = {"label": f"{FLOW_NAME_LABEL}={rig.flow_name}", "status": "running"}
    return len(rig.client.api.containers(filters=filters))


def window(rig: Rig, level: int, sizes: Sizes) -> dict[str, Any]:
    """After `settle_s`, one window of `window_s`: the agent's cost while it watches `level` containers."""
    time.sleep(sizes.settle_s)
    pid, server_pid = rig.agent.pid, rig.server.process.pid if rig.server.process else None
    server_proc = psutil.Process(server_pid) if server_pid else None
    cpu0, server0, dockerd0 = usage(pid).cpu_s, _cpu_s(server_proc), _cpu_s(rig.dockerd)
    rss: list[float] = []
    fds: list[int] = []
    threads: list[int] = []
    begin = time.time()
    while (left := begin + sizes.window_s - time.time()) > 0:
        time.sleep(min(sizes.sample_s, left))
        rss.append(usage(pid).rss_mb)
        fd, thread = _tree_counts(pid)
        fds.append(fd)
        threads.append(thread)
    end = time.time()
    minutes = (end - begin) / 60.0
    cpu1, server1, dockerd1 = usage(pid).cpu_s, _cpu_s(server_proc), _cpu_s(rig.dockerd)
    ops = rig.proxy.by_operation(begin, end)
    return {
        "level": level, "running": _running_containers(rig), "window_s": end - begin,
        "load_1min": round(os.getloadavg()[0], 2),
        "rss_mb": statistics.median(rss), "rss_max_mb": max(rss), "rss_end_mb": rss[-1],
        "cpu_s_per_min": (cpu1 - cpu0) / minutes, "cpu_percent": 100.0 * (cpu1 - cpu0) / (end - begin),
        "requests_per_min": sum(ops.values()) / minutes,
        "requests_per_min_by_operation": {op: n / minutes for op, n in ops.items()},
        "fds": statistics.median(fds), "fds_max": max(fds), "threads": statistics.median(threads),
        "threads_max": max(threads),
        "server_cpu_s_per_min": _per_min(server0, server1, minutes),
        "dockerd_cpu_s_per_min": _per_min(dockerd0, dockerd1, minutes),
    }


def _ratios(levels: list[dict[str, Any]]) -> None:
    """Each level's figures over level 0's (same run); RSS also as a difference in MiB."""
    base = levels[0]
    for row in levels:
        row["rss_growth_mb"] = row["rss_mb"] - base["rss_mb"]
        row["ratios"] = {key: round(row[key] / base[key], 3) if base[key] else None
                         for key in ("rss_mb", "cpu_s_per_min", "requests_per_min", "fds", "threads")}


def measure_levels(rig: Rig, sizes: Sizes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    levels: list[dict[str, Any]] = []
    ramps: list[dict[str, Any]] = []
    for level in sizes.levels:
        grow = level - len(rig.runs)
        if grow > 0:
            idle = levels[-1]["cpu_s_per_min"] / 60.0 if levels else None
            _log(f"ramp {len(rig.runs)} -> {level} containers")
            ramps.append({"from": len(rig.runs), "to": level} | ramp(rig, grow, sizes, idle))
        _log(f"level {level}: settle {sizes.settle_s:g} s, window {sizes.window_s:g} s")
        levels.append(window(rig, level, sizes))
    _ratios(levels)
    return levels, ramps


def warm_up(rig: Rig, image: str, timeout: float = 60.0) -> None:
    """One short run launched and finished before level 0, so the baseline is an agent that has launched
    (the launch path's modules load at the first launch): the growth is then the watching's, not that
    one-time cost. Its own flow name keeps it out of every count."""
    name = f"{rig.flow_name}-warmup"
    flow_id = backend.register_flow(rig.server.url, name, image, env={"BENCH_SLEEP_S": "3"})
    with StartWatcher(rig.client, name) as watcher:
        run_id = backend.create_flow_run(rig.server.url, flow_id, name=f"warmup-{rig.token}",
                                         labels=[rig.agent.label], scheduled_at=time.time())
        if not watcher.wait_for([run_id], timeout):
            raise RuntimeError(f"the warm-up run never started; see {rig.agent.log_path}")
    backend.finish_runs(rig.server.url, [run_id])  # as its flow runner would, before its container exits
    deadline = time.monotonic() + timeout
    while rig.client.api.containers(all=True, filters={"label": f"{FLOW_NAME_LABEL}={name}"}):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agent did not remove the warm-up container; see {rig.agent.log_path}")
        time.sleep(0.5)


def run_record(db_path: Path, run_ids: list[str]) -> dict[str, Any]:
    """What the server holds about the runs before the benchmark finishes them: their states, their claims
    (Submitted states written), and what the zombie sweep did to them."""
    wanted = set(run_ids)
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM flow_run GROUP BY state").fetchall())
        claims = conn.execute("SELECT flow_run_id, COUNT(*) FROM flow_run_state WHERE state = 'Submitted' "
                              "GROUP BY flow_run_id").fetchall()
        resurrected = conn.execute("SELECT COUNT(*) FROM flow_run WHERE times_resurrected > 0").fetchone()[0]
        lazarus = conn.execute("SELECT COUNT(*) FROM log WHERE name = 'lazarus'").fetchone()[0]
    claimed = {run: n for run, n in claims if run in wanted}
    return {"states": states, "claimed_once": sum(n == 1 for n in claimed.values()),
            "claimed_more_than_once": sum(n > 1 for n in claimed.values()),
            "never_claimed": len(wanted - claimed.keys()), "rescheduled_by_zombie_sweep": resurrected,
            "lazarus_log_lines": lazarus}


def _agent_log_problems(rig: Rig) -> list[str]:
    try:
        lines = rig.agent.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no agent log)"]
    return [line for line in lines if LOG_PROBLEM.search(line)]


def remove_all(client: docker.DockerClient, flow_name: str) -> int:
    """Force-remove the flow's containers 8 at a time (500 one by one take minutes), then sweep again."""
    found = client.api.containers(all=True, filters={"label": f"{FLOW_NAME_LABEL}={flow_name}"})

    def one(container_id: str) -> int:
        try:
            client.api.remove_container(container_id, force=True)
            return 1
        except (NotFound, APIError):  # already going
            return 0

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="cost-remove") as pool:
        removed = sum(pool.map(one, [c["Id"] for c in found]))
    return removed + remove_flow_containers(client, flow_name)


def verify(rig: Rig, db_path: Path) -> dict[str, Any]:
    """Stop the agent, read the run record, finish the runs, remove the containers; what each showed."""
    stop_s = rig.agent.stop()
    record = run_record(db_path, rig.runs)
    backend.finish_runs(rig.server.url, rig.runs)
    starts = rig.counter.counts()
    per_run = [starts.get(run, 0) for run in rig.runs]
    began = time.monotonic()
    removed = remove_all(rig.client, rig.flow_name)
    left = len(rig.client.api.containers(all=True, filters={"label": f"{FLOW_NAME_LABEL}={rig.flow_name}"}))
    problems = _agent_log_problems(rig)
    return record | {
        "runs": len(rig.runs), "started_once": per_run.count(1), "started_more_than_once": sum(
            n > 1 for n in per_run), "never_started": per_run.count(0), "agent_stop_s": stop_s,
        "containers_removed": removed, "remove_s": time.monotonic() - began, "containers_left": left,
        "agent_log_warnings": len(problems), "agent_log_first_warnings": problems[:5],
        "flow_runner": rig.runner.figures()}


def measure(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The whole run against a fresh server; everything it started is torn down, whatever happens."""
    client, token = docker_client(), uuid.uuid4().hex[:8]
    flow_name = f"local-agent-bench-cost-{token}"
    image = ensure_sleeper_image(client)
    db_path = work / "cost.db"
    server = backend.Server(database_url=f"sqlite:///{db_path}", log_path=work / "server.log")
    with ExitStack() as stack:
        server.start()
        stack.callback(server.stop)
        stack.callback(remove_flow_containers, client, flow_name)
        env = {"BENCH_SLEEP_S": str(sizes.sleep_s)}
        flow_id = backend.register_flow(server.url, flow_name, image, env=env)
        watcher = stack.enter_context(StartWatcher(client, flow_name))
        counter = stack.enter_context(StartCounter(client, flow_name))
        runner = stack.enter_context(FlowRunnerStandIn(server.url, sizes.heartbeat_s))
        proxy = stack.enter_context(CountingProxy(server.url, "ours"))
        agent = our_agent(proxy.url, server.port, f"bench-cost-{token}", "bench-cost", work)
        stack.callback(agent.stop)
        rig = Rig(client, server, proxy, agent, watcher, counter, runner, flow_id, flow_name, token,
                  dockerd=_dockerd())
        started = agent.start()
        if proxy.wait_first_poll(started, timeout=60.0) is None:
            raise RuntimeError(f"the agent never polled within 60 s; see {agent.log_path}")
        stack.callback(remove_flow_containers, client, f"{flow_name}-warmup")
        warm_up(rig, image)
        levels, ramps = measure_levels(rig, sizes)
        checks = verify(rig, db_path)
    db_path.unlink(missing_ok=True)
    return {"flow_name": flow_name, "image": image, "levels": levels, "ramps": ramps, "checks": checks}


def run_cost(quick: bool, out_dir: Path, sizes: Sizes | None = None) -> dict[str, Path]:
    """Measure, then write cost-<date>.json, .md and .png (cost-quick.* with --quick)."""
    from benchmarks.cost_report import write_cost

    chosen = sizes or (QUICK if quick else FULL)
    token = uuid.uuid4().hex[:8]
    work = REPO_ROOT / ".cache" / "benchmarks" / f"cost-{token}"
    work.mkdir(parents=True, exist_ok=True)
    began, load_before = datetime.now(UTC), os.getloadavg()[0]
    figures = measure(chosen, work)
    command = "python -m benchmarks cost" + (" --quick" if quick else "")
    return write_cost(figures, out_dir, quick=quick, began=began, load_before=load_before, command=command,
                      sizes=asdict(chosen), work_dir=work)
