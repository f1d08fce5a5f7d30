"""The JSON, markdown and plot of `python -m benchmarks cost`: the agent's cost per level of watched
containers, the ramps between levels, the goals, and the checks that no run was launched twice."""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.stats import number as _n
from benchmarks.stats import times as _x

RSS_GOAL_MB = 10.0
GOAL_LEVEL = 500




def goals(figures: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """The issue's goal (RSS growth to 500 watched containers) and the run's own soundness checks."""
    levels, checks = figures["levels"], figures["checks"]
    first, last = levels[0], levels[-1]
    growth = last["rss_mb"] - first["rss_mb"]
    judged = last["running"] >= GOAL_LEVEL and not quick  # reached, not only planned
    rss = {"goal": f"RSS grows <= {RSS_GOAL_MB:g} MiB from 0 to {GOAL_LEVEL} watched containers",
           "figure": f"{growth:+.1f} MiB ({first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MiB at "
                     f"{last['level']} containers)",
           "met": growth <= RSS_GOAL_MB if judged else None,
           "why": "median RSS of the agent's process tree over each level's window" if judged else
                  f"the most containers running in a window was {last['running']}, not {GOAL_LEVEL}"}
    once = checks["started_more_than_once"] == 0 and checks["claimed_more_than_once"] == 0 and \
        checks["never_started"] == 0 and checks["rescheduled_by_zombie_sweep"] == 0
    launched = {"goal": "every watched run claimed and started exactly once, none rescheduled",
                "figure": f"{checks['started_once']}/{checks['runs']} started once, "
                          f"{checks['started_more_than_once']} more than once, "
                          f"{checks['never_started']} never; "
                          f"{checks['claimed_more_than_once']} claimed twice; "
                          f"{checks['rescheduled_by_zombie_sweep']} rescheduled by the zombie sweep",
                "met": once,
                "why": "start events counted per run id on the daemon's stream, Submitted states counted "
                       "per run in the server's state history"}
    clean = {"goal": "every flow container removed at the end",
             "figure": f"{checks['containers_left']} left", "met": checks["containers_left"] == 0,
             "why": "listed by the benchmark flow's label after removal"}
    return [rss, launched, clean]


def _level_rows(levels: list[dict[str, Any]]) -> list[str]:
    lines = ["| watched containers | running | RSS MiB (median) | RSS max | CPU s/min | % of one core "
             "| API requests/min "
             "| open fds | threads | server CPU s/min | dockerd CPU s/min | load (1 min) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in levels:
        r = row["ratios"]
        lines.append(
            f"| {row['level']} | {row['running']} | {_n(row['rss_mb'], 1)} ({row['rss_growth_mb']:+.1f}) "
            f"| {_n(row['rss_max_mb'], 1)} | {_n(row['cpu_s_per_min'], 3)}{_x(r['cpu_s_per_min'])} "
            f"| {_n(row['cpu_percent'], 2)} | {_n(row['requests_per_min'], 1)}{_x(r['requests_per_min'])} "
            f"| {_n(row['fds'], 0)} (max {row['fds_max']}) "
            f"| {_n(row['threads'], 0)} (max {row['threads_max']}) "
            f"| {_n(row['server_cpu_s_per_min'], 3)} | {_n(row['dockerd_cpu_s_per_min'], 3)} "
            f"| {_n(row['load_1min'], 1)} |")
    return lines


def _operation_rows(levels: list[dict[str, Any]]) -> list[str]:
    ops = sorted({op for row in levels for op in row["requests_per_min_by_operation"]})
    lines = ["| operation | " + " | ".join(f"{row['level']} watched" for row in levels) + " |",
             "|---|" + "---:|" * len(levels)]
    for op in ops:
        cells = [_n(row["requests_per_min_by_operation"].get(op, 0.0), 1) for row in levels]
        lines.append(f"| `{op}` | " + " | ".join(cells) + " |")
    return lines


def _ramp_rows(ramps: list[dict[str, Any]]) -> list[str]:
    lines = ["| ramp | started | launch s | agent CPU s | CPU ms per run | net of watching, ms per run "
             "| API requests | requests per run |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for ramp in ramps:
        lines.append(
            f"| {ramp['from']} -> {ramp['to']} | {ramp['started']}/{ramp['runs']} "
            f"| {_n(ramp['launch_s'], 1)} | {_n(ramp['cpu_s'], 2)} | {_n(ramp['cpu_ms_per_run'], 1)} "
            f"| {_n(ramp['cpu_ms_per_run_net'], 1)} "
            f"| {ramp['requests']} | {_n(ramp['requests'] / max(ramp['started'], 1), 2)} |")
    return lines


def _check_lines(checks: dict[str, Any]) -> list[str]:
    runner = checks["flow_runner"]
    lines = [
        f"- Runs: {checks['runs']}; server states before the benchmark finished them: {checks['states']}.",
        f"- Claims (Submitted states per run): {checks['claimed_once']} once, "
        f"{checks['claimed_more_than_once']} more than once, {checks['never_claimed']} never.",
        f"- Container starts per run (daemon events): {checks['started_once']} once, "
        f"{checks['started_more_than_once']} more than once, {checks['never_started']} never.",
        f"- Zombie sweep: {checks['rescheduled_by_zombie_sweep']} runs rescheduled, "
        f"{checks['lazarus_log_lines']} lazarus log lines.",
        f"- Stand-in flow runner: {runner['runs_set_running']} runs set Running ({runner['running_refused']} "
        f"refused), {runner['heartbeats_sent']} heartbeats every {runner['interval_s']:g} s per run "
        f"({runner['heartbeat_errors']} failed).",
        f"- Agent stop (SIGINT -> exit) with every container watched: {_n(checks['agent_stop_s'])} s; "
        f"{checks['containers_removed']} containers removed in {_n(checks['remove_s'], 1)} s, "
        f"{checks['containers_left']} left.",
        f"- Agent log: {checks['agent_log_warnings']} WARNING/ERROR lines."]
    lines += [f"  - `{line[:200]}`" for line in checks["agent_log_first_warnings"]]
    return lines


def _goal_lines(goal_list: list[dict[str, Any]]) -> list[str]:
    mark = {True: "met", False: "**MISSED**", None: "not judged"}
    return [f"- {g['goal']}: {g['figure']} — {mark[g['met']]} ({g['why']})." for g in goal_list]


HOW = (
    "How: one server (SQLite, auth off), our agent alone (default settings, unlimited concurrent runs) "
    "behind a counting proxy. For each level, runs due now are created with the agent's label and the "
    "agent starts their stand-in containers (busybox, `/bin/prefect` sleeps `BENCH_SLEEP_S`); the ramp is"
    " timed from the first creation to the last container start (daemon events) plus the trailing writes,"
    " its CPU is the agent's (user + system, process tree); *net of watching* subtracts the previous "
    "level's CPU rate over the ramp. After the settle period, the window: RSS, fds and threads sampled "
    "every {sample_s:g} s (median, max), CPU seconds over the window, requests per minute at the proxy. "
    "Server and dockerd CPU are context (the server also answers the stand-in's heartbeats; dockerd also "
    "serves other clients on a shared machine). The benchmark plays the flow runner's part (Running at "
    "start, a heartbeat per run every {heartbeat_s:g} s, straight at the server) so the zombie sweep (600"
    " s) keeps off them.")


def markdown(meta: dict[str, Any], figures: dict[str, Any], goal_list: list[dict[str, Any]]) -> str:
    load = " -> ".join(str(x) for x in meta["load_1min"])
    sizes = meta["sizes"]
    lines = [
        "# Agent cost vs watched flow containers", "",
        f"{meta['date']} on {meta['machine']}, Python {meta['python']}, 1-min load average {load} "
        f"(start -> end), {meta['wall_s']:.0f} s wall"
        + (" (quick: sizes for a smoke test, numbers mean nothing)" if meta["quick"] else "") + ".", "",
        f"Command: `{meta['command']}`. Levels {', '.join(str(x) for x in sizes['levels'])}; settle "
        f"{sizes['settle_s']:g} s, window {sizes['window_s']:g} s per level. (xN) = N times level "
        f"{figures['levels'][0]['level']}'s figure in this run; RSS (+N) = MiB more than level "
        f"{figures['levels'][0]['level']}.", "",
        "## Goals", "", *_goal_lines(goal_list), "",
        "## Cost per level", "", *_level_rows(figures["levels"]), "",
        "API requests per minute by operation:", "", *_operation_rows(figures["levels"]), "",
        "## Ramps (launching the next level's containers)", "", *_ramp_rows(figures["ramps"]), "",
        "## Checks", "", *_check_lines(figures["checks"]), "",
        HOW.format(**sizes), "", f"![cost]({meta['plot']})", ""]
    return "\n".join(lines)


def plot(figures: dict[str, Any], path: Path) -> None:
    """RSS, CPU s/min, requests/min, fds and threads against watched containers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = figures["levels"]
    x = [row["level"] for row in levels]
    fig, (rss, cpu, req, fds) = plt.subplots(1, 4, figsize=(18, 4.4))
    rss.plot(x, [row["rss_mb"] for row in levels], "o-", label="median")
    rss.plot(x, [row["rss_max_mb"] for row in levels], "v--", label="max")
    rss.set_title("agent RSS (MiB)")
    cpu.plot(x, [row["cpu_s_per_min"] for row in levels], "o-", color="C0", label="agent (left axis)")
    context = cpu.twinx()  # the server and dockerd cost more than the agent: their own scale
    for key, label, style, color in (("server_cpu_s_per_min", "server", "s--", "C1"),
                                     ("dockerd_cpu_s_per_min", "dockerd", "^:", "C2")):
        if all(row[key] is not None for row in levels):
            context.plot(x, [row[key] for row in levels], style, color=color, label=f"{label} (right axis)")
    context.legend(fontsize=8, loc="upper right")
    cpu.set_ylim(bottom=0)
    context.set_ylim(bottom=0)
    cpu.set_title("CPU seconds per minute")
    req.plot(x, [row["requests_per_min"] for row in levels], "o-", label="all")
    ops = sorted({op for row in levels for op in row["requests_per_min_by_operation"]})
    for op in ops:
        req.plot(x, [row["requests_per_min_by_operation"].get(op, 0.0) for row in levels], ".--", label=op)
    req.set_title("agent API requests per minute")
    fds.plot(x, [row["fds"] for row in levels], "o-", label="open fds")
    fds.plot(x, [row["threads"] for row in levels], "s--", label="threads")
    fds.set_title("agent open fds and threads")
    for ax in (rss, cpu, req, fds):
        ax.set_xlabel("flow containers running and watched")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_cost(figures: dict[str, Any], out_dir: Path, *, quick: bool, began: datetime, load_before: float,
               command: str, sizes: dict[str, Any], work_dir: Path) -> dict[str, Path]:
    """`cost-<date>.json`, `.md` and `.png` (`cost-quick.*` for a quick run)."""
    stem = "cost-quick" if quick else f"cost-{began.strftime('%Y-%m-%d')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    meta = {"benchmark": "cost", "quick": quick, "date": began.strftime("%Y-%m-%d %H:%M UTC"),
            "started": began.isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} cores, {platform.platform()}", "python": platform.python_version(),
            "command": command, "wall_s": time.time() - began.timestamp(), "sizes": sizes,
            "load_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)], "work_dir": str(work_dir),
            "plot": paths["png"].name}
    goal_list = goals(figures, quick)
    plot(figures, paths["png"])
    document = {"meta": meta, "figures": figures, "goals": goal_list}
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    paths["md"].write_text(markdown(meta, figures, goal_list))
    return paths
