"""`python -m benchmarks soak [--quick]`: our agent under steady load for 20 minutes.

One server (`python -m server start`, SQLite, auth off), one counting proxy, our agent (default settings, no
pulls). A feeder thread creates one flow run due every second, each a few seconds ahead of its due time
(inside the agent's 10 s prefetch); every container is the sleeper stand-in living `container_s` seconds.
The stand-in reports nothing, so the benchmark plays its flow runner: the run is set Running at its
container's `start` event and Success one second before the container exits. The agent's watcher then sees
an exit 0 of a finished run and removes the container at once: its normal steady path (an exit 0 of a run
still Running would be left alone and the container kept, which is not what production looks like).

Every `sample_s` the agent's process tree is sampled (RSS, CPU, open fds, threads; psutil), with the server's
RSS and the containers running. Lateness = the container's `start` event (Docker's clock) - the run's
scheduled start. The analysis, goals, markdown and plot are in `soak_report.py`.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import docker
import psutil

from benchmarks import backend
from benchmarks.dockerenv import (
    FLOW_NAME_LABEL,
    ContainerEvents,
    docker_client,
    ensure_sleeper_image,
    remove_flow_containers,
)
from benchmarks.peers import our_agent
from benchmarks.proxy import CountingProxy

LABEL = "bench-soak"
STATES_MUTATION = ("mutation($input: set_flow_run_states_input!) "
                   "{ set_flow_run_states(input: $input) { states { id status message } } }")


@dataclass(frozen=True)
class Sizes:
    duration_s: float  # how long runs fall due (one every `interval_s`)
    container_s: float  # how long each flow container lives
    sample_s: float  # resource sampling period
    bucket_s: float  # lateness is reported per bucket of scheduled time
    lead_s: float = 5.0  # each run is created this long before it is due (the agent prefetches 10 s)
    interval_s: float = 1.0
    tail_timeout_s: float = 90.0  # after the last due run: how long to wait for the last containers to go

    @property
    def warmup_s(self) -> float:
        """Left out of the RSS fit and the lateness comparison: the first 3 minutes, or a third if shorter."""
        return min(180.0, self.duration_s / 3.0)


FULL = Sizes(duration_s=1200.0, container_s=30.0, sample_s=10.0, bucket_s=60.0)
QUICK = Sizes(duration_s=30.0, container_s=6.0, sample_s=2.0, bucket_s=10.0, tail_timeout_s=30.0)


class ContainerLog(ContainerEvents):
    """Every `start`, `die` and `destroy` of the soak's flow containers, per flow run (Docker's clock)."""

    def __init__(self, client: docker.DockerClient, flow_name: str) -> None:
        super().__init__(client, flow_name, ("start", "die", "destroy"))

    def running(self) -> int:
        starts, dies = self.snapshot("start"), self.snapshot("die")
        return sum(len(t) for t in starts.values()) - sum(len(t) for t in dies.values())


def set_states(url: str, run_ids: list[str], state: str) -> int:
    """Set `state` on the runs (version unchecked, as a flow runner that just read it); returns refusals."""
    payload: dict[str, Any] = {"type": state, "message": f"benchmark: the stand-in flow is {state}",
                               "__version__": "1.4.1", "context": {}, "cached_inputs": {}}
    if state == "Success":
        payload["_result"] = {"type": "NoResultType", "__version__": "1.4.1"}
    refused = 0
    for start in range(0, len(run_ids), 100):
        chunk = run_ids[start:start + 100]
        states = [{"flow_run_id": rid, "version": None, "state": payload} for rid in chunk]
        try:
            out = backend.graphql(url, STATES_MUTATION, {"input": {"states": states}})["set_flow_run_states"]
            refused += sum(s["status"] != "SUCCESS" for s in out["states"])
        except (OSError, backend.GraphQLError):
            refused += len(states)
    return refused


class Load:
    """The feeder (one run due every `interval_s`) and the stand-in flow runner (Running, then Success)."""

    def __init__(self, url: str, flow_id: str, sizes: Sizes, containers: ContainerLog, t0: float) -> None:
        self.url, self.flow_id, self.sizes, self.containers, self.t0 = url, flow_id, sizes, containers, t0
        self.scheduled: dict[str, float] = {}
        self.created_at: dict[str, float] = {}
        self.create_errors: list[str] = []
        self.refused = {"Running": 0, "Success": 0}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._feed, name="soak-feeder", daemon=True),
                         threading.Thread(target=self._flow_runner, name="soak-runner", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait_fed(self) -> None:
        self._threads[0].join()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _feed(self) -> None:
        count = int(self.sizes.duration_s / self.sizes.interval_s)
        for index in range(count):
            due = self.t0 + index * self.sizes.interval_s
            if self._stop.wait(max(0.0, due - self.sizes.lead_s - time.time())):
                return
            try:
                run_id = backend.create_flow_run(self.url, self.flow_id, name=f"soak-{index:05d}",
                                                 labels=[LABEL], scheduled_at=due)
            except (OSError, backend.GraphQLError) as exc:
                self.create_errors.append(f"run {index}: {exc}"[:300])
                continue
            self.scheduled[run_id], self.created_at[run_id] = due, time.time()

    def _flow_runner(self) -> None:
        running: set[str] = set()
        finished: set[str] = set()
        while not self._stop.wait(0.2):
            starts = self.containers.snapshot("start")
            fresh = [rid for rid in starts if rid not in running]
            if fresh:
                self.refused["Running"] += set_states(self.url, fresh, "Running")
                running.update(fresh)
            ending = time.time() + 1.0 - self.sizes.container_s  # started before this: exits within 1 s
            done = [rid for rid in running - finished if starts.get(rid, [ending])[0] <= ending]
            if done:
                self.refused["Success"] += set_states(self.url, done, "Success")
                finished.update(done)


def _tree_sample(pid: int) -> dict[str, float]:
    rss = cpu = fds = threads = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"rss_mb": 0.0, "cpu_s": 0.0, "fds": 0.0, "threads": 0.0}
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
                fds += proc.num_fds()
                threads += proc.num_threads()
        except psutil.NoSuchProcess:
            continue
    return {"rss_mb": rss / 2**20, "cpu_s": cpu, "fds": fds, "threads": threads}


class Sampler:
    """The agent's process tree every `period` s (and the server's RSS), from /proc via psutil."""

    def __init__(self, agent_pid: int, server_pid: int, containers: ContainerLog, period: float) -> None:
        self.agent_pid, self.server_pid, self.period = agent_pid, server_pid, period
        self.containers = containers
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stops sampling, then takes one last sample: after the drain, with every container gone."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()

    def _sample(self) -> None:
        agent, server = _tree_sample(self.agent_pid), _tree_sample(self.server_pid)
        self.samples.append({"t": time.time(), **agent, "server_rss_mb": server["rss_mb"],
                             "containers_running": float(self.containers.running())})

    def _run(self) -> None:
        began = time.monotonic()
        while True:
            self._sample()
            ticks = int((time.monotonic() - began) / self.period) + 1
            if self._stop.wait(max(0.0, began + ticks * self.period - time.monotonic())):
                return


def _wait_tail(load: Load, containers: ContainerLog, sizes: Sizes) -> float:
    """After the last due run: until every run started and every container was destroyed (by the agent),
    or `tail_timeout_s` past the last container's expected exit; returns the seconds waited."""
    began = time.time()
    deadline = load.t0 + sizes.duration_s + sizes.container_s + sizes.tail_timeout_s
    while time.time() < deadline:
        starts, destroyed = containers.snapshot("start"), containers.snapshot("destroy")
        if set(load.scheduled) <= starts.keys() and starts.keys() <= destroyed.keys():
            break
        time.sleep(0.5)
    return time.time() - began


def _final_states(url: str, run_ids: list[str]) -> dict[str, int]:
    """The state of every run the soak created, read 500 ids at a time (the server caps a list's rows)."""
    query = "query($ids: [uuid!]) { flow_run(where: {id: {_in: $ids}}, limit: 500) { id state } }"
    counts: dict[str, int] = {}
    for start in range(0, len(run_ids), 500):
        for run in backend.graphql(url, query, {"ids": run_ids[start:start + 500]})["flow_run"]:
            counts[run["state"]] = counts.get(run["state"], 0) + 1
    return counts


def _agent_log(path: Path) -> dict[str, Any]:
    """WARNING and ERROR lines of the agent's log (the first few kept): a soak should have none."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    bad = [line for line in lines if " - WARNING - " in line or " - ERROR - " in line]
    return {"lines": len(lines), "warnings": sum(" - WARNING - " in line for line in bad),
            "errors": sum(" - ERROR - " in line for line in bad), "first": [line[:300] for line in bad[:10]]}


def _left_behind(client: docker.DockerClient, flow_name: str) -> int:
    return len(client.api.containers(all=True, filters={"label": f"{FLOW_NAME_LABEL}={flow_name}"}))


def _drive(server: backend.Server, proxy: CountingProxy, containers: ContainerLog, sizes: Sizes,
           work: Path, flow_name: str) -> dict[str, Any]:
    """Start the agent, feed the load, wait for the tail; the raw record of the run."""
    client = docker_client()
    flow_id = backend.register_flow(server.url, flow_name, ensure_sleeper_image(client),
                                    env={"BENCH_SLEEP_S": f"{sizes.container_s:g}"})
    agent = our_agent(proxy.url, server.port, LABEL, flow_name, work)
    try:
        launched = agent.start()
        first_poll = proxy.wait_first_poll(launched, 60.0)
        if first_poll is None:
            raise RuntimeError(f"our agent never polled; see {agent.log_path}")
        t0 = time.time() + sizes.lead_s + 1.0
        load = Load(server.url, flow_id, sizes, containers, t0)
        assert server.process is not None
        with Sampler(agent.pid, server.process.pid, containers, sizes.sample_s) as sampler:
            load.start()
            load.wait_fed()
            tail_s = _wait_tail(load, containers, sizes)
            load.stop()
        left = _left_behind(client, flow_name)
        stop_s = agent.stop()
        return {"flow_name": flow_name, "t0": t0, "launched": launched, "first_poll": first_poll,
                "tail_s": tail_s,
                "scheduled": load.scheduled, "created_at": load.created_at,
                "create_errors": load.create_errors,
                "refused": load.refused, "starts": containers.snapshot("start"),
                "dies": containers.snapshot("die"), "destroys": containers.snapshot("destroy"),
                "samples": sampler.samples, "containers_left_by_agent": left, "agent_stop_s": stop_s,
                "final_states": _final_states(server.url, list(load.scheduled)),
                "requests": proxy.by_operation(t0 + sizes.warmup_s, t0 + sizes.duration_s),
                "agent_log": _agent_log(agent.log_path)}
    finally:
        agent.stop()
        remove_flow_containers(client, flow_name)


def measure(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The raw record of one soak (`soak_report.analyse` turns it into figures); every container removed."""
    client = docker_client()
    flow_name = f"bench-soak-{os.getpid()}"
    server = backend.Server(f"sqlite:///{work / 'soak.db'}", work / "server.log").start()
    try:
        with CountingProxy(server.url, "soak") as proxy, ContainerLog(client, flow_name) as containers:
            return _drive(server, proxy, containers, sizes, work, flow_name)
    finally:
        server.stop()
        remove_flow_containers(client, flow_name)


def run_soak(quick: bool, out_dir: Path, minutes: float | None = None) -> dict[str, Path]:
    """Measure, then write soak-<date>.json, .md and .png (soak-quick.* with --quick); `minutes` overrides
    the length of the load."""
    from benchmarks.report import write_benchmark
    from benchmarks.soak_report import analyse, markdown, move_goals, plot

    sizes = QUICK if quick else FULL
    if minutes is not None:
        sizes = replace(sizes, duration_s=minutes * 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as work:
        began, load_before = datetime.now(UTC), os.getloadavg()[0]
        raw = measure(sizes, Path(work))
    figures = analyse(raw, sizes)
    stem = "soak-quick" if quick else f"soak-{began.strftime('%Y-%m-%d')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(figures, sizes, out_dir / f"{stem}.png")
    paths = write_benchmark("soak", quick=quick, began=began, load_before=load_before, figures=figures,
                            render=markdown, out_dir=out_dir, plot=f"{stem}.png", flow_name=raw["flow_name"],
                            sizes=asdict(sizes) | {"warmup_s": sizes.warmup_s},
                            title="Soak: our agent under steady load")
    move_goals(paths["json"])
    return paths | {"png": out_dir / f"{stem}.png"}
