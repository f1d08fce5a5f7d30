"""The chaos scenarios (tests/chaos and benchmarks/recovery.py run these, one copy): a burst of due runs for
several agents competing for them through a `FaultProxy`, with engine faults, an agent SIGKILLed and
restarted under the same name, or the server restarted, in the middle of it.

Each returns a `Verdict` (tests/support/chaos.py) read from Docker's event stream and the server; nothing the
agents say about themselves is believed, their output is only counted for retries.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from tests.support.api import call
from tests.support.chaos import (
    AGENT_RETRY,
    CHAOS_LABEL,
    ORPHAN_REQUEUE,
    Agent,
    FlowRunnerStandIn,
    Server,
    StartLog,
    Verdict,
    create_runs,
    parse_ts,
    read_runs,
    register_flow,
    wait_settled,
)
from tests.support.fault_proxy import FaultProxy

SETTLE_TIMEOUT_S = 150.0  # a bound on termination (the 90 s stale-claim path included), not a speed target


class RestartableServer(Server, Protocol):
    def stop(self, timeout: float = 15) -> int | None: ...

    def start(self) -> None: ...


@dataclass
class ChaosEnv:
    """One server, one proxy, the stand-in image, and how to start an agent (`spawn(name or None)`)."""

    server: RestartableServer
    proxy: FaultProxy
    image: str
    spawn: Callable[[str | None], Agent]
    tag: str


def new_tag() -> str:
    """The label of one scenario's runs and containers (agents poll with it, cleanup removes by it)."""
    return f"chaos-{uuid.uuid4().hex[:8]}"


def agent_settings(proxy: FaultProxy, tag: str) -> dict[str, Any]:
    """Every agent of a scenario: Docker through the proxy, no pulls, the same labels (they compete)."""
    return {"base_url": proxy.base_url, "no_pull": True, "labels": [tag],
            "container_labels": {CHAOS_LABEL: tag}}


class Burst:
    """Due runs created before any agent starts; the start log and the flow-runner stand-in follow them."""

    def __init__(self, env: ChaosEnv, runs: int) -> None:
        self.env = env
        self.runner = FlowRunnerStandIn(env.server.url)
        self.starts = StartLog(env.tag, on_start=self.runner.started)
        flow_id = register_flow(env.server, env.image, env.tag)
        self.run_ids = create_runs(env.server, flow_id, runs, env.tag)
        self.agents: list[Agent] = []

    def spawn(self, name: str | None = None) -> Agent:
        agent = self.env.spawn(name)
        self.agents.append(agent)
        return agent

    def wait_starts(self, count: int, timeout: float = 90.0, agent: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            starts = self.starts.snapshot()
            if sum(1 for s in starts if agent is None or s.agent == agent) >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"fewer than {count} container starts after {timeout} s")

    def verdict(self, scenario: str, t0: float, timeout: float = SETTLE_TIMEOUT_S) -> Verdict:
        settled = wait_settled(self.env.server, self.run_ids, self.starts, timeout)
        wall = time.time() - t0
        starts = self.starts.snapshot()
        records = read_runs(self.env.server, self.run_ids)
        verdict = Verdict(scenario, len(self.run_ids), self.starts.counts(), records,
                          faults=self.env.proxy.counters().as_dict(), wall_s=wall,
                          agent_retries=sum(a.output().count(AGENT_RETRY) for a in self.agents))
        verdict.figures["settled"] = settled
        if starts:
            verdict.figures["last_start_s"] = round(max(s.at for s in starts) - t0, 2)
        return verdict

    def __enter__(self) -> Burst:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.starts.close()
        self.runner.close()


def fault_burst(env: ChaosEnv, runs: int = 300, agents: int = 3, *, fail_start: float = 0.05,
                fail_create: float = 0.02, mode: str = "mixed") -> Verdict:
    """Engine faults at create and start while `agents` agents drain `runs` due runs."""
    env.proxy.configure(fail_start=fail_start, fail_create=fail_create, mode=mode, delay_s=0.0)
    with Burst(env, runs) as burst:
        t0 = time.time()
        for _ in range(agents):
            burst.spawn()
        return burst.verdict(f"fault_burst[{mode}]", t0)


def kill_restart(env: ChaosEnv, runs: int = 120, agents: int = 3, *, delay_s: float = 0.4) -> Verdict:
    """SIGKILL one agent while its launches are in flight (slowed by `delay_s` at create and start), then
    start a new process with the same name; measures how fast its never-launched claims come back."""
    env.proxy.configure(fail_start=0.0, fail_create=0.0, delay_s=delay_s)
    with Burst(env, runs) as burst:
        t0 = time.time()
        victim, *_ = [burst.spawn() for _ in range(agents)]
        burst.wait_starts(3, agent=victim.name)
        victim.kill()
        env.proxy.configure(delay_s=0.0)
        time.sleep(1.0)  # a start Docker was already performing shows up in the event stream
        in_flight = in_flight_claims(env.server, burst, victim.name)
        restarted_at = time.time()
        burst.spawn(victim.name)
        verdict = burst.verdict("kill_restart", t0)
        verdict.figures.update(recovery_figures(verdict, burst, in_flight, restarted_at))
        return verdict


def server_restart(env: ChaosEnv, runs: int = 150, agents: int = 3, *, down_s: float = 3.0) -> Verdict:
    """Stop the server (same port and database) once a third of the runs started, start it again."""
    env.proxy.configure(fail_start=0.0, fail_create=0.0, delay_s=0.0)
    with Burst(env, runs) as burst:
        t0 = time.time()
        for _ in range(agents):
            burst.spawn()
        burst.wait_starts(runs // 3)
        env.server.stop()
        time.sleep(down_s)
        env.server.start()
        return burst.verdict("server_restart", t0)


def in_flight_claims(server: Server, burst: Burst, agent_name: str) -> list[str]:
    """Runs the killed agent holds in Submitted without a container start seen yet: its launches in flight
    (some of them may still be started by Docker, a start it had already asked for)."""
    starts = burst.starts.snapshot()
    started = {s.run_id for s in starts}
    query = "query($ids: [uuid!]) { flow_run(where: {id: {_in: $ids}}, limit: 10000) { id state agent_id } }"
    rows = call(server, query, {"ids": burst.run_ids})["flow_run"]
    own_runs = {s.run_id for s in starts if s.agent == agent_name}
    agent_ids = {r["agent_id"] for r in rows if r["id"] in own_runs and r.get("agent_id")}
    return sorted(r["id"] for r in rows
                  if r["state"] == "Submitted" and r["id"] not in started and r.get("agent_id") in agent_ids)


def recovery_figures(verdict: Verdict, burst: Burst, in_flight: list[str],
                     restarted_at: float) -> dict[str, Any]:
    """Seconds from the new process's start to the last orphan requeue line in a run log ("Rescheduled by
    agent '<name>'...") and to the last requeued orphan's container start; None when none was seen."""
    requeued: dict[str, float] = {}
    for record in verdict.records.values():
        for ts, message in record.logs:
            if ORPHAN_REQUEUE in message:
                requeued[record.id] = max(requeued.get(record.id, 0.0), parse_ts(ts))
    first_start: dict[str, float] = {}
    starts = burst.starts.snapshot()
    for start in starts:
        if start.run_id in requeued and start.at >= restarted_at:
            first_start.setdefault(start.run_id, start.at)
    last_start = max((s.at for s in starts), default=None)

    def since_restart(at: float | None) -> float | None:
        return None if at is None else round(at - restarted_at, 2)

    return {
        "in_flight_at_kill": len(in_flight),
        "orphans": len(requeued),
        "restart_to_last_orphan_requeued_s": since_restart(max(requeued.values(), default=None)),
        "restart_to_last_orphan_started_s": since_restart(max(first_start.values(), default=None)),
        "restart_to_last_start_s": since_restart(last_start),
    }
