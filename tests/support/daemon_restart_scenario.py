"""The Docker daemon restarted in the middle of a burst of stand-in runs: one copy, run by
tests/chaos/test_daemon_restart.py (which asserts on the result) and benchmarks/recovery.py (which writes its
figures).

Without live-restore, dockerd stops every container when it stops and starts none of them again. The agent
runs on the host and survives the restart; every run that had a running container then must be put back to
Scheduled with a WARNING line in its log and launched again, and no run of the burst may end Failed. Runs
claimed but not yet started at the restart take the existing outage path (requeued as docker_unavailable).

The judges share nothing with the agent: container starts come from the daemon's own event stream (followed
across the restart), containers from the daemon's list, states and run logs from the server over HTTP. The
agent's output is only quoted in a problem's details.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any, Protocol

from tests.support import api
from tests.support.agent_fixtures import AgentProcess
from tests.support.docker_events import StartEvents
from tests.support.docker_fixtures import remove_containers
from tests.support.dockerd import RestartFacts, ensure_dockerd, restart_dockerd
from tests.support.ops_helpers import stand_in_flow, stand_in_run
from tests.support.private_dockerd import ChaosDaemon, start_private_daemon
from tests.support.server_fixtures import ServerHandle

REQUEUE_LINE = "the Docker daemon restarted while this run was running"
ATTEMPT_LINE = "resubmitted, attempt 2 of 3"
SUBMITTED = "Submitted for execution: Container ID: "
RUN_LABEL = "io.prefect.flow-run-id"
BURST = 40
# every 4th run ignores SIGTERM: the daemon then waits its shutdown timeout (15 s) before SIGKILL (137), and
# keeps answering on open connections meanwhile, about containers that already exited with 143
STUBBORN_EVERY = 4
LAUNCH_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 180.0  # a bound on termination, not a speed target


class Spawn(Protocol):
    """Starts the agent under test with these settings (`base_url`, `watch_interval`, `container_labels`)."""

    def __call__(self, **settings: Any) -> AgentProcess: ...


# ------------------------------------------------------------------------------------------------ daemon


def open_private_daemon() -> ChaosDaemon:
    """Start (or reuse) the private daemon, without the containers an interrupted session left on it (the
    private daemon belongs to the chaos runs alone). Raises DockerdError or OSError."""
    daemon = start_private_daemon()
    client = daemon.client()
    try:
        for row in client.api.containers(all=True):
            client.api.remove_container(row["Id"], force=True)
    finally:
        client.close()
    return daemon


def leave_daemon_running(daemon: ChaosDaemon, label: str) -> None:
    """A scenario's finally: the daemon answers again (started anew if it died) and `label`'s containers
    are gone."""
    ensure_dockerd(daemon.process, daemon.host, daemon.log)
    client = daemon.client()
    try:
        remove_containers(client, label)
    finally:
        client.close()


def restart(daemon: ChaosDaemon) -> RestartFacts:
    facts = restart_dockerd(daemon.host, log=daemon.log)
    print(facts.summary())
    return facts


# ------------------------------------------------------------------------------------------- observing


def run_messages(server: ServerHandle, run_id: str) -> list[str]:
    return [log["message"] for log in api.run_logs(server, run_id)]


def submissions(server: ServerHandle, run_id: str) -> int:
    return sum(SUBMITTED in m for m in run_messages(server, run_id))


def resubmission_problem(run_id: str, messages: list[str], starts: list[float]) -> str | None:
    """Why a run interrupted by the restart was not resubmitted exactly once (None: it was): its log needs
    the requeue line naming attempt 2 and two 'Submitted' lines, the daemon two starts of its containers."""
    found = []
    if not any(REQUEUE_LINE in m and ATTEMPT_LINE in m for m in messages):
        found.append(f"no line with {REQUEUE_LINE!r} and {ATTEMPT_LINE!r}")
    if (count := sum(SUBMITTED in m for m in messages)) != 2:
        found.append(f"{count} 'Submitted for execution' lines, not 2")
    if len(starts) != 2:
        found.append(f"{len(starts)} container starts, not 2 ({starts})")
    if not found:
        return None
    return f"run {run_id}: " + "; ".join(found) + f"\nrun log: {json.dumps(messages, indent=1)}"


def relaunch_delays(facts: RestartFacts, events: StartEvents, run_ids: list[str]) -> dict[str, float]:
    """Per relaunched run, seconds from `docker info` answering again to its first container start on the
    new daemon (polled every 0.2 s, so a relaunch may precede it by a fraction of a second)."""
    delays = {}
    for run_id in run_ids:
        later = [t for t in events.times(run_id) if t > facts.down_at]
        if later:
            delays[run_id] = round(min(later) - facts.up_at, 2)
    return delays


def container_states(daemon: ChaosDaemon, label: str, run_ids: list[str]) -> dict[str, list[str]]:
    """Each run's containers on the daemon, by status ("running", "created", "exited", ...)."""
    client = daemon.client()
    try:
        found: dict[str, list[str]] = {r: [] for r in run_ids}
        # the low-level list: no per-container inspect that races with the agent removing a container
        for row in client.api.containers(all=True, filters={"label": label}):
            found.setdefault((row.get("Labels") or {}).get(RUN_LABEL, ""), []).append(row["State"])
        return {r: found[r] for r in run_ids}
    finally:
        client.close()


def wait_until_launched(server: ServerHandle, run_ids: list[str], want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (count := sum(submissions(server, r) > 0 for r in run_ids)) < want and time.monotonic() < deadline:
        time.sleep(0.5)
    return count


def wait_until_settled(daemon: ChaosDaemon, label: str, server: ServerHandle, run_ids: list[str],
                       timeout: float) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Stand-ins outsleep the scenario, so every run should end up with exactly one running container; a
    Failed run never will, so a Failed state ends the wait early. Returns containers and states per run."""
    deadline = time.monotonic() + timeout
    while True:
        containers = container_states(daemon, label, run_ids)
        states = {r: api.flow_run(server, r)["state"] for r in run_ids}
        settled = all(c.count("running") == 1 for c in containers.values())
        if settled or "Failed" in states.values() or time.monotonic() > deadline:
            return containers, states
        time.sleep(1)


def run_report(server: ServerHandle, run_id: str, containers: list[str] | None, agent_output: str) -> str:
    """A run's state message and containers, and the agent's INFO+ lines about it."""
    run = api.flow_run(server, run_id)
    lines = [line for line in agent_output.splitlines() if run_id in line and " DEBUG " not in line]
    return (f"run {run_id}: {run['state']} ({run['state_message']}), containers {containers}\n  "
            + "\n  ".join(lines[-20:]))


# ------------------------------------------------------------------------------------------------ result


@dataclass
class RestartBurstResult:
    """What the daemon, its event stream and the server say about one restart in the middle of a burst."""

    runs: int
    launched_at_restart: int
    interrupted: list[str]
    started_on_old_daemon: list[str]
    started_during_shutdown: list[str]
    requeued: list[str]
    requeued_any_run: list[str]
    relaunch_after_up_s: dict[str, float]
    not_resubmitted: dict[str, str]
    failed: list[str]
    stuck: list[str]
    agent_exit: int | None
    facts: RestartFacts
    last_start_after_up_s: float | None
    start_events: int
    event_reconnects: int
    wall_s: float
    details: dict[str, str]
    agent_tail: str

    def figures(self) -> dict[str, Any]:
        delays = list(self.relaunch_after_up_s.values())
        return {
            "runs": self.runs, "launched_at_restart": self.launched_at_restart,
            "interrupted": len(self.interrupted),
            "started_on_old_daemon": len(self.started_on_old_daemon),
            "started_during_daemon_shutdown": len(self.started_during_shutdown),
            "requeued_with_line": len(self.requeued),
            "requeued_with_line_any_run": len(self.requeued_any_run),
            "relaunched": len(delays), "not_resubmitted_once": len(self.not_resubmitted),
            "failed": len(self.failed), "without_one_running_container": len(self.stuck),
            "agent_exit_code": self.agent_exit,
            "daemon_sigterm_to_exit_s": round(self.facts.stop_seconds, 2),
            "daemon_exit_to_answering_s": round(self.facts.start_seconds, 2),
            "daemon_restart_total_s": round(self.facts.up_at - self.facts.stop_sent_at, 2),
            "relaunch_after_up_median_s": round(statistics.median(delays), 2) if delays else None,
            "relaunch_after_up_max_s": max(delays) if delays else None,
            "last_start_after_up_s": self.last_start_after_up_s,
            "start_events": self.start_events, "event_stream_reconnects": self.event_reconnects,
            "wall_s": round(self.wall_s, 1),
        }

    def report(self, run_ids: list[str] | dict[str, str]) -> str:
        """The details of these runs (why not resubmitted, state, containers, the agent's lines)."""
        return "\n".join(f"{self.not_resubmitted.get(r, '')}\n{self.details.get(r, '')}".strip()
                         for r in run_ids)

    def problems(self) -> list[str]:
        """Empty when the agent lived, no run failed, a container was running at the restart, every such run
        was resubmitted exactly once, and every run ended with exactly one running container."""
        found = []
        if self.agent_exit is not None:
            found.append(f"the agent exited with {self.agent_exit}:\n{self.agent_tail}")
        if not self.interrupted:
            found.append("no container was running at the restart: the scenario proved nothing")
        for what, runs in (("Failed", self.failed),
                           ("not resubmitted exactly once", list(self.not_resubmitted)),
                           ("without exactly one running container", self.stuck)):
            if runs:
                found.append(f"{len(runs)} runs {what}:\n{self.report(runs[:3])}")
        return found


# ------------------------------------------------------------------------------------------- the scenario


@dataclass(frozen=True)
class Observed:
    """What one scenario saw before judging: the runs, the restart, the end state, the agent."""

    run_ids: list[str]
    launched: int
    interrupted: list[str]
    facts: RestartFacts
    containers: dict[str, list[str]]
    states: dict[str, str]
    wall_s: float
    agent_exit: int | None
    agent_output: str


def restart_in_burst(daemon: ChaosDaemon, server: ServerHandle, image: str, spawn: Spawn, label: str,
                     runs: int = BURST) -> RestartBurstResult:
    """`runs` stand-in runs (sleeping 600 s) due at once; the daemon restarted once half of them have their
    'Submitted' line; then wait until each run has one running container again. `image` must be on the
    daemon, `label` ("key=value") goes on every container. Kills the agent and leaves the daemon running."""
    flow_id = stand_in_flow(server, image, "chaos-burst")
    stubborn = {"STAND_IN_IGNORE_TERM": "1"}
    run_ids = [stand_in_run(server, flow_id, STAND_IN_SLEEP="600",
                            **(stubborn if i % STUBBORN_EVERY == 0 else {})) for i in range(runs)]
    key, _, value = label.partition("=")
    with StartEvents(daemon.host, label, RUN_LABEL) as events:
        started = time.time()
        agent = spawn(base_url=daemon.host, watch_interval=1, container_labels={key: value})
        try:
            launched = wait_until_launched(server, run_ids, runs // 2, LAUNCH_TIMEOUT_S)
            before = container_states(daemon, label, run_ids)
            interrupted = sorted(r for r, s in before.items() if "running" in s)
            print(f"restart with {launched}/{runs} launched, {len(interrupted)} running")
            facts = restart(daemon)
            after, states = wait_until_settled(daemon, label, server, run_ids, SETTLE_TIMEOUT_S)
            seen = Observed(run_ids, launched, interrupted, facts, after, states, time.time() - started,
                            agent.returncode, agent.output())
            return judge(server, events, seen)
        finally:
            agent.kill()
            leave_daemon_running(daemon, label)


def judge(server: ServerHandle, events: StartEvents, seen: Observed) -> RestartBurstResult:
    """The figures read from the server and the event stream once the runs settled."""
    facts, interrupted = seen.facts, seen.interrupted
    logs = {r: run_messages(server, r) for r in seen.run_ids}
    # the old daemon finishes creates and starts already under way on open connections after its SIGTERM
    old = {r: [t for t in events.times(r) if t < facts.down_at] for r in seen.run_ids}
    all_starts = [t for r in seen.run_ids for t in events.times(r)]
    later = [t for t in all_starts if t > facts.down_at]
    started_old = [r for r in seen.run_ids if old[r]]  # each of them was stopped by the restart
    not_resubmitted = {r: problem for r in started_old
                       if (problem := resubmission_problem(r, logs[r], events.times(r))) is not None}
    failed = sorted(r for r, state in seen.states.items() if state == "Failed")
    stuck = sorted(r for r, c in seen.containers.items() if c.count("running") != 1)
    details = {r: run_report(server, r, seen.containers.get(r), seen.agent_output)
               for r in sorted({*failed, *not_resubmitted, *stuck})}
    return RestartBurstResult(
        runs=len(seen.run_ids), launched_at_restart=seen.launched, interrupted=interrupted,
        started_on_old_daemon=started_old,
        started_during_shutdown=[r for r in seen.run_ids if any(t >= facts.stop_sent_at for t in old[r])],
        requeued=[r for r in interrupted if any(REQUEUE_LINE in m for m in logs[r])],
        requeued_any_run=[r for r in seen.run_ids if any(REQUEUE_LINE in m for m in logs[r])],
        relaunch_after_up_s=relaunch_delays(facts, events, interrupted), not_resubmitted=not_resubmitted,
        failed=failed, stuck=stuck, agent_exit=seen.agent_exit, facts=facts,
        last_start_after_up_s=round(max(later) - facts.up_at, 2) if later else None,
        start_events=len(all_starts), event_reconnects=events.reconnects, wall_s=seen.wall_s,
        details=details, agent_tail=seen.agent_output[-6000:],
    )
