"""`python -m benchmarks recovery`: the chaos scenarios once each, outside pytest, with their figures.

One SIGKILL-and-restart burst and one burst with 5 % of starts (and 2 % of creates) failing, each against
a fresh server, three agents through a `FaultProxy` and the stand-in image; then one agent whose private
dockerd is restarted in the middle of a burst (root only, as in the tests). The scenario code is the tests'
own (`tests/support/chaos_scenarios.py`, `tests/support/daemon_restart_scenario.py`); this module only runs
it and writes `benchmarks/results/recovery-<date>.json` and `.md`. Nothing here is a pass/fail: the figures
are measured.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from benchmarks.config import RESULTS_DIR
from tests.support.agent_fixtures import AGENT_LABEL, AgentProcess, agent_env
from tests.support.chaos import CHAOS_LABEL
from tests.support.chaos_scenarios import ChaosEnv, agent_settings, fault_burst, kill_restart, new_tag
from tests.support.daemon_restart_scenario import open_private_daemon, restart_in_burst
from tests.support.docker_fixtures import LOCAL_BUSYBOX, remove_containers
from tests.support.dockerd import DockerdError
from tests.support.fault_proxy import FaultProxy
from tests.support.private_dockerd import copy_images, stop_private_daemon
from tests.support.runtime_fixtures import build_stand_in
from tests.support.server_fixtures import start_server

FIGURES = ("runs", "starts", "runs_started_more_than_once", "runs_never_started", "failed", "unfinished",
           "without_submitted_line", "requeues_transient", "requeues_orphan", "agent_retries",
           "in_flight_at_kill", "orphans",
           "restart_to_last_orphan_requeued_s", "restart_to_last_orphan_started_s", "restart_to_last_start_s",
           "last_start_s", "wall_s")
RESTART_FIGURES = ("runs", "launched_at_restart", "interrupted", "started_on_old_daemon",
                   "started_during_daemon_shutdown",
                   "requeued_with_line", "requeued_with_line_any_run", "relaunched", "not_resubmitted_once",
                   "failed", "without_one_running_container", "agent_exit_code",
                   "daemon_sigterm_to_exit_s", "daemon_exit_to_answering_s", "daemon_restart_total_s",
                   "relaunch_after_up_median_s", "relaunch_after_up_max_s", "last_start_after_up_s",
                   "start_events", "event_stream_reconnects", "wall_s")


@contextmanager
def chaos_env(workdir: Path, image: str, client: docker.DockerClient) -> Iterator[ChaosEnv]:
    """A fresh server, a fault proxy and agent processes of the tests' settings; everything removed after."""
    tag = new_tag()
    server = start_server(workdir / tag)
    proxy = FaultProxy(seed=20261205)
    proxy.start()
    agents: list[AgentProcess] = []
    home = workdir / "prefect-home"
    home.mkdir(exist_ok=True)

    def spawn(name: str | None) -> AgentProcess:
        name = name or f"recovery-{tag}-{len(agents) + 1}"
        settings = {"level": "INFO", **agent_settings(proxy, tag), "name": name}
        env = agent_env(server, None, home, settings)
        log = workdir / f"{name}-{len(agents)}.log"
        agent = AgentProcess([sys.executable, "-m", "agent", "start"], env, log, name)
        agents.append(agent)
        return agent

    try:
        yield ChaosEnv(server=server, proxy=proxy, image=image, spawn=spawn, tag=tag)
    finally:
        for agent in agents:
            agent.kill()
        remove_containers(client, f"{CHAOS_LABEL}={tag}")
        for name in {a.name for a in agents}:
            remove_containers(client, f"{AGENT_LABEL}={name}")
        server.stop()
        proxy.close()


def daemon_restart(workdir: Path, client: docker.DockerClient, image: str) -> dict[str, Any]:
    """The daemon-restart scenario on the tests' private dockerd (started here, stopped after), a fresh
    server and one agent; a line on stderr and a `skipped` entry where that daemon cannot run."""
    if os.geteuid() != 0:
        return _skipped("needs root: it starts a private dockerd (own bridge and socket) and restarts it")
    try:
        daemon = open_private_daemon()
    except (DockerdError, OSError) as exc:
        return _skipped(f"cannot start the private dockerd: {exc}")
    server = None
    try:
        copy_images(client, daemon, [image])
        server = start_server(workdir / "daemon-restart")
        home = workdir / "prefect-home"
        home.mkdir(exist_ok=True)
        tag = new_tag()

        def spawn(**settings: Any) -> AgentProcess:
            name = f"recovery-{tag}"
            env = agent_env(server, None, home, {"level": "INFO", **settings, "name": name})
            return AgentProcess([sys.executable, "-m", "agent", "start"], env, workdir / f"{name}.log", name)

        result = restart_in_burst(daemon, server, image, spawn, f"{CHAOS_LABEL}={tag}")
        return {**result.figures(), "problems": result.problems()}
    except DockerdError as exc:  # the restart itself failed: the other scenarios' figures still count
        print(f"daemon_restart: not measured ({exc})", file=sys.stderr)
        return {"error": str(exc), "problems": []}
    finally:
        if server is not None:
            server.stop()
        stop_private_daemon()


def _skipped(reason: str) -> dict[str, Any]:
    print(f"daemon_restart: skipped ({reason})", file=sys.stderr)
    return {"skipped": reason, "problems": []}


def run_recovery(out_dir: Path) -> dict[str, Any]:
    """The three scenarios, one after the other; returns what was written."""
    client = docker.from_env(timeout=120)
    workdir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    try:
        image = build_stand_in(client, LOCAL_BUSYBOX)
        scenarios: list[tuple[str, Callable[[ChaosEnv], Any]]] = [
            ("kill_restart", lambda env: kill_restart(env, runs=120, agents=3, delay_s=0.4)),
            ("fault_burst", lambda env: fault_burst(env, runs=300, agents=3, fail_start=0.05,
                                                    fail_create=0.02, mode="mixed")),
        ]
        results: dict[str, Any] = {}
        for name, scenario in scenarios:
            with chaos_env(workdir, image, client) as env:
                verdict = scenario(env)
                results[name] = {**verdict.summary(), "problems": verdict.problems()}
        results["daemon_restart"] = daemon_restart(workdir, client, image)
    finally:
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return write(results, out_dir)


def write(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    now = datetime.now(UTC)
    document = {"measured_at": now.isoformat(timespec="seconds"), "machine": platform.platform(),
                "scenarios": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"recovery-{now.strftime('%Y-%m-%d')}"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(document))
    return {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), **document}


def markdown(document: dict[str, Any]) -> str:
    """One table for the agent bursts (kill_restart, fault_burst), one for the daemon restart, then the
    problems each scenario reported."""
    scenarios: dict[str, dict[str, Any]] = document["scenarios"]
    bursts = [n for n in scenarios if "faults" in scenarios[n]]
    lines = [f"# Recovery figures ({document['measured_at']}, {document['machine']})", ""]
    if bursts:
        lines += _table(FIGURES, {n: scenarios[n] for n in bursts})
        lines.append("| faults injected | " + " | ".join(
            _cell(scenarios[n]["faults"].get("faults")) for n in bursts) + " |")
    restart = scenarios.get("daemon_restart")
    if restart is not None:
        lines += ["", "## Daemon restart", ""]
        if "skipped" in restart or "error" in restart:
            why = f"skipped: {restart['skipped']}" if "skipped" in restart else f"failed: {restart['error']}"
            lines.append(f"Not measured ({why}).")
        else:
            lines += _table(RESTART_FIGURES, {"daemon_restart": restart})
    for name, figures in scenarios.items():
        for problem in figures["problems"]:
            lines.append(f"\n**{name}:** {problem[:600]}")
    return "\n".join(lines) + "\n"


def _table(figures: tuple[str, ...], scenarios: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| figure | " + " | ".join(scenarios) + " |", "|---|" + "---:|" * len(scenarios)]
    for figure in figures:
        lines.append(f"| {figure} | " + " | ".join(_cell(s.get(figure)) for s in scenarios.values()) + " |")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "0"
    return str(value)


def main() -> int:
    written = run_recovery(RESULTS_DIR)
    print(Path(written["md"]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
