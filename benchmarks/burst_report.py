"""The repeated bursts in results.md (one row per burst) and burst.png (ratio and runs/s per repeat).

One burst's ratio to the ceiling swung 0.81-1.08 across runs of one day, so every burst is shown, each next
to the ceiling taken just before it: the median is the figure judged, the spread says how much one run means.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.stats import fixed

SYSTEMS = (("ours", "ours"), ("prefect", "Prefect 1.4.1"))
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("ceiling_runs_per_s", "ceiling runs/s", 2),
    ("runs_per_s", "agent runs/s", 2),
    ("ratio_to_ceiling", "share of ceiling", 3),
    ("requests_per_run", "API requests/run", 2),
    ("window_s", "window s", 2),
    ("cpu_s", "agent CPU s", 3),
    ("cpu_ms_per_run", "agent CPU ms/run", 1),
    ("cpu_percent", "% of a core", 1),
    ("cpu_share_percent", "% of machine busy CPU", 1),
)
HOW = (
    "Each burst follows a ceiling burst of the same containers at its agent's concurrency and options; the "
    "rounds alternate ours and Prefect while both have bursts left. The window runs from the agent's first "
    "poll to its last container start or last non-poll request, whichever is later. Agent CPU is user + "
    "system seconds of the agent's process tree (psutil, sampled every 0.1 s, interpolated at the window's "
    "ends); the machine's busy CPU is user + nice + system + irq + softirq of all cores (/proc/stat) over "
    "the same window, so the share says how much of what the machine did was the agent itself (the rest: "
    "dockerd, containerd, the containers, the server, the proxy, the benchmark)."
)



def burst_section(figures: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: a table with one row per burst, then how its figures are measured."""
    rows = [(label, i, b) for name, label in SYSTEMS
            for i, b in enumerate(figures.get(name, {}).get("burst.each", []), start=1)]
    if not rows:
        return []
    head = "| agent | # | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = ["## Bursts, one by one", "", head, "|---|---:|" + "---:|" * len(COLUMNS)]
    for label, i, burst in rows:
        cells = [fixed(burst.get(key), decimals) for key, _, decimals in COLUMNS]
        lines.append(f"| {label} | {i} | " + " | ".join(cells) + " |")
    return [*lines, "", HOW, ""]


def burst_chart(figures: dict[str, dict[str, Any]], path: Path) -> None:
    """Left: each burst's share of the ceiling (target line at 0.95); right: agent and ceiling runs/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (name, label), marker, color in zip(SYSTEMS, ("o", "s"), ("tab:blue", "tab:orange"), strict=True):
        each = figures.get(name, {}).get("burst.each", [])
        xs = list(range(1, len(each) + 1))
        if not each:
            continue
        median = figures[name].get("burst.ratio_to_ceiling")
        left.plot(xs, [b.get("ratio_to_ceiling") or math.nan for b in each], marker=marker, color=color,
                  label=f"{label} (median {fixed(median, 3)})")
        rates = [b.get("runs_per_s") or math.nan for b in each]
        right.plot(xs, rates, marker=marker, color=color, label=label)
        right.plot(xs, [b.get("ceiling_runs_per_s") or math.nan for b in each], marker=marker, color=color,
                   linestyle=":", markerfacecolor="none", label=f"ceiling before {label}")
    left.axhline(0.95, color="grey", linestyle="--", linewidth=1, label="target 0.95")
    left.set_title("burst throughput / ceiling just before it")
    right.set_title("runs per second, first poll -> last start")
    for ax, ylabel in ((left, "share of the ceiling"), (right, "runs/s")):
        ax.set_xlabel("burst (repeat)")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
