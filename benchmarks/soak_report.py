"""The figures, goals, markdown and plot of `python -m benchmarks soak`, from the raw record of `soak.py`.

RSS slope: ordinary least squares of the agent tree's RSS (MiB) against time (hours) over the samples after
the warm-up, with its 95 % confidence interval (Student's t, n - 2 degrees of freedom). Successive samples are
correlated, which makes that interval too narrow: "indistinguishable from zero" is therefore a conservative
verdict (it is harder to reach than with an interval that modelled the correlation).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.stats import number, percentile

if TYPE_CHECKING:
    from benchmarks.soak import Sizes

# Student's t, two-sided 95 %, by degrees of freedom; beyond 30 a Cornish-Fisher expansion of the normal.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
FLAT_ABS_S, FLAT_REL = 0.1, 0.25  # lateness is flat when the late p95 <= early p95 + max(0.1 s, 25 %)



def _n(value: Any, decimals: int = 3) -> str:
    return number(value, decimals)

def t975(df: int) -> float:
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """Slope of y on x with its 95 % interval; None figures below 3 points."""
    n = len(xs)
    if n < 3:
        return {"n": n, "slope": None, "ci95": None}
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return {"n": n, "slope": None, "ci95": None}
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    sse = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    half = t975(n - 2) * math.sqrt(sse / (n - 2) / sxx)
    return {"n": n, "slope": slope, "ci95": [slope - half, slope + half], "intercept": my - slope * mx}


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50_s": None, "p95_s": None, "max_s": None}
    return {"n": len(values), "p50_s": percentile(values, 50), "p95_s": percentile(values, 95),
            "max_s": max(values)}


def _lateness(raw: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """Per run: first container start - scheduled start; overall, after the warm-up, and per bucket."""
    t0, starts = raw["t0"], raw["starts"]
    late = {rid: (due - t0, starts[rid][0] - due) for rid, due in raw["scheduled"].items() if rid in starts}
    buckets = []
    for index in range(math.ceil(sizes.duration_s / sizes.bucket_s)):
        lo, hi = index * sizes.bucket_s, (index + 1) * sizes.bucket_s
        buckets.append({"start_s": lo, **spread([v for at, v in late.values() if lo <= at < hi])})
    steady = [b for b in buckets if b["start_s"] >= sizes.warmup_s and b["n"]]
    width = min(3, len(steady) // 2)
    early: list[float] = []
    last: list[float] = []
    if width:
        first_at, last_at = steady[0]["start_s"], steady[-1]["start_s"] - (width - 1) * sizes.bucket_s
        early = [v for at, v in late.values() if first_at <= at < first_at + width * sizes.bucket_s]
        last = [v for at, v in late.values() if at >= last_at]
    return {"overall": spread([v for _, v in late.values()]),
            "after_warmup": spread([v for at, v in late.values() if at >= sizes.warmup_s]),
            "per_bucket": buckets, "compare_buckets": width, "early": spread(early), "late": spread(last),
            "samples": sorted([round(at, 3), round(v, 4)] for at, v in late.values())}


def _series(samples: list[dict[str, float]], key: str, window: tuple[float, float]) -> dict[str, Any]:
    """Before the load, at the end of the warm-up, at the end of the load, after the drain (the sampler's
    last sample, every container gone), and the largest."""
    values = [s[key] for s in samples]
    steady = [s[key] for s in samples if window[0] <= s["t"] <= window[1]]
    return {"first": values[0] if values else None, "after_warmup": steady[0] if steady else None,
            "end_of_load": steady[-1] if steady else None, "after_drain": values[-1] if values else None,
            "max": max(values) if values else None}


def _resources(raw: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    t0 = raw["t0"]
    begin, end = t0 + sizes.warmup_s, t0 + sizes.duration_s
    samples = raw["samples"]
    steady = [s for s in samples if begin <= s["t"] <= end]
    fit = linear_fit([(s["t"] - t0) / 3600.0 for s in steady], [s["rss_mb"] for s in steady])
    cpu = None
    if len(steady) >= 2 and steady[-1]["t"] > steady[0]["t"]:
        cpu = (steady[-1]["cpu_s"] - steady[0]["cpu_s"]) / (steady[-1]["t"] - steady[0]["t"]) * 60.0
    series = {key: _series(samples, key, (begin, end))
              for key in ("rss_mb", "fds", "threads", "server_rss_mb", "containers_running")}
    return {"rss_slope_mib_per_h": fit, **series,
            "cpu_s_per_min": cpu, "cpu_percent_of_core": None if cpu is None else cpu / 60.0 * 100.0,
            "samples": [{k: round(v - t0 if k == "t" else v, 3) for k, v in s.items()} for s in samples]}


def _runs(raw: dict[str, Any]) -> dict[str, Any]:
    scheduled, starts, destroys = raw["scheduled"], raw["starts"], raw["destroys"]
    return {"created": len(scheduled), "create_errors": len(raw["create_errors"]),
            "started": sum(rid in starts for rid in scheduled),
            "not_started": sum(rid not in starts for rid in scheduled),
            "started_more_than_once": sum(len(times) > 1 for times in starts.values()),
            "foreign_starts": sum(rid not in scheduled for rid in starts),
            "containers_removed_by_agent": sum(rid in destroys for rid in starts),
            "containers_left_by_agent": raw["containers_left_by_agent"],
            "state_refusals": raw["refused"], "final_states": raw["final_states"],
            "created_ahead_s": spread([raw["scheduled"][rid] - at for rid, at in raw["created_at"].items()])}


def _goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    fit = figures["resources"]["rss_slope_mib_per_h"]
    if fit["slope"] is None:
        slope_goal: dict[str, Any] = {"figure": "too few samples after the warm-up", "met": None}
    else:
        lo, hi = fit["ci95"]
        slope_goal = {"figure": f"{fit['slope']:+.2f} MiB/h, 95 % CI [{lo:+.2f}, {hi:+.2f}] "
                                f"({fit['n']} samples; {24 * fit['slope']:+.0f} MiB a day if it went on)",
                      "met": lo <= 0.0 <= hi}
    early, late = figures["lateness"]["early"]["p95_s"], figures["lateness"]["late"]["p95_s"]
    flat: dict[str, Any] = {"figure": "too few buckets after the warm-up", "met": None}
    if early is not None and late is not None:
        bound = early + max(FLAT_ABS_S, FLAT_REL * early)
        flat = {"figure": f"p95 {early:.3f} s (first buckets after warm-up) -> {late:.3f} s (last), "
                          f"bound {bound:.3f} s", "met": late <= bound}
    width = figures["lateness"]["compare_buckets"]
    return [
        {"goal": "agent RSS slope indistinguishable from zero", **slope_goal,
         "why": "met when the 95 % interval of the least-squares slope of RSS over time after the warm-up "
                "contains zero; it ignores the samples' correlation, so the verdict is conservative"},
        {"goal": "lateness flat", **flat,
         "why": f"met when the lateness p95 of the last {width} bucket(s) is at most that of the first "
                f"{width} after the warm-up plus max({FLAT_ABS_S} s, {FLAT_REL:.0%})"},
        {"goal": "every run started exactly once, none failed, every container removed by the agent",
         "figure": _once_figure(figures["runs"]), "met": _once_met(figures["runs"]),
         "why": "the steady path: heartbeats and the server's zombie sweep must not relaunch a run, and the "
                "watcher must remove each container of a Success run as it exits"},
    ]


def _once_figure(runs: dict[str, Any]) -> str:
    return (f"{runs['started']}/{runs['created']} started, {runs['started_more_than_once']} more than once, "
            f"final states {runs['final_states']}, {runs['containers_left_by_agent']} containers left")


def _once_met(runs: dict[str, Any]) -> bool:
    created: int = runs["created"]
    return bool(created > 0 and runs["started"] == created and runs["started_more_than_once"] == 0
                and runs["final_states"] == {"Success": created} and runs["containers_left_by_agent"] == 0)


def analyse(raw: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    minutes = (sizes.duration_s - sizes.warmup_s) / 60.0
    figures: dict[str, Any] = {
        "runs": _runs(raw), "lateness": _lateness(raw, sizes), "resources": _resources(raw, sizes),
        "api_requests_per_min": {op: n / minutes for op, n in raw["requests"].items()} if minutes else {},
        "agent": {"launch_to_first_poll_s": raw["first_poll"] - raw["launched"],
                  "stop_s": raw["agent_stop_s"], "log": raw["agent_log"]},
        "tail_s": raw["tail_s"], "create_errors": raw["create_errors"][:10]}
    figures["goals"] = _goals(figures)
    return figures


def move_goals(path: Path) -> None:
    """The goals at the top level of the JSON, next to meta and figures (where the README reads them)."""
    data = json.loads(path.read_text())
    data["goals"] = data["figures"].pop("goals")
    path.write_text(json.dumps(data, indent=2) + "\n")



def _resource_rows(res: dict[str, Any]) -> list[str]:
    lines = ["| series | before the load | after warm-up | end of the load | after the drain | max |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, title, dec in (("rss_mb", "agent RSS (MiB)", 1), ("fds", "agent open fds", 0),
                            ("threads", "agent threads", 0), ("server_rss_mb", "server RSS (MiB)", 1),
                            ("containers_running", "flow containers running", 0)):
        row = res[key]
        cells = (_n(row[k], dec) for k in ("first", "after_warmup", "end_of_load", "after_drain", "max"))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def _lateness_rows(late: dict[str, Any], bucket_s: float) -> list[str]:
    lines = ["| scheduled at (s from the first due run) | runs | p50 (s) | p95 (s) | max (s) |",
             "|---:|---:|---:|---:|---:|"]
    for row in [*late["per_bucket"], {"start_s": "after warm-up", **late["after_warmup"]},
                {"start_s": "overall", **late["overall"]}]:
        start = row["start_s"]
        at = start if isinstance(start, str) else f"{start:g}-{start + bucket_s:g}"
        lines.append(f"| {at} | {row['n']} | {_n(row['p50_s'])} | {_n(row['p95_s'])} | {_n(row['max_s'])} |")
    return lines


def _goal_lines(goals: list[dict[str, Any]]) -> list[str]:
    verdict = {True: "met", False: "**MISSED**", None: "not measured"}
    return [f"- {g['goal']}: {g['figure']}: {verdict[g['met']]} ({g['why']})." for g in goals]


def _intro(meta: dict[str, Any]) -> list[str]:
    sizes, load = meta["sizes"], " -> ".join(str(x) for x in meta["load_1min"])
    quick = " (quick: a smoke test, numbers mean nothing)" if meta["quick"] else ""
    return [
        f"# {meta['title']}", "",
        f"{meta['started']} UTC on {meta['machine']}, Python {meta['python']}, 1-min load average {load} "
        f"(start -> end){quick}.", "",
        f"One run due every {sizes['interval_s']:g} s for {sizes['duration_s'] / 60:.3g} min, each created "
        f"{sizes['lead_s']:g} s ahead (inside the agent's prefetch), each container living "
        f"{sizes['container_s']:g} s (sleeper stand-in; the benchmark sets the run Running at its start "
        "event and Success 1 s before it exits, as a flow runner would). Our agent at its defaults, one "
        f"server (SQLite). Samples every {sizes['sample_s']:g} s (agent process tree, psutil); warm-up: the "
        f"first {sizes['warmup_s']:.0f} s, left out of the fit and the lateness comparison.", ""]


def _run_rows(figures: dict[str, Any]) -> list[str]:
    agent = figures["agent"]
    return ["| figure | value |", "|---|---:|",
            *(f"| {k} | {v} |" for k, v in figures["runs"].items() if k != "created_ahead_s"),
            f"| agent: launch -> first poll (s) | {_n(agent['launch_to_first_poll_s'])} |",
            f"| agent: SIGINT -> exit at the end (s) | {_n(agent['stop_s'], 2)} |",
            f"| agent log: warnings / errors | {agent['log']['warnings']} / {agent['log']['errors']} |"]


def _resource_summary(figures: dict[str, Any]) -> str:
    res, fit = figures["resources"], figures["resources"]["rss_slope_mib_per_h"]
    rate = ", ".join(f"{op} {n:.1f}" for op, n in figures["api_requests_per_min"].items()) or "–"
    slope = "–"
    if fit["slope"] is not None:
        slope = f"{fit['slope']:+.2f} MiB/h [{fit['ci95'][0]:+.2f}, {fit['ci95'][1]:+.2f}]"
    return (f"RSS slope after the warm-up (least squares, 95 % CI): **{slope}**; agent CPU "
            f"{_n(res['cpu_s_per_min'], 2)} s/min ({_n(res['cpu_percent_of_core'], 1)} % of one core); "
            f"API requests per minute after the warm-up: {rate}.")


def markdown(meta: dict[str, Any], figures: dict[str, Any]) -> str:
    log = figures["agent"]["log"]["first"]
    lines = [
        *_intro(meta), "## Goals", "", *_goal_lines(figures.get("goals", [])), "",
        "## Runs", "", *_run_rows(figures), "",
        "## Resources", "", _resource_summary(figures), "", *_resource_rows(figures["resources"]), "",
        "## Lateness (container start - scheduled start)", "",
        *_lateness_rows(figures["lateness"], meta["sizes"]["bucket_s"]), "",
        *(["First warnings/errors of the agent's log:", "", "```", *log, "```", ""] if log else []),
        f"![soak]({meta['plot']})", "",
        f"Command: `python -m benchmarks soak{' --quick' if meta['quick'] else ''}`.", ""]
    return "\n".join(lines)


def plot(figures: dict[str, Any], sizes: Sizes, path: Path) -> None:
    """RSS (with the fit), fds and threads, containers running over time; lateness per bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = figures["resources"]["samples"]
    minutes = [s["t"] / 60.0 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    rss, counts, running, late = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    rss.plot(minutes, [s["rss_mb"] for s in samples], ".-", label="agent RSS")
    fit = figures["resources"]["rss_slope_mib_per_h"]
    if fit["slope"] is not None:
        xs = [sizes.warmup_s / 60.0, sizes.duration_s / 60.0]
        rss.plot(xs, [fit["intercept"] + fit["slope"] * x / 60.0 for x in xs], "--",
                 label=f"fit {fit['slope']:+.2f} MiB/h")
    rss.set_ylabel("MiB")
    counts.plot(minutes, [s["fds"] for s in samples], ".-", label="open fds")
    counts.plot(minutes, [s["threads"] for s in samples], ".-", label="threads")
    running.plot(minutes, [s["containers_running"] for s in samples], ".-", color="C2",
                 label="flow containers running")
    buckets = [b for b in figures["lateness"]["per_bucket"] if b["n"]]
    centres = [(b["start_s"] + sizes.bucket_s / 2) / 60.0 for b in buckets]
    for key, style in (("p50_s", "o-"), ("p95_s", "s-"), ("max_s", "^:")):
        late.plot(centres, [b[key] for b in buckets], style, label=f"lateness {key.removesuffix('_s')}")
    late.set_ylabel("s")
    late.set_xlim(rss.get_xlim())
    for ax in (rss, counts, running, late):
        ax.axvspan(0, sizes.warmup_s / 60.0, color="grey", alpha=0.15)
        ax.set_xlabel("minutes since the first due run (grey: warm-up)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Soak: our agent under one run per second")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
