"""results.json, results.md (a table of every figure and the ratios, then the targets), lateness.png and
burst.png (the repeated bursts)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.burst_report import burst_chart, burst_section
from benchmarks.config import PREFECT_BASELINE, TARGETS
from benchmarks.stats import fixed, ratio

# (key, label, unit, decimals); a key with no value for any system shows "n/a".
ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("burst.runs_per_s", "burst: throughput (median)", "runs/s", 2),
    ("burst.ceiling_runs_per_s", "burst: Docker ceiling just before (median)", "runs/s", 2),
    ("burst.ratio_to_ceiling", "burst: share of the ceiling (median of the repeats)", "", 3),
    ("burst.ratio_min", "burst: share of the ceiling, lowest repeat", "", 3),
    ("burst.ratio_max", "burst: share of the ceiling, highest repeat", "", 3),
    ("burst.repeats", "burst: repeats, each after its own ceiling", "", 0),
    ("burst.duration_s", "burst: first poll -> last container start", "s", 2),
    ("burst.requests_per_run", "burst: API requests per launched run", "", 2),
    ("burst.cpu_ms_per_run", "burst: agent CPU per launched run", "ms", 1),
    ("burst.cpu_s", "burst: agent CPU, first poll -> end of burst", "s", 2),
    ("burst.cpu_percent", "burst: agent CPU during the burst", "% of a core", 1),
    ("burst.cpu_share_percent", "burst: agent's share of the machine's busy CPU", "%", 1),
    ("scheduled.p50_s", "scheduled lateness p50", "s", 3),
    ("scheduled.p95_s", "scheduled lateness p95", "s", 3),
    ("scheduled.max_s", "scheduled lateness max", "s", 3),
    ("immediate.p50_s", "immediate lateness p50", "s", 3),
    ("immediate.p95_s", "immediate lateness p95", "s", 3),
    ("immediate.max_s", "immediate lateness max", "s", 3),
    ("idle.rss_mb", "idle: RSS", "MiB", 1),
    ("idle.cpu_s", "idle: CPU seconds in the window", "s", 2),
    ("idle.cpu_percent", "idle: CPU", "% of a core", 2),
    ("idle.requests_per_min", "idle: API requests per minute", "/min", 1),
    ("startup.first_poll_s", "start-up: launch -> first poll (median)", "s", 3),
    ("shutdown.stop_s", "stop: SIGINT -> process exit, idle (median)", "s", 2),
    ("image.size_mb", "agent image size", "MB", 1),
)
COUNTS = frozenset({"burst.repeats"})  # rows whose ours / Prefect ratio means nothing
SERVER_ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("queue.median_ms", "server: get_runs_in_queue median", "ms", 2),
    ("queue.p95_ms", "server: get_runs_in_queue p95", "ms", 2),
)



def evaluate_targets(figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each issue target against our figure (or the server's), bounded by Prefect's figure where relative."""
    ours, prefect, server = figures.get("ours", {}), figures.get("prefect", {}), figures.get("server", {})
    results = []
    for target in TARGETS:
        value = server.get(target.key) if target.key.startswith("queue.") else ours.get(target.key)
        peer = prefect.get(target.key)
        met = target.met(value, peer)
        results.append({
            "key": target.key, "description": target.description, "value": value,
            "bound": target.bound(peer), "op": target.op, "met": met,
            "verdict": "met" if met else ("MISSED" if met is False else "not measured"),
        })
    return results


def _figure_rows(figures: dict[str, dict[str, Any]]) -> list[str]:
    ours, prefect = figures.get("ours", {}), figures.get("prefect", {})
    lines = [
        "| figure | unit | ours | Prefect 1.4.1 | ours / ceiling | ours / Prefect | Prefect (issue baseline) "
        "|",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, label, unit, decimals in ROWS:
        mine, peer = ours.get(key), prefect.get(key)
        to_ceiling = ours.get("burst.ratio_to_ceiling") if key == "burst.runs_per_s" else None
        to_prefect = None if key in COUNTS else ratio(mine, peer)
        cells = [label, unit, fixed(mine, decimals), fixed(peer, decimals), fixed(to_ceiling, 3),
                 fixed(to_prefect, 2), fixed(PREFECT_BASELINE.get(key), decimals)]
        lines.append("| " + " | ".join(cells) + " |")
    server = figures.get("server", {})
    for key, label, unit, decimals in SERVER_ROWS:
        lines.append(f"| {label} | {unit} | {fixed(server.get(key), decimals)} | | | | |")
    return lines


def _target_rows(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | ours | bound | verdict |", "|---|---:|---:|---|"]
    for t in targets:
        verdict = {"met": "met", "MISSED": "**MISSED**"}.get(t["verdict"], t["verdict"])
        bound = f"{t['op']} {fixed(t['bound'], 3)}"
        lines.append(f"| {t['description']} | {fixed(t['value'], 3)} | {bound} | {verdict} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    cfg = meta["config"]
    lines = [
        f"# Benchmark results — {meta['date']}{' (smoke)' if meta.get('smoke') else ''}",
        "",
        f"Machine: {meta['machine']}. Docker {meta.get('docker_version', '?')}. "
        f"Total wall time {meta.get('wall_s', 0):.0f} s. Command: `{meta['command']}`.",
        "",
        *_figure_rows(results["figures"]),
        "",
        f"Ceiling bursts (docker-py, no agent, same image/daemon): {_ceilings(results['figures'])}.",
        f"Runs per scenario: burst {cfg['burst_runs']} (ours x {cfg.get('burst_repeats', 1)}, Prefect x "
        f"{cfg.get('prefect_burst_repeats', 1)}), scheduled {cfg['scheduled_runs']}, "
        f"immediate {cfg['immediate_runs']}; idle window {cfg['idle_s']:.0f} s; "
        f"queue DB {cfg['queue_runs']:,} runs.",
        "",
        *burst_section(results["figures"]),
        "## Targets",
        "",
        *_target_rows(results["targets"]),
    ]
    missed = [t["description"] for t in results["targets"] if t["verdict"] == "MISSED"]
    lines += ["", f"Targets missed: {'; '.join(missed)}." if missed else "No measured target was missed."]
    if results.get("errors"):
        lines += ["", "## Not measured / errors", ""]
        lines += [f"- `{where}`: {msg.splitlines()[0][:300]}" for where, msg in results["errors"].items()]
    return "\n".join(lines) + "\n"


def _ceilings(figures: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, fig in figures.get("ceiling", {}).items():
        rate = fixed(fig.get("runs_per_s"), 2)
        each = ", ".join(fixed(r, 2) for r in fig.get("runs_per_s_each", []))
        remove = " (auto-remove)" if fig.get("auto_remove") else ""
        parts.append(f"{name}: median {rate} runs/s ({each}) at concurrency {fig.get('concurrency')}{remove}")
    return "; ".join(parts) or "n/a"


def lateness_chart(samples: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Empirical CDFs of scheduled and immediate lateness, one line per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, scenario in zip(axes, ("scheduled", "immediate"), strict=True):
        for system, style in (("ours", "-"), ("prefect", "--")):
            values = sorted(samples.get(system, {}).get(scenario, []))
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, ys, style, where="post", label=f"{system} (n={len(values)})")
        ax.set_title(f"{scenario} lateness (container start - scheduled start)")
        ax.set_xlabel("seconds")
        ax.set_ylabel("fraction of runs")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
SUMMARY_KEYS = (
    "burst.ratio_to_ceiling", "burst.requests_per_run", "burst.cpu_ms_per_run", "scheduled.p95_s",
    "immediate.p95_s",
    "idle.rss_mb", "idle.requests_per_min", "startup.first_poll_s",
)


def summary_markdown(results: dict[str, Any], link: str) -> str:
    """The README's short version: headline figures of ours vs Prefect, and the verdicts."""
    meta, figures = results["meta"], results["figures"]
    labels = {key: (label, unit, decimals) for key, label, unit, decimals in ROWS}
    lines = [f"Last full run: {meta['date']} on {meta['machine']}, Docker {meta.get('docker_version', '?')} "
             f"([full table]({link})).", "", "| figure | ours | Prefect 1.4.1 |", "|---|---:|---:|"]
    for key in SUMMARY_KEYS:
        label, unit, decimals = labels[key]
        ours, peer = figures.get("ours", {}).get(key), figures.get("prefect", {}).get(key)
        name = f"{label} ({unit})" if unit else label
        lines.append(f"| {name} | {fixed(ours, decimals)} | {fixed(peer, decimals)} |")
    median = figures.get("server", {}).get("queue.median_ms")
    runs = meta["config"]["queue_runs"]
    lines += ["", f"Server queue latency at {runs:,} runs stored: median {fixed(median, 2)} ms."]
    missed = [t["description"] for t in results["targets"] if t["verdict"] == "MISSED"]
    lines.append(f"Targets missed: {'; '.join(missed)}." if missed else "Every measured target was met.")
    return "\n".join(lines)


def update_readme(results: dict[str, Any], readme: Path, link: str) -> bool:
    """Replace the text between the README's results markers; False when the markers are missing."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{summary_markdown(results, link)}\n{README_END}{tail}")
    return True


def write_results(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md", "png": out_dir / "lateness.png",
             "burst_png": out_dir / "burst.png"}
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    paths["md"].write_text(markdown(results))
    lateness_chart(results.get("samples", {}), paths["png"])
    burst_chart(results.get("figures", {}), paths["burst_png"])
    return paths


def write_benchmark(name: str, *, quick: bool, began: datetime, load_before: float, figures: dict[str, Any],
                    render: Callable[[dict[str, Any], dict[str, Any]], str], out_dir: Path,
                    **extra: Any) -> dict[str, Path]:
    """`<name>-<date>.json` and `.md` (`<name>-quick.*` for a quick run): the figures with the machine, the
    load before and after, and `extra` facts of the run as `meta`; the markdown is `render(meta, figures)`."""
    meta = {"benchmark": name, "quick": quick, "started": began.isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} cores, {platform.platform()}", "python": platform.python_version(),
            "load_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)], **extra}
    stem = f"{name}-quick" if quick else f"{name}-{began.strftime('%Y-%m-%d')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "figures": figures}, indent=2) + "\n")
    paths["md"].write_text(render(meta, figures))
    return paths
