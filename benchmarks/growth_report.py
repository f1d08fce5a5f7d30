"""The markdown and the plot of `python -m benchmarks growth`: figures per size with ratios to the smallest,
then the retention pass's effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.stats import number as _n
from benchmarks.stats import times as _x

MB = 1_000_000
TITLES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}




def _size_rows(sizes: list[dict[str, Any]]) -> list[str]:
    lines = ["| runs stored | log lines | queue median ms | queue p95 ms | set_state median ms "
             "| set_state p95 ms | write_run_logs lines/s | DB MB | MB per 10,000 runs | seed runs s "
             "| seed logs s | load (1 min) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in sizes:
        r = row["ratios"]
        lines.append(
            f"| {_n(row['runs'])} | {_n(row['log_lines'])} "
            f"| {_n(row['queue']['median_ms'])}{_x(r['queue.median_ms'])} "
            f"| {_n(row['queue']['p95_ms'])}{_x(r['queue.p95_ms'])} "
            f"| {_n(row['set_state']['median_ms'])}{_x(r['set_state.median_ms'])} "
            f"| {_n(row['set_state']['p95_ms'])}{_x(r['set_state.p95_ms'])} "
            f"| {_n(row['write_logs']['lines_per_s'], 0)}{_x(r['write_logs.lines_per_s'])} "
            f"| {_n(row['db_bytes'] / MB, 1)}{_x(r['db_bytes'])} | {_n(row['bytes_per_10k_runs'] / MB, 1)} "
            f"| {_n(row['seed_runs_s'], 1)} | {_n(row['seed_logs_s'], 1)} | {_n(row['load_1min'], 1)} |")
    return lines


def _after_pass(size: dict[str, Any]) -> str:
    if size["after_pass_free_bytes"] is not None:
        return f"free pages inside: {_n(size['after_pass_free_bytes'] / MB, 1)} MB, reused by later inserts"
    return f"{_n(size['after_pass_dead_rows'])} dead rows, reused after autovacuum"


def _retention_rows(ret: dict[str, Any]) -> list[str]:
    size = ret["size"]
    lines = [
        f"Retention pass (`server.retention.sweep`, {ret['retention_days']:g} days, "
        f"{ret['batch_runs']} runs per transaction, in its own process next to the server): "
        f"{_n(ret['deleted_runs'])} of the {_n(ret['aged_runs'])} aged runs deleted in {_n(ret['pass_s'])} s "
        f"= **{_n(ret['runs_deleted_per_s'], 0)} runs/s** (with their task runs and log lines).", "",
        "| database file | MB |", "|---|---:|",
        f"| before the pass | {_n(size['before_bytes'] / MB, 1)} |",
        f"| after the pass, no vacuum ({_after_pass(size)}) | {_n(size['after_pass_bytes'] / MB, 1)} |",
        f"| after `{size['vacuum']}` ({_n(size['vacuum_s'], 1)} s, server stopped) "
        f"| {_n(size['after_vacuum_bytes'] / MB, 1)} |",
        "", "| call | before: median / p95 ms | during the pass: median / p95 / max ms (samples) "
        "| after: median / p95 ms |", "|---|---:|---:|---:|"]
    for key, label in (("queue", "get_runs_in_queue"), ("set_state", "set_flow_run_states")):
        b, d, a = (ret[key][when] for when in ("before", "during", "after"))
        lines.append(f"| {label} | {_n(b['median_ms'])} / {_n(b['p95_ms'])} | {_n(d['median_ms'])} / "
                     f"{_n(d['p95_ms'])} / {_n(d['max_ms'])} ({d['samples']}) | {_n(a['median_ms'])} / "
                     f"{_n(a['p95_ms'])} |")
    return lines


def _store(name: str, figures: dict[str, Any]) -> list[str]:
    version = f" {figures['version']}" if "version" in figures else ""
    return [f"## {TITLES[name]}{version}", "", *_size_rows(figures["sizes"]), "",
            *_retention_rows(figures["retention"]), ""]


def markdown(meta: dict[str, Any], figures: dict[str, Any]) -> str:
    load = " -> ".join(str(x) for x in meta["load_1min"])
    baseline = next(iter(figures.values()))["baseline_runs"]
    lines = [
        f"# {meta['title']}", "",
        f"{meta['started']} UTC on {meta['machine']}, Python {meta['python']}, 1-min load average {load} "
        "(start -> end; the machine is shared)"
        + (" (quick: sizes for a smoke test, numbers mean nothing)" if meta["quick"] else "") + ".", "",
        f"{meta['sizes']['logs_per_run']} log lines per run; {meta['sizes']['queue_samples']} queue queries, "
        f"{meta['sizes']['state_runs']} runs x 3 state calls, {meta['sizes']['log_calls']} write_run_logs "
        f"calls of {meta['sizes']['log_batch']} lines per size, sequential over HTTP against a fresh server "
        f"process. (xN) = N times the {_n(baseline)}-run figure of the same store in this same run.", "",
        *(line for name, store in figures.items() for line in _store(name, store)),
        f"![growth]({meta['plot']})", ""]
    return "\n".join(lines)


def plot(figures: dict[str, Any], path: Path) -> None:
    """Latency (left) and database size (right) against runs stored, log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for index, (name, store) in enumerate(figures.items()):
        rows, marker = store["sizes"], "os"[index % 2]
        runs = [row["runs"] for row in rows]
        for key, label, color in (("queue", "queue", 0), ("set_state", "set_state", 1)):
            for stat, style in (("median_ms", "-"), ("p95_ms", "--")):
                name_of = f"{TITLES[name]} {label} {stat.removesuffix('_ms')}"
                left.plot(runs, [row[key][stat] for row in rows], marker + style,
                          color=f"C{color + 2 * index}", label=name_of)
        right.plot(runs, [row["db_bytes"] / MB for row in rows], marker + "-", color=f"C{4 + index}",
                   label=f"{TITLES[name]}")
        after = store["retention"]["size"]
        right.plot([runs[-1]], [after["after_vacuum_bytes"] / MB], "v", color=f"C{4 + index}",
                   label=f"{TITLES[name]}: half deleted + {after['vacuum']}")
    left.set_title("API latency vs runs stored (HTTP round trip)")
    left.set_ylabel("ms")
    right.set_title("database size (10 log lines per run)")
    right.set_ylabel("MB")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("flow runs stored")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
